"""Streaming synthesis of 3D pairs (workflows.synthesize): the store equals in-memory generation bit for bit,
is verified like any store, and the writer's peak memory does not grow with the number of pairs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.patch_store import PatchStore, write_patch_store
from lightning_modules.wgan import WGANGP
from networks.gan3d import Generator3D, WGANCritic3D
from workflows.synthesize import synthesize, write_streamed_store

SIZE = (32, 32, 8)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny 3D WGAN-GP after 2 steps (BN running statistics no longer the initial ones)."""
    L.seed_everything(0)
    model = WGANGP(Generator3D(8, 16, out_size=SIZE, upsample="subpixel"), WGANCritic3D(ndf=16, in_size=SIZE),
                   latent_dim=8, n_critic=1, label_encoding="binary", label_threshold=0.0)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(1, *SIZE, generator=g) * 2 - 1,
             "label": (torch.rand(1, *SIZE, generator=g) > 0.9).float()} for _ in range(4)]  # fmt: skip
    t = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False)  # fmt: skip
    t.fit(model, DataLoader(data, batch_size=4))
    # threshold at the median label output of eval mode, so the decoded labels hold both values
    raw = model.eval().generator(torch.randn(8, 8))[:, 1]
    model.label_threshold = model.hparams["label_threshold"] = float(raw.median())
    path = tmp_path_factory.mktemp("gan3d") / "gan.ckpt"
    t.save_checkpoint(path)
    return str(path)


def test_streamed_store_equals_in_memory_generation(checkpoint, tmp_path):
    root = synthesize(checkpoint, str(tmp_path / "streamed"), n_samples=10, batch_size=3, seed=4, device="cpu")
    streamed = PatchStore(root, verify="full")  # statistics recorded per batch match a full reread
    model = WGANGP.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    images, labels = model.generate(10, batch_size=3, seed=4)
    reference = write_patch_store(tmp_path / "memory", images.numpy(), labels.numpy(), {"kind": "synthetic"})
    assert streamed.images.shape == (10, 1, *SIZE) and streamed.patch_size == SIZE
    for name in ("images", "labels"):
        a, b = getattr(streamed, name), getattr(reference, name)
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), name
    assert set(np.unique(streamed.labels)) <= {0, 1} and np.asarray(streamed.labels).any()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["label_threshold"] == model.label_threshold and manifest["generator"]["init_args"]["out_size"] == list(SIZE)
    assert (root / "preview.png").is_file()


def test_streamed_writer_refuses_bad_batches_and_leaves_nothing(tmp_path):
    good = (torch.zeros(2, 1, *SIZE), torch.zeros(2, 1, *SIZE, dtype=torch.uint8))
    bad_label = (torch.zeros(2, 1, *SIZE), torch.full((2, 1, *SIZE), 2, dtype=torch.uint8))
    nan = (torch.full((2, 1, *SIZE), float("nan")), torch.zeros(2, 1, *SIZE, dtype=torch.uint8))
    for batches, match in (([good, bad_label], "binary"), ([nan], "NaN"), ([good], "announced")):
        with pytest.raises(ValueError, match=match):
            write_streamed_store(tmp_path / "s", batches, 4, {"kind": "synthetic"})
        assert not any(tmp_path.iterdir())  # the temporary folder is gone, no store published


PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np, torch
    sys.path.insert(0, {repo!r})
    from workflows.synthesize import write_streamed_store
    n, shape = int(sys.argv[1]), (1, 64, 64, 32)
    def batches():
        for start in range(0, n, 8):
            k = min(8, n - start)
            yield torch.full((k, *shape), start / n), torch.ones((k, *shape), dtype=torch.uint8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    write_streamed_store(__import__("pathlib").Path(sys.argv[2]), batches(), n, {{"kind": "synthetic"}})
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
""")


@pytest.mark.slow
def test_streamed_writer_peak_memory_does_not_grow_with_n(tmp_path):
    """Peak RSS growth while writing 16 vs 400 pairs of 64×64×32 (0.6 MiB each, 240 MiB in all): an in-memory
    writer would grow by ≥ 240 MiB; the streamed one by about one batch whatever n."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT.format(repo=str(REPO)))

    def growth(n: int) -> int:
        out = subprocess.run([sys.executable, str(script), str(n), str(tmp_path / f"s{n}")], check=True,
                             capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
        return int(out.stdout.strip().splitlines()[-1])

    small, large = growth(16), growth(400)
    assert len(PatchStore(tmp_path / "s400")) == 400
    assert large - small < 32 * 2**20, (small, large)
