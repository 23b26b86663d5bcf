"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)`` (no code runs on load)."""

from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` so that a crash at any moment leaves either the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
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


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by fastmaml; refuses pickles that would run code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; point at a run folder that finished or saved one")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0]
        raise ValueError(
            f"{path} is not a safe fastmaml checkpoint ({first}); it was refused unread — only load files you trust "
            "and that fastmaml wrote"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is corrupt or truncated ({str(error).splitlines()[0]}); "
                         "restore it or start the run again with --overwrite") from None


def random_state(generators: dict[str, torch.Generator]) -> dict:
    """Every random state a run depends on, in weights_only-loadable types."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [py_version, list(py_internal), py_gauss],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }


def restore_random_state(state: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for key, g in generators.items():
        g.set_state(state["generators"][key])
