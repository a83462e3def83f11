"""Reads an offline W&B run's `.wandb` file for tests: wandb ≥ 0.19 writes it from its Go core and no longer ships a
Python reader. The file is a LevelDB-style log (`:W&B` header, 32 KiB blocks, records of 7-byte header
crc32 / length / type split into FULL, FIRST, MIDDLE, LAST chunks) of `wandb_internal_pb2.Record` protobufs."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, chunks = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        chunks = chunk if kind in (FULL, FIRST) else chunks + chunk
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunks)
            yield rec


def read_offline_run(run_dir: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """Run record (id, group, job type, tags), config, summary (nested keys joined by "/"), history keys of one
    `offline-run-*` folder, once W&B's core process has written the run's exit record."""
    (path,) = run_dir.glob("*.wandb")
    deadline = time.monotonic() + timeout_s
    while not any(r.WhichOneof("record_type") == "exit" for r in records(path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    out: dict[str, Any] = {"config": {}, "summary": {}, "history_keys": set(), "tags": []}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            fields = {"id": rec.run.run_id, "group": rec.run.run_group, "job_type": rec.run.job_type,
                      "tags": list(rec.run.tags)}
            out |= {k: v for k, v in fields.items() if v or k not in out}  # later run records update some fields
            out["config"] |= {i.key: json.loads(i.value_json) for i in rec.run.config.update}
        elif kind == "config":
            out["config"] |= {i.key: json.loads(i.value_json) for i in rec.config.update}
        elif kind == "summary":
            out["summary"] |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.summary.update}
        elif kind == "history":
            out["history_keys"] |= {i.key or "/".join(i.nested_key) for i in rec.history.item}
    return out
