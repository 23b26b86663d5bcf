"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (no code runs on load)."""

from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; give checkpoints the mode a plain open() would (0666 minus the umask)
_FILE_MODE = 0o666 & ~_umask()


def _write_atomic(path: Path, mode: str, write: Callable[[IO], object]) -> None:
    """Write through ``write(file)`` so that a crash at any moment leaves the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, atomically (temporary file, fsync, rename)."""
    _write_atomic(path, "wb", lambda f: torch.save(obj, f))


def copy_atomic(source: Path, path: Path) -> None:
    """A copy of the file ``source`` at ``path``, atomically."""
    with Path(source).open("rb") as f:
        _write_atomic(path, "wb", lambda out: shutil.copyfileobj(f, out))


def write_text_atomic(text: str, path: Path) -> None:
    """``path.write_text(text)``, atomically."""
    _write_atomic(path, "w", lambda f: f.write(text))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by fastmaml; refuses pickles that would run code, without running them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; point at a run folder that finished or saved one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} was refused unread: it is not a checkpoint fastmaml wrote ({_unpickler_reason(error)}); "
            "nothing in it was run — load only files fastmaml wrote, or start again with --overwrite"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = (str(error).strip().splitlines() or ["empty file"])[0].split(". ")[0].rstrip(".")
        raise ValueError(f"{path} is corrupt or truncated ({first}); restore it or start the run again with "
                         "--overwrite") from None


def _unpickler_reason(error: Exception) -> str:
    """The informative sentence of torch's multi-paragraph weights_only refusal (worded differently
    across torch releases: the sentence naming the refused GLOBAL when there is one)."""
    lines = [line.strip().removeprefix("WeightsUnpickler error: ") for line in str(error).splitlines()]
    lines = [line for line in lines if line]
    named = [line for line in lines if "GLOBAL" in line]
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation", "(1)", "(2)")
    reasons = named or [line for line in lines if not line.startswith(boilerplate)]
    return (reasons or lines or ["unreadable"])[0].split(". ")[0].rstrip(".")


def random_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random state a run depends on, in weights_only-loadable types."""
    np_state = cast(tuple, np.random.get_state())  # the legacy tuple (name, keys, pos, has_gauss, gauss)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [py_version, list(py_internal), py_gauss],
        "generators": {name: g.get_state() for name, g in generators.items()},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_random_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for key, g in generators.items():
        g.set_state(state["generators"][key])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
