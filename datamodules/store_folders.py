"""Where a patch store may be written, and the temporary folders of its writers.

Only a folder that is a patch store (its manifest says so) and holds nothing but store files is ever replaced;
an absent or empty folder is written into; anything else is refused before any work is done. A store is written
into `.<name>.tmp-<host>-<pid>-<id>` beside its target and renamed into place; a writer killed meanwhile leaves
that folder behind (hundreds of MB), and the next write to the same target removes it once its process is gone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

STORE_FILES = frozenset({"images.npy", "labels.npy", "patient_ids.npy", "centres.npy", "manifest.json", "preview.png"})
STALE_SECONDS = 3600  # a temporary folder of another host, or of an older writer, untouched this long is orphaned


def is_patch_store(folder: Path) -> bool:
    """A folder whose manifest.json says it is a patch store (has `store_version`)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and "store_version" in manifest


def check_store_target(root: Path, overwrite: bool) -> None:
    """Refuse, before anything is computed, to write where a store cannot go without losing other files.

    Accepted: no folder, an empty folder, or (with `overwrite`) a patch store holding only store files.
    """
    if not root.exists() and not root.is_symlink():
        return
    if not root.is_dir() or root.is_symlink():
        raise FileExistsError(f"{root}: exists and is not a folder: refusing to replace it with a patch store")
    entries = sorted(p.name for p in root.iterdir())
    if not entries:
        return
    if not is_patch_store(root):
        raise FileExistsError(f"{root}: a folder that is not a patch store (no manifest.json saying so; holds"
                              f" {', '.join(entries[:5])}{', …' if len(entries) > 5 else ''}): refusing to write"
                              " into it or replace it; choose a new or empty folder")
    if not overwrite:
        raise FileExistsError(f"{root}: patch store already exists (pass overwrite=True, --overwrite true,"
                              " to replace it)")
    foreign = [e for e in entries if e not in STORE_FILES]
    if foreign:
        raise FileExistsError(f"{root}: patch store that also holds other files ({', '.join(foreign[:5])}): refusing"
                              " to replace it; move them out first")


def host_tag() -> str:
    """This machine's name as it appears in temporary folder names (only [A-Za-z0-9_.])."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _tmp_pattern(root: Path) -> re.Pattern[str]:
    """Names of root's temporary folders: `.<name>.tmp-<host>-<pid>-<id>` (older writers: `.<name>.tmp-<id>`)."""
    kind = r"(?:(?P<old>old-)|tmp-(?:(?P<host>[\w.]+)-(?P<pid>\d+)-)?)"
    return re.compile(rf"^\.{re.escape(root.name)}\.{kind}[0-9a-f]{{8}}$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _newest_mtime(folder: Path) -> float:
    stamps = [folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.iterdir()]
    return max(stamps)


def remove_orphans(root: Path) -> list[Path]:
    """Remove the temporary folders of `root` whose writer is gone (killed mid-write); returns them.

    Only folders named for this target: `.<name>.tmp-<host>-<pid>-<id>` of this host whose process no longer
    runs, `.<name>.old-<id>` (a replaced store being deleted), and those of another host or an older writer
    (no pid in the name) untouched for `STALE_SECONDS` (the newest of the folder's and its files' times: a live
    writer on another node keeps touching its files). A live writer's folder on this host is never touched.
    """
    if not root.parent.is_dir():
        return []
    pattern, host, removed = _tmp_pattern(root), host_tag(), []
    for entry in root.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        try:
            if match["old"]:
                orphan = True
            elif match["pid"] is not None and match["host"] == host:
                orphan = int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
            else:
                orphan = time.time() - _newest_mtime(entry) > STALE_SECONDS
        except FileNotFoundError:  # another process is removing it
            continue
        if orphan:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def make_tmp_dir(root: Path) -> Path:
    """A new temporary folder beside `root`, named for this host and process; orphans of `root` go first."""
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(root)
    tmp = root.parent / f".{root.name}.tmp-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    return tmp


def publish(tmp: Path, root: Path, overwrite: bool) -> None:
    """Rename the finished tmp folder to root; if another process won the race, keep theirs."""
    if root.exists() and overwrite:
        check_store_target(root, overwrite)  # again: the folder may have changed while the store was written
        if any(root.iterdir()):
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(tmp, root)  # replaces an empty folder
    except OSError:
        if not (root / "manifest.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
