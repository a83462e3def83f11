"""Checkpoints are data, never code: the one way the suite reads a `.ckpt`/`.pth` file and the class paths in it.

Two routes could run code from a file a user was handed:
- unpickling: `torch.load(weights_only=False)` runs whatever `__reduce__` the file names. `safe_load` always
  loads with `weights_only=True` (tensors, containers, numbers, strings) and turns torch's errors into one
  that names the file and what was expected;
- class paths: a checkpoint that loads safely still names classes (`gan_class`, the hyper-parameters'
  `_class_path`, a network's or optimiser's `class_path`), and importing a module runs its top-level code
  before any type check. `check_class_path` accepts only paths inside the suite's packages, `torch.optim`,
  `torch.nn`, `monai.networks.nets`, or prefixes the user allows explicitly (argument `extra`, or the
  environment variable `TOFGAN_ALLOWED_CLASS_PATHS="mypkg.nets,otherpkg.Gen"`), and it decides on the text
  of the path, before anything is imported.
"""

from __future__ import annotations

import importlib
import os
import pickle
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

#: Packages whose classes a checkpoint may name (module prefixes; "torch.optim" allows "torch.optim.Adam").
SUITE_PREFIXES = ("lightning_modules", "networks", "datamodules", "callbacks", "metrics",
                  "torch.optim", "torch.nn", "monai.networks.nets")
ALLOW_ENV = "TOFGAN_ALLOWED_CLASS_PATHS"
#: Keys whose string values are class paths, wherever they occur in a checkpoint.
CLASS_KEYS = ("gan_class", "_class_path", "class_path")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


class UnsafeCheckpointError(ValueError):
    """A checkpoint that would run code (pickled objects, or a class outside the allowed packages)."""


def allowed_prefixes(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Suite packages + `extra` + the comma-separated prefixes of $TOFGAN_ALLOWED_CLASS_PATHS."""
    from_env = [p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()]
    return (*SUITE_PREFIXES, *extra, *from_env)


def check_class_path(class_path: Any, source: str | Path, what: str, extra: Iterable[str] = ()) -> str:
    """`class_path` if it is a dotted path under an allowed prefix; else UnsafeCheckpointError. Imports nothing."""
    if not isinstance(class_path, str) or not _DOTTED.match(class_path):
        raise UnsafeCheckpointError(f"{source}: {what} {class_path!r} is not a dotted class path")
    prefixes = allowed_prefixes(extra)
    if not any(class_path == p or class_path.startswith(p + ".") for p in prefixes):
        raise UnsafeCheckpointError(
            f"{source}: {what} {class_path!r} is outside the packages a checkpoint may name ({', '.join(prefixes)});"
            f" refused before importing it. If you trust this class, allow its module explicitly:"
            f" {ALLOW_ENV}={class_path.rpartition('.')[0]}"
        )
    return class_path


def import_class(class_path: Any, source: str | Path, what: str, base: type | None = None,
                 extra: Iterable[str] = ()) -> Any:
    """Import an allowed class path (checked first) and, with `base`, require a subclass of it."""
    module, _, name = check_class_path(class_path, source, what, extra).rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{source}: {what} {class_path!r} cannot be imported ({err})") from err
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise TypeError(f"{source}: {what} {class_path!r} is not a {base.__module__}.{base.__qualname__} subclass")
    return obj


def class_paths_in(obj: Any, where: str = "checkpoint") -> Iterator[tuple[str, Any]]:
    """(location, value) of every class-path entry (`CLASS_KEYS`) in nested dicts/lists."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            here = f"{where}[{key!r}]"
            if key in CLASS_KEYS and not isinstance(value, (dict, list, tuple)):
                yield here, value
            else:
                yield from class_paths_in(value, here)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from class_paths_in(value, f"{where}[{i}]")


def check_checkpoint_classes(checkpoint: Any, source: str | Path, extra: Iterable[str] = ()) -> None:
    """Every class path stored anywhere in `checkpoint` must be allowed (see `check_class_path`)."""
    for where, value in class_paths_in(checkpoint):
        check_class_path(value, source, f"class path at {where}", extra)


def _rejected_global(err: BaseException) -> str:
    """The object torch's weights-only unpickler refused, e.g. "posix.mkdir" (its advice is not repeated)."""
    match = re.search(r"(?:GLOBAL|global)\s+([\w.]+)", str(err))
    return match.group(1) if match else type(err).__name__


def _weights_unpickler_reason(err: BaseException) -> str:
    """The unpickler's own reason (e.g. "Unsupported operand 110"), without torch's advice around it."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", str(err))
    return match.group(1) if match else type(err).__name__


def safe_load(path: str | Path, what: str, *, mmap: bool = False, check_classes: bool = True,
              extra: Iterable[str] = ()) -> Any:
    """`torch.load(path, weights_only=True)` with errors that name the file and what was expected.

    Args:
        path: the file.
        what: what the caller expects, for messages ("GAN checkpoint", "MedicalNet weights file", …).
        mmap: memory-map the tensors (reading one field of a large checkpoint without reading its weights).
        check_classes: refuse class paths outside the allowed packages (`check_checkpoint_classes`).
        extra: further allowed class-path prefixes.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{file}: {what} not found")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "global" not in str(err).lower():  # not an object the unpickler refused: damaged or foreign bytes
            raise ValueError(f"{file}: cannot read as {what}: truncated, damaged or not a PyTorch checkpoint"
                             f" ({_weights_unpickler_reason(err)})") from None
        raise UnsafeCheckpointError(
            f"{file}: refused as {what}: it stores Python objects that would run code when loaded"
            f" ({_rejected_global(err)}), not only tensors and plain data. tofgan reads checkpoints as data only;"
            " re-save the weights as a state dict (torch.save(module.state_dict(), path)) from code you trust."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as err:
        raise ValueError(f"{file}: cannot read as {what}: truncated, damaged or not a PyTorch checkpoint"
                         f" ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if check_classes:
        check_checkpoint_classes(data, file, extra)
    return data


def load_checkpoint_dict(path: str | Path, what: str, **kwargs: Any) -> dict[str, Any]:
    """`safe_load` that also requires a dict (what Lightning checkpoints and state dicts are)."""
    data = safe_load(path, what, **kwargs)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a {what}: holds a {type(data).__name__}, expected a dict")
    return data
