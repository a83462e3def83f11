#!/bin/bash
# Shared body of scripts/slurm_ddp.sbatch (GPUs) and scripts/slurm_cpu.sbatch (CPUs, gloo): checks that the SLURM
# allocation and the Lightning trainer agree, then starts one `tofgan fit` per task with srun.
#
#   slurm_fit.sh gpu|cpu [CONFIG.yaml | --key value]...
#
# YAML files become `--config FILE` (after the trainer, DDP, SLURM and logger fragments, so they override them); an
# experiment file (first line `# compose: …`) brings its model/data/schedule fragments with it, its trainer/ and
# logger/ fragments replaced by the ones above. Other arguments go to `tofgan fit` as they are (--trainer.max_epochs 10).
#
# The relation (one process per task, one GPU per process):
#   --ntasks-per-node  = trainer.devices    (processes per node; on GPUs also = --gpus-per-node)
#   --nodes            = trainer.num_nodes
#   world size         = nodes × ntasks-per-node; data.init_args.batch_size (global) must divide by it.
# The script passes trainer.devices / trainer.num_nodes from the allocation; a value given explicitly that disagrees
# with it stops the job here, before any process starts (Lightning would only fail after loading the data).
#
# Pre-emption: SLURM sends USR1 (--signal=USR1@SECONDS) before the time limit; callbacks.slurm_requeue saves
# <default_root_dir>/hpc_ckpt_N.ckpt at the next batch boundary and requeues the job; the requeued job (same id)
# resumes from it. default_root_dir is outputs/slurm/<job id> unless given; run folders stay where the logger puts them.
#
# Environment: TOFGAN (the console script, default .venv/bin/tofgan), TOFGAN_JOB_ROOT (folder of the per-job
# hpc checkpoint folders, default outputs/slurm), DRY_RUN=1 (print the command, do not run it),
# CKPT (start from another run's checkpoint, e.g. <run>/checkpoints/last.ckpt; ignored after a requeue).
set -euo pipefail
kind="${1:?usage: slurm_fit.sh gpu|cpu [CONFIG.yaml | --key value]...}"; shift
die() { echo "slurm_fit.sh: $*" >&2; exit 2; }
extra_kind=()
case "$kind" in
  gpu) base=(configs/trainer/gpu.yaml configs/trainer/ddp.yaml configs/trainer/slurm.yaml configs/logger/wandb.yaml) ;;
  cpu) base=(configs/trainer/cpu.yaml configs/trainer/ddp.yaml configs/trainer/slurm.yaml configs/logger/csv.yaml)
       extra_kind=(--trainer.strategy.init_args.process_group_backend gloo) ;;
  *) die "first argument must be gpu or cpu, got '$kind'" ;;
esac

nodes="${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-}}"
per_node="${SLURM_NTASKS_PER_NODE:-}"
[ -n "$nodes" ] || die "not inside a SLURM allocation (SLURM_NNODES unset): submit with sbatch"
[ -n "$per_node" ] || die "set --ntasks-per-node (= trainer.devices: one task per GPU/process); --ntasks alone leaves the per-node layout to SLURM"
per_node="${per_node%%(*}"   # heterogeneous forms like 4(x2) are not supported: one value for every node
[[ "$per_node" =~ ^[0-9]+$ ]] || die "SLURM_NTASKS_PER_NODE='$SLURM_NTASKS_PER_NODE': every node must run the same number of tasks"
if [ -n "${SLURM_NTASKS:-}" ] && [ "$SLURM_NTASKS" -ne $((nodes * per_node)) ]; then
  die "--ntasks=$SLURM_NTASKS but --nodes=$nodes × --ntasks-per-node=$per_node = $((nodes * per_node)); drop --ntasks or make them agree"
fi
if [ "$kind" = gpu ]; then
  gpus="${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}"
  gpus="${gpus##*:}"         # --gpus-per-node=a100:4 → 4
  [ -n "$gpus" ] || die "no GPUs in the allocation: set --gpus-per-node (= --ntasks-per-node), or use scripts/slurm_cpu.sbatch"
  [ "$gpus" -eq "$per_node" ] || die "--gpus-per-node=$gpus but --ntasks-per-node=$per_node: run one task per GPU (set both to the same number)"
fi

configs=(); passthrough=(); job_dir=""; prev=""
add_config() {  # an experiment file brings the fragments of its `# compose:` line, minus trainer/ and logger/ (above)
  local first=""
  [ -f "$1" ] && first="$(head -n 1 "$1")"
  if [[ "$first" == "# compose:"* ]]; then
    for frag in ${first#"# compose:"}; do
      case "$frag" in trainer/*|logger/*) ;; *) configs+=(--config "configs/$frag") ;; esac
    done
  fi
  configs+=(--config "$1")
}
for a in "${base[@]}" "$@"; do
  if [ "$a" = --config ]; then :
  elif [ "$prev" = --config ] || { [[ "$a" == *.yaml || "$a" == *.yml ]] && [[ "$prev" != --* ]]; }; then
    add_config "$a"
  else passthrough+=("$a")
  fi
  prev="$a"
done
# Explicit trainer.devices / num_nodes must agree with the allocation.
for ((i = 0; i < ${#passthrough[@]}; i++)); do
  a="${passthrough[$i]}"; v="${passthrough[$((i + 1))]:-}"
  case "$a" in
    --trainer.devices=*) v="${a#*=}"; a=--trainer.devices ;;
    --trainer.num_nodes=*) v="${a#*=}"; a=--trainer.num_nodes ;;
    --trainer.default_root_dir) job_dir="$v" ;;
    --trainer.default_root_dir=*) job_dir="${a#*=}" ;;
  esac
  [ "$a" = --trainer.devices ] && [ "$v" != "$per_node" ] && die "trainer.devices=$v but --ntasks-per-node=$per_node: they must be equal (one process per device)"
  [ "$a" = --trainer.num_nodes ] && [ "$v" != "$nodes" ] && die "trainer.num_nodes=$v but --nodes=$nodes: they must be equal"
done
job_root=()
if [ -z "$job_dir" ]; then
  job_dir="${TOFGAN_JOB_ROOT:-outputs/slurm}/${SLURM_JOB_ID:-nojob}"
  job_root=(--trainer.default_root_dir "$job_dir")
fi
# W&B: the parts of a requeued job are separate runs (one run folder each), grouped by job unless a group is set.
export WANDB_RUN_GROUP="${WANDB_RUN_GROUP:-slurm-${SLURM_JOB_ID:-nojob}}"
ckpt=()
# CKPT starts the job from another run's checkpoint; once this job has saved its own hpc checkpoint (it was requeued),
# Lightning resumes from that instead, so CKPT is dropped.
if [ -n "${CKPT:-}" ] && ! compgen -G "$job_dir/hpc_ckpt_*.ckpt" >/dev/null; then ckpt=(--ckpt_path "$CKPT"); fi
cmd=(srun --kill-on-bad-exit=1 "${TOFGAN:-.venv/bin/tofgan}" fit "${configs[@]}" "${extra_kind[@]}" "${job_root[@]}"
     "${passthrough[@]}" --trainer.devices "$per_node" --trainer.num_nodes "$nodes" "${ckpt[@]}")
echo "slurm_fit.sh: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: ${cmd[*]}"
[ "${DRY_RUN:-0}" = 1 ] && exit 0
exec "${cmd[@]}"
