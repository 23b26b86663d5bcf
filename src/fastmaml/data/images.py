"""Shared machinery of the readers: Pillow import, (parallel) decoding, the decoded-array cache.

Every reader decodes its files once into one uint8 array (N, C, H, W) and caches it as a single
``.npz`` in the cache directory, keyed by the reader, its version and settings, the root and the list
of files with their sizes and modification times; a changed file set misses the cache. Within a
process the last decoded sets are also kept in memory, so the meta-train, meta-val and meta-test
samplers of one data set share a single tensor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)
# Below this many files a process pool costs more to start than it saves.
POOL_MIN_FILES = 2048
_MEMORY: OrderedDict[str, LabelledImages] = OrderedDict()
_MEMORY_SIZE = 3


def pillow():
    """The ``PIL.Image`` module, or an ImportError naming the extra that provides it."""
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading images needs Pillow; install it with: pip install 'fastmaml[vision]' "
                          "(in a checkout: pip install -e '.[vision]')") from None
    return Image


@dataclass(frozen=True)
class LabelledImages:
    """A decoded image set: uint8 images (N, C, H, W), int64 labels (N,), a name per class id, and the
    function that turns gathered uint8 images into the float tensors a model sees."""

    images: Tensor
    labels: Tensor
    class_names: list[str]
    normalize: Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Standardize:
    """``(x / 255 - mean) / std`` per channel: uint8 (..., C, H, W) to float32."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, images: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(-1, 1, 1)
        return (images.float() / 255.0 - mean) / std


def image_files(directory: str | os.PathLike, extensions: Sequence[str]) -> list[str]:
    """Paths (str: pathlib costs ~20 us a file, a second on Omniglot) of the files in ``directory``
    whose suffix, in any case, is one of ``extensions``, sorted by name."""
    directory = os.fspath(directory)
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in extensions and e.is_file())
    return [os.path.join(directory, name) for name in names]


def decode_files(
    decode: Callable[[str], np.ndarray], paths: Sequence[str], workers: int | None = None
) -> list[np.ndarray]:
    """``decode`` on every path, in order; in a process pool for many files and ``workers > 1``.

    ``workers=None`` uses half the CPUs, at most 8 (measured on 2 shared cores: a pool of 2 decoded
    Omniglot slower than one process, so small machines decode serially).
    """
    workers = min(8, (os.cpu_count() or 1) // 2) if workers is None else workers
    if workers <= 1 or len(paths) < POOL_MIN_FILES:
        return [decode(p) for p in paths]
    chunks = [paths[i:i + 512] for i in range(0, len(paths), 512)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        return [array for chunk in pool.map(_decode_chunk, [decode] * len(chunks), chunks) for array in chunk]


def _decode_chunk(decode: Callable[[str], np.ndarray], paths: Sequence[str]) -> list[np.ndarray]:
    return [decode(p) for p in paths]


def open_image(path: str | os.PathLike):
    """The opened, fully loaded PIL image at ``path``; a one-line ValueError naming the file if unreadable."""
    Image = pillow()
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read image {path} ({reason}); replace or delete the file") from None


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """``cache_dir``, else ``$FASTMAML_CACHE``, else ``~/.cache/fastmaml``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("FASTMAML_CACHE") or Path.home() / ".cache" / "fastmaml").expanduser()


def cache_key(reader: str, settings: dict, root: Path, files: Sequence[str]) -> str:
    """A digest of the reader, its settings, the root and every file's path, size and mtime."""
    digest = hashlib.sha256(json.dumps({"reader": reader, **settings, "root": str(root.resolve())}).encode())
    start = len(str(root))
    for path in files:
        stat = os.stat(path)
        digest.update(f"{path[start:]}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def cached(
    reader: str,
    settings: dict,
    root: Path,
    files: Sequence[str],
    build: Callable[[], LabelledImages],
    normalize: Callable[[Tensor], Tensor],
    cache_dir: str | os.PathLike | None,
    compress: bool = True,
) -> LabelledImages:
    """The decoded set from memory, else from the cache file, else from ``build()`` (then saved)."""
    key = cache_key(reader, settings, root, files)
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key]
    path = resolve_cache_dir(cache_dir) / f"{reader}-{'-'.join(f'{k}{v}' for k, v in settings.items())}-{key}.npz"
    data = _load(path, normalize) if path.is_file() else None
    if data is None:
        data = build()
        _save(path, data, compress)
    _MEMORY[key] = data
    while len(_MEMORY) > _MEMORY_SIZE:
        _MEMORY.popitem(last=False)
    return data


def _load(path: Path, normalize: Callable[[Tensor], Tensor]) -> LabelledImages | None:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            images, labels, names = arrays["images"], arrays["labels"], arrays["class_names"]
    except (OSError, KeyError, ValueError) as error:
        warnings.warn(f"ignoring unreadable cache file {path} ({error}); decoding the images again", stacklevel=3)
        return None
    log.info("loaded %d cached images from %s", len(images), path)
    return LabelledImages(torch.from_numpy(images), torch.from_numpy(labels), names.tolist(), normalize)


def _save(path: Path, data: LabelledImages, compress: bool) -> None:
    """Write atomically (temporary file, then rename), so a crash never leaves a half-written cache."""
    save = np.savez_compressed if compress else np.savez
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            save(handle, images=data.images.numpy(), labels=data.labels.numpy(), class_names=np.array(data.class_names))
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        warnings.warn(f"cannot write the cache file {path} ({error}); pass a writable cache_dir", stacklevel=3)
        return
    log.info("cached %d decoded images in %s", len(data.images), path)
