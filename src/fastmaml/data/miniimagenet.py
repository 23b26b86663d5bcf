"""mini-ImageNet in the split of Ravi & Larochelle (2017), as used by the MAML paper.

Layout: ``ROOT/train.csv``, ``ROOT/val.csv``, ``ROOT/test.csv`` (header ``filename,label``; 64, 16 and
20 classes of 600 images, class-disjoint) and ``ROOT/images/<filename>``. Nothing is unpickled: only
the CSV files and the images are read.

Normalisation: each image is converted to RGB and resized to ``image_size`` x ``image_size`` (84 by
default) with Pillow's Lanczos filter (the resize of Finn et al.'s ``proc_images.py``), held as uint8
(3, H, W), and standardised per channel when sampled: ``x = (v / 255 - MEAN) / STD`` with the
mini-ImageNet training-set statistics below (those of the MetaOptNet / FEAT code bases). The decoded
set is cached as an uncompressed ``.npz`` (photos barely compress, and zlib would cost a minute on
1.3 GB).
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fastmaml.data.images import LabelledImages, Standardize, cached, decode_files, open_image, pillow

SPLITS = ("train", "val", "test")
VERSION = 1
MEAN = (120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255)
STD = (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255)
NORMALIZE = Standardize(MEAN, STD)
LAYOUT = "ROOT/train.csv, ROOT/val.csv, ROOT/test.csv (header filename,label) and ROOT/images/<filename>"


def decode(path: str | os.PathLike, image_size: int = 84) -> np.ndarray:
    """One image as stored: uint8 (3, image_size, image_size)."""
    Image = pillow()
    image = open_image(path).convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def read_csv(path: Path) -> list[tuple[str, str]]:
    """The ``(filename, label)`` rows of one split file; one-line errors for a missing or malformed file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; mini-ImageNet must be laid out as {LAYOUT}")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [cell.strip() for cell in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path} must start with the header 'filename,label'; found {rows[0] if rows else 'nothing'}")
    body = [row for row in rows[1:] if row]
    bad = [i for i, row in enumerate(body, start=2) if len(row) != 2]
    if bad:
        raise ValueError(f"{path} line {bad[0]} does not have two columns (filename,label); fix or remove it")
    return [(name.strip(), label.strip()) for name, label in body]


def load(
    root: str | os.PathLike,
    image_size: int = 84,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[LabelledImages, dict[str, Tensor]]:
    """The decoded set (all three splits, cached) and the class ids of each split.

    Class ids number the train classes first, then val, then test, each in sorted label order.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}; pass a positive integer such as 84")
    root = Path(root).expanduser()
    if not (root / "images").is_dir():
        raise FileNotFoundError(f"{root} has no images/ folder; mini-ImageNet must be laid out as {LAYOUT}")
    rows = {split: read_csv(root / f"{split}.csv") for split in SPLITS}
    names: list[str] = []
    split_ids: dict[str, Tensor] = {}
    for split in SPLITS:
        labels = sorted({label for _, label in rows[split]})
        overlap = set(labels) & set(names)
        if overlap:
            raise ValueError(
                f"class {sorted(overlap)[0]} of {split}.csv also appears in an earlier split; "
                "the train/val/test classes must be disjoint"
            )
        split_ids[split] = torch.arange(len(names), len(names) + len(labels))
        names += labels
    class_id = {name: i for i, name in enumerate(names)}
    everything = [row for split in SPLITS for row in rows[split]]
    paths = [os.path.join(root, "images", filename) for filename, _ in everything]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{missing[0]} (and {len(missing) - 1} more) listed in the CSV files is missing; {LAYOUT}"
        )

    def build() -> LabelledImages:
        arrays = decode_files(functools.partial(decode, image_size=image_size), paths, workers)
        labels = torch.tensor([class_id[label] for _, label in everything], dtype=torch.long)
        return LabelledImages(torch.from_numpy(np.stack(arrays)), labels, names, NORMALIZE)

    settings = {"version": VERSION, "size": image_size}
    csv_files = [os.path.join(root, f"{split}.csv") for split in SPLITS]
    data = cached("miniimagenet", settings, root, csv_files + paths, build, NORMALIZE, cache_dir, compress=False)
    return data, split_ids


def load_miniimagenet(
    root: str | os.PathLike,
    image_size: int = 84,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[Tensor, Tensor, list[str], dict[str, Tensor]]:
    """All three splits: uint8 images (N, 3, S, S), int64 labels (N,), class names (wnids), and the
    class ids of ``"train"``, ``"val"`` and ``"test"``. ``NORMALIZE(images)`` gives what a model sees.

    Example:
        >>> # not run by the tests: it needs mini-ImageNet's files on disk (nothing downloads)
        >>> images, labels, names, split_ids = load_miniimagenet("data/miniimagenet")  # doctest: +SKIP
        >>> images.shape, [len(split_ids[s]) for s in SPLITS]  # doctest: +SKIP
        (torch.Size([60000, 3, 84, 84]), [64, 16, 20])
    """
    data, split_ids = load(root, image_size, cache_dir, workers)
    return data.images, data.labels, data.class_names, split_ids
