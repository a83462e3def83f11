"""Statistics of a patch store's arrays, written into its manifest and checked whenever the store is opened.

A NaN patch trains a NaN network without a word, and a truncated or replaced `.npy` file is only found when a
loader reaches the missing rows. So the writer records, per array and per block of rows, the non-finite count,
min, max and sum (float64), plus every file's size; opening a store then checks, without reading the data:
every array finite, labels within {0, 1}, each file the size recorded and the shapes of the manifest.
`verify="full"` also rereads the data block by block and compares it with the recorded statistics.

The statistics are accumulated while the arrays are written (one pass over data already in memory), never by
a second pass over a finished store. Stores written before this existed have none: the first open computes
them in one streamed pass (refusing the store if it finds NaN/Inf) and records them in its manifest, with a
warning; later opens are cheap.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

STATS_VERSION = 1
ARRAYS = ("images", "labels")
FILES = ("images.npy", "labels.npy", "patient_ids.npy", "centres.npy")
BLOCK_BYTES = 1 << 24  # 16 MB of rows per block: bounded temporaries whatever the patch size
Verify = Literal["stats", "full"]


def block_rows(array: np.ndarray) -> int:
    """Rows per statistics block for `array` (≥ 1)."""
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize
    return max(1, BLOCK_BYTES // max(row_bytes, 1))


class ArrayStats:
    """Streamed statistics of one array: `add(start, rows)` per block, in order, then `summary()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.blocks: list[list] = []  # [start, stop, n_nonfinite, min, max, sum]; min/max/sum None if not finite
        self.n_values = 0

    def add(self, start: int, rows: np.ndarray) -> list:
        rows = np.asarray(rows)
        self.n_values += int(rows.size)
        n_bad = int(rows.size - np.count_nonzero(np.isfinite(rows))) if rows.dtype.kind == "f" else 0
        if n_bad or rows.size == 0:
            block = [int(start), int(start + len(rows)), n_bad, None, None, None]
        else:
            block = [int(start), int(start + len(rows)), 0, float(rows.min()), float(rows.max()),
                     float(rows.sum(dtype=np.float64))]
        self.blocks.append(block)
        return block

    def add_all(self, array: np.ndarray) -> ArrayStats:
        step = block_rows(array)
        for start in range(0, len(array), step):
            self.add(start, array[start:start + step])
        return self

    def summary(self) -> dict:
        n_bad = sum(b[2] for b in self.blocks)
        good = [b for b in self.blocks if b[3] is not None]
        finite = n_bad == 0
        return {
            "finite": finite, "n_nonfinite": n_bad,
            "min": min(b[3] for b in good) if finite and good else None,
            "max": max(b[4] for b in good) if finite and good else None,
            "mean": sum(b[5] for b in good) / self.n_values if finite and self.n_values else None,
            "blocks": self.blocks,
        }


def nonfinite_message(root: Path, name: str, summary_or_block: dict | list) -> str:
    """"<store>: images.npy holds N NaN/Inf values (first in patches a–b): …"."""
    blocks = summary_or_block["blocks"] if isinstance(summary_or_block, dict) else [summary_or_block]
    bad = [b for b in blocks if b[2]]
    n = sum(b[2] for b in bad)
    return (f"{root}: {name}.npy holds {n} NaN/Inf values (first in patches {bad[0][0]}–{bad[0][1] - 1}):"
            " refusing a store that would train on NaN")


def file_sizes(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_size for name in FILES if (folder / name).is_file()}


def statistics_record(images: ArrayStats, labels: ArrayStats, folder: Path) -> dict:
    """The manifest's `statistics` entry, once every array file is written in `folder`."""
    return {"version": STATS_VERSION, "images": images.summary(), "labels": labels.summary(),
            "file_bytes": file_sizes(folder)}


def check_sizes(root: Path, stats: dict) -> None:
    """Each file as large as recorded: catches truncated, appended or replaced arrays without reading them."""
    for name, size in stats.get("file_bytes", {}).items():
        path = root / name
        actual = path.stat().st_size if path.is_file() else None
        if actual != size:
            raise ValueError(f"{path}: {'missing' if actual is None else f'{actual} bytes'}, the manifest records"
                             f" {size} bytes: truncated or replaced since the store was written")


def check_recorded(root: Path, stats: dict) -> None:
    """The recorded statistics describe a usable store: finite images, labels within {0, 1}."""
    for name in ARRAYS:
        summary = stats.get(name)
        if not isinstance(summary, dict) or "finite" not in summary:
            raise ValueError(f"{root / 'manifest.json'}: statistics lack '{name}' (damaged manifest)")
        if not summary["finite"]:
            raise ValueError(nonfinite_message(root, name, summary))
    lab = stats["labels"]
    if lab["min"] is not None and (lab["min"] < 0 or lab["max"] > 1):
        raise ValueError(f"{root}: labels.npy holds values in [{lab['min']}, {lab['max']}], not binary {{0, 1}}")


def rescan(root: Path, arrays: dict[str, np.ndarray], stats: dict) -> None:
    """Reread every block and compare with the recorded statistics (`verify="full"`)."""
    for name in ARRAYS:
        array, again, blocks = arrays[name], ArrayStats(name), stats[name]["blocks"]
        bounds = [0] + [b for block in blocks for b in block[:2]] + [len(array)]
        if any(a != b for a, b in zip(bounds[::2], bounds[1::2])):
            raise ValueError(f"{root / 'manifest.json'}: the statistics' blocks of {name} do not cover patches"
                             f" 0–{len(array) - 1} (damaged manifest)")
        for recorded in blocks:
            start, stop = recorded[0], recorded[1]
            block = again.add(start, array[start:stop])
            if block[2]:
                raise ValueError(nonfinite_message(root, name, block))
            same = block[2:5] == recorded[2:5] and np.isclose(block[5] or 0.0, recorded[5] or 0.0, rtol=1e-9, atol=0)
            if not same:
                raise ValueError(f"{root}: {name}.npy patches {start}–{stop - 1} differ from the statistics recorded"
                                 f" when the store was written (min/max/sum {block[3:]} vs {recorded[3:]}):"
                                 " modified or damaged since")


def compute_missing(root: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> dict:
    """Statistics of a store written without them (one streamed pass), recorded in its manifest if writable."""
    images, labels = ArrayStats("images").add_all(arrays["images"]), ArrayStats("labels").add_all(arrays["labels"])
    stats = statistics_record(images, labels, root)
    check_recorded(root, stats)
    manifest["statistics"] = stats
    path = root / "manifest.json"
    tmp = root / f".manifest.json.{uuid.uuid4().hex}"
    try:
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)
        note = "recorded in manifest.json"
    except OSError as err:
        tmp.unlink(missing_ok=True)
        note = f"not recorded ({err}): computed again at every open"
    warnings.warn(f"{root}: patch store written without statistics: computed once over {len(arrays['images'])}"
                  f" patches (finite, labels binary) and {note}", stacklevel=3)
    return stats


def verify_store(root: Path, manifest: dict, arrays: dict[str, np.ndarray], verify: Verify = "stats") -> None:
    """Shapes as the manifest says, and the recorded (or, for older stores, computed) statistics usable."""
    if verify not in ("stats", "full"):
        raise ValueError(f"PatchStore: verify must be 'stats' or 'full', got {verify!r}")
    n, patch = manifest.get("n_patches"), manifest.get("patch_size")
    for name in ARRAYS:
        shape = list(arrays[name].shape)
        if (n is not None and shape[0] != n) or (patch is not None and shape[2:] != list(patch)):
            raise ValueError(f"{root}: {name}.npy has shape {shape}, the manifest records {n} patches of {patch}")
    stats = manifest.get("statistics")
    if stats is None:
        compute_missing(root, manifest, arrays)
        return
    check_recorded(root, stats)
    if verify == "full":
        rescan(root, arrays, stats)
