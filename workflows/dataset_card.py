"""The dataset card of `tofgan export`: the privacy section (from the checkpoint's `privacy` record, copied into the
synthetic store by `tofgan synthesize`) and DATASET_CARD.md rendered from dataset_card.json."""

from __future__ import annotations

import math
from typing import Any

NO_GUARANTEE = "no formal privacy guarantee"


def _pick(record: dict[str, Any], *names: str) -> Any:
    return next((record[n] for n in names if record.get(n) is not None), None)


def privacy_section(record: dict[str, Any] | None) -> dict[str, Any]:
    """unit, ε, δ, σ, q, steps, accountant and a one-line statement; `formal_guarantee` only for a finite ε of a
    private run (the DP-WGAN's σ = ∞ reference row records ε = ∞: no guarantee)."""
    if not record:
        return {"formal_guarantee": False, "statement": NO_GUARANTEE, "unit": None, "epsilon": None, "delta": None,
                "sigma": None, "q": None, "steps": None, "accountant": None, "record": None}
    eps = _pick(record, "epsilon")
    formal = record.get("private", True) is not False and eps is not None and math.isfinite(float(eps))
    section = {
        "formal_guarantee": formal,
        "unit": _pick(record, "unit"),
        "epsilon": eps,
        "delta": _pick(record, "delta"),
        "sigma": _pick(record, "noise_multiplier", "sigma"),
        "q": _pick(record, "sample_rate", "q"),
        "steps": _pick(record, "steps"),
        "accountant": _pick(record, "accountant"),
        "max_grad_norm": _pick(record, "max_grad_norm"),
        "epsilon_prv": _pick(record, "epsilon_prv"),
        "record": record,
    }
    section["statement"] = (f"(ε = {float(eps):.3g}, δ = {section['delta']})-differential privacy per {section['unit']}"
                            f" (accountant: {section['accountant']})" if formal else NO_GUARANTEE)
    return section


def _v(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _audit_lines(audit: dict[str, Any] | None) -> list[str]:
    if not audit:
        return ["No membership-inference audit was given for this export."]
    lines = [f"Members: {audit['counts']['members']['patients']} training patients; non-members: "
             f"{audit['counts']['nonmembers']['patients']} test patients; attacker reference: "
             f"{audit['counts']['reference']['patients']} validation patients. CIs: {audit.get('ci')}.", "",
             "| attack | patch AUC [95 % CI] | TPR@1 % FPR | TPR@0.1 % FPR | patient AUC [95 % CI] | patient TPR@FPR=0 |",
             "|---|---|---|---|---|---|"]
    for name, r in audit["results"].items():
        pa, pt = r["patch"], r["patient"]
        lines.append(f"| {name} | {_v(pa['auc'])} [{_v(pa['auc_ci95'][0], 2)}, {_v(pa['auc_ci95'][1], 2)}] | "
                     f"{_v(pa['tpr_at_fpr_0.01'])} | {_v(pa['tpr_at_fpr_0.001'])} | {_v(pt['auc'])} "
                     f"[{_v(pt['auc_ci95'][0], 2)}, {_v(pt['auc_ci95'][1], 2)}] | {_v(pt['tpr_at_fpr_0'])} |")
    leak = audit["leakage"]
    ref = audit.get("reference_run") or {}
    patch, patient = leak["patch"], leak["patient"]
    lines += ["", f"Worst case: patch AUC {_v(patch['max_auc'])}, patient AUC {_v(patient['max_auc'])}; chance level"
              f" from the reference run ({ref.get('kind', 'n/a')}): patch {_v(patch['reference_run_max_auc'])},"
              f" patient {_v(patient['reference_run_max_auc'])}."]
    if audit.get("canary_audit"):
        ca = audit["canary_audit"]
        lines.append(f"One-run DP audit: ε lower bound {_v(ca['epsilon_lower_bound'], 2)} vs claimed"
                     f" {_v(ca['claimed_epsilon'], 2)}.")
    return lines


def _table(section: Any) -> list[str]:
    if not section:
        return ["not given"]
    if "rows" in section:
        rows = section["rows"]
        cols = list(rows[0]) if rows else []
        return [f"from {section['source']}:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                *["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]]
    values = section.get("values", section)
    if isinstance(values, dict):
        return [f"from {section.get('source', 'the store')}:", ""] + [f"- {k}: {_v(v)}" for k, v in values.items()
                                                                       if not isinstance(v, (dict, list))]
    return [str(values)]


def card_markdown(card: dict[str, Any]) -> str:
    p, d, g, c = card["privacy"], card["export_decision"], card["generator"], card["training_cohort"]
    checked = "" if p["formal_guarantee"] else (f" (audit leakage {_v(d['leakage_auc_ci_lower'])} ≤"
                                               f" {d['leakage_threshold_auc_ci_lower']})")
    flag = (f"**Exported with `accept_leakage_risk`**: {d['reason']}." if d["refused_without_flag"]
            else f"Export checks passed{checked}.")
    lines = [
        f"# {card['title']}", "", card["description"], "",
        f"- samples: {card['n_samples']} pairs of {' × '.join(map(str, card['patch_size']))} patches, format {card['format']}"
        f" ({card['layout']['files']}, {card['layout']['shards']} shards)",
        f"- licence: {card['licence']}",
        f"- geometry: spacing {card['geometry']['spacing_mm']} mm, affine diag(spacing), {card['geometry']['axes']};"
        f" {card['geometry']['note']}",
        f"- image: {card['image']['dtype']} in {card['image']['range']} ({card['image']['meaning']})",
        f"- label: uint8, 1 = vessel, 0 = background ({card['label_encoding']['note']}: encoding "
        f"{card['label_encoding']['generator_label_encoding']}, threshold {card['label_encoding']['threshold']})",
        "", "## Privacy", "", f"**{p['statement']}**", "",
        *[f"- {k}: {_v(p[k], 4)}" for k in ("unit", "epsilon", "delta", "sigma", "q", "steps", "accountant")],
        "", flag, "", "## Membership-inference audit", "", *_audit_lines(card["membership_audit"]),
        "", "## Generator", "",
        f"- class {g['class']}, latent dim {g['latent_dim']}, checkpoint sha256 {g['checkpoint_sha256']},"
        f" sampling seed {g['sampling_seed']}",
        f"- network config: `{g['config']}`",
        f"- training cohort manifest sha256: {c.get('manifest_sha256')}; patients per split: {c.get('n_patients', 'n/a')}",
        "", "## Utility (U-Net trained on synthetic data, tested on real test patients)", "", *_table(card["utility"]),
        "", "## Realism", "", *[f"- {k}: {_v(v)}" for k, v in card["realism"]["label_statistics"].items()], "",
        *(_table(card["realism"]["report"]) if card["realism"]["report"] else []),
        "", "## Software and checksums", "",
        f"- tofgan {card['software']['tofgan_version']}, commit {card['software']['git_commit']}",
        f"- {card['checksums']}", f"- created {card['created']}", "", "![preview](preview.png)", "",
    ]
    return "\n".join(lines)
