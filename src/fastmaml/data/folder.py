"""Your own images: one folder per class, ``ROOT/<class>/*.png|jpg|jpeg|bmp|gif|webp``.

Splits: if ROOT holds ``train/``, ``val/`` and ``test/`` folders, each of them is laid out as above and
gives that split's classes. Otherwise the classes are shuffled with a fixed seed (``torch.randperm``,
seed 0) and split 64% / 16% / the rest, mini-ImageNet's proportions (64/16/20 classes).

Images: converted to 8-bit grayscale (1 channel) when every image is grayscale, else to RGB (3
channels); resized to ``image_size`` x ``image_size`` with Pillow's Lanczos filter when
``image_size`` is given, else all images must share one size. Held as uint8; a model sees
``x = v / 255`` in [0, 1] as float32.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastmaml.data.images import LabelledImages, cached, decode_files, image_files, open_image, pillow
from fastmaml.tasks.episodes import scale_uint8, split_classes

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")
FRACTIONS = (0.64, 0.16)
SPLIT_SEED = 0
VERSION = 1
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def decode(path: str | os.PathLike, image_size: int | None = None) -> np.ndarray:
    """One image: uint8 (H, W) if it is grayscale, else (H, W, 3); resized when ``image_size`` is given."""
    Image = pillow()
    image = open_image(path)
    image = image.convert("L" if image.mode in _GRAY_MODES else "RGB")
    if image_size is not None and image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def class_folders(root: Path) -> tuple[list[tuple[str, Path]], dict[str, list[int]] | None]:
    """Class names and folders in class-id order, and the class ids of each split if ROOT has
    ``train/``, ``val/``, ``test/`` folders (else None)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; lay out your images as ROOT/<class>/*.png or *.jpg")
    has_splits = all((root / split).is_dir() for split in SPLITS)
    parents = [(f"{split}/", root / split) for split in SPLITS] if has_splits else [("", root)]
    found: list[tuple[str, Path]] = []
    split_ids: dict[str, list[int]] = {}
    for (prefix, parent), split in zip(parents, SPLITS):
        folders = sorted(p for p in parent.iterdir() if p.is_dir())
        split_ids[split] = list(range(len(found), len(found) + len(folders)))
        found += [(prefix + folder.name, folder) for folder in folders]
    if len(found) < 2:
        raise FileNotFoundError(
            f"{root} holds {len(found)} class folders; lay out your images as ROOT/<class>/*.png or *.jpg "
            "(optionally under ROOT/train, ROOT/val, ROOT/test)"
        )
    return found, split_ids if has_splits else None


def load(
    root: str | os.PathLike,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[LabelledImages, dict[str, Tensor]]:
    """The decoded set (cached) and the class ids of the ``"train"``, ``"val"`` and ``"test"`` splits."""
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size={image_size!r}; pass a positive integer or None to keep the images' size")
    root = Path(root).expanduser()
    classes, split_ids = class_folders(root)
    files = [image_files(folder, EXTENSIONS) for _, folder in classes]
    empty = [name for (name, _), f in zip(classes, files) if not f]
    if empty:
        kinds = "/".join(EXTENSIONS)
        raise FileNotFoundError(f"class folder {root / empty[0]} has no {kinds} images; add some or remove it")
    paths = [path for f in files for path in f]

    def build() -> LabelledImages:
        arrays = decode_files(functools.partial(decode, image_size=image_size), paths, workers)
        sizes = {a.shape[:2] for a in arrays}
        if len(sizes) > 1:
            first = {a.shape[:2]: p for a, p in zip(arrays, paths)}
            examples = ", ".join(f"{p} is {h}x{w}" for (h, w), p in list(first.items())[:2])
            raise ValueError(f"images have different sizes ({examples}); pass image_size to resize them to one size")
        if all(a.ndim == 2 for a in arrays):
            images = np.stack(arrays)[:, None]  # (N, 1, H, W)
        else:
            images = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays])
            images = images.transpose(0, 3, 1, 2)  # (N, 3, H, W)
        labels = torch.arange(len(classes)).repeat_interleave(torch.tensor([len(f) for f in files]))
        names = [name for name, _ in classes]
        return LabelledImages(torch.from_numpy(np.ascontiguousarray(images)), labels, names, scale_uint8)

    settings = {"version": VERSION, "size": image_size}
    data = cached("folder", settings, root, paths, build, scale_uint8, cache_dir, compress=True)
    if split_ids is None:
        n = len(classes)
        sizes = (round(FRACTIONS[0] * n), round(FRACTIONS[1] * n), None)
        return data, dict(zip(SPLITS, (s.sort().values for s in split_classes(n, sizes, seed=SPLIT_SEED))))
    return data, {split: torch.tensor(ids, dtype=torch.long) for split, ids in split_ids.items()}


def load_folder(
    root: str | os.PathLike,
    image_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[Tensor, Tensor, list[str], dict[str, Tensor]]:
    """uint8 images (N, C, H, W), int64 labels (N,), class names and each split's class ids.

    Example:
        >>> # not run by the tests: it needs your folder of images (my_images/<class>/*.png)
        >>> images, labels, names, split_ids = load_folder("my_images", image_size=32)  # doctest: +SKIP
    """
    data, split_ids = load(root, image_size, cache_dir, workers)
    return data.images, data.labels, data.class_names, split_ids
