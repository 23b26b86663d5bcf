"""Omniglot (Lake et al. 2015) from the files of its official zips.

Layout: ``ROOT/images_background/<Alphabet>/characterNN/*.png`` (964 characters) and
``ROOT/images_evaluation/...`` (659 characters): 1,623 characters of 20 drawings each, 105x105 1-bit
PNGs with black strokes on white, from ``images_background.zip`` and ``images_evaluation.zip`` at
github.com/brendenlake/omniglot (``python/``). Class ids follow the sorted order background, then
evaluation, alphabet, character; a class is named ``images_background/<Alphabet>/characterNN``.

Normalisation (as in Finn et al.'s MAML code): each PNG is converted to 8-bit grayscale (stroke 0,
background 255), resized to ``image_size`` x ``image_size`` with Pillow's Lanczos filter (skipped at
105), and inverted, ``v = 255 - pixel``, so strokes are high; the set is held as uint8 and a model sees
``x = v / 255`` in [0, 1] as float32 (1, H, W): strokes 1, background 0.

Example:
    >>> # not run by the tests: it needs Omniglot's files on disk (nothing downloads)
    >>> images, labels, names = load_omniglot("../shared/data/omniglot")  # doctest: +SKIP
    >>> images.shape, names[0]  # doctest: +SKIP
    (torch.Size([32460, 1, 28, 28]), 'images_background/Alphabet_of_the_Magi/character01')
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

BACKGROUND, EVALUATION = "images_background", "images_evaluation"
# Bump when decoding changes, so old cache files miss.
VERSION = 1
SPLIT_SEED = 0
# (meta-train, meta-val) characters of the "maml" split; the rest are meta-test.
MAML_SPLIT = (1200, 100)
# Background characters held out as meta-val in the "lake" split.
LAKE_VAL_CLASSES = 100
LAYOUT = (
    "ROOT/images_background/<Alphabet>/characterNN/*.png and ROOT/images_evaluation/...; unzip "
    "images_background.zip and images_evaluation.zip from github.com/brendenlake/omniglot (python/) into ROOT"
)


def decode(path: str | os.PathLike, image_size: int = 28) -> np.ndarray:
    """One drawing as stored: uint8 (1, image_size, image_size), strokes high (see the module docstring)."""
    Image = pillow()
    image = open_image(path).convert("L")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.LANCZOS)
    return (255 - np.asarray(image, dtype=np.uint8))[None]


def load_image(path: str | os.PathLike, image_size: int = 28) -> Tensor:
    """One drawing exactly as the data set serves it: float32 (1, image_size, image_size) in [0, 1].

    Example:
        >>> # not run by the tests: it needs Omniglot's files on disk
        >>> x = load_image("images_background/Latin/character01/0541_01.png")  # doctest: +SKIP
        >>> x.shape, x.dtype  # doctest: +SKIP
        (torch.Size([1, 28, 28]), torch.float32)
    """
    return scale_uint8(torch.from_numpy(decode(path, _check_size(image_size))))


def characters(root: str | os.PathLike) -> list[tuple[str, Path]]:
    """Every character's class name and folder, in class-id order; a one-line error for a wrong root."""
    root = Path(root).expanduser()
    missing = [part for part in (BACKGROUND, EVALUATION) if not (root / part).is_dir()]
    if missing:
        zipped = [part for part in missing if (root / f"{part}.zip").is_file()]
        hint = f"; found {zipped[0]}.zip there: unzip it" if zipped else ""
        folders = " or ".join(missing)
        raise FileNotFoundError(f"{root} has no {folders} folder{hint}; Omniglot must be laid out as {LAYOUT}")
    found = []
    for part in (BACKGROUND, EVALUATION):
        for alphabet in sorted(p for p in (root / part).iterdir() if p.is_dir()):
            found += [(f"{part}/{alphabet.name}/{c.name}", c) for c in sorted(alphabet.iterdir()) if c.is_dir()]
    if not found:
        raise FileNotFoundError(f"{root} holds no character folders; Omniglot must be laid out as {LAYOUT}")
    return found


def load(
    root: str | os.PathLike,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> LabelledImages:
    """The decoded set (cached, see :mod:`fastmaml.data.images`), as :class:`LabelledImages`."""
    image_size = _check_size(image_size)
    root = Path(root).expanduser()
    classes = characters(root)
    files = [image_files(folder, (".png",)) for _, folder in classes]
    empty = [name for (name, _), f in zip(classes, files) if not f]
    if empty:
        raise FileNotFoundError(
            f"character folder {root / empty[0]} has no PNG files; Omniglot must be laid out as {LAYOUT}"
        )
    paths = [path for f in files for path in f]

    def build() -> LabelledImages:
        arrays = decode_files(functools.partial(decode, image_size=image_size), paths, workers)
        labels = torch.arange(len(classes)).repeat_interleave(torch.tensor([len(f) for f in files]))
        return LabelledImages(torch.from_numpy(np.stack(arrays)), labels, [n for n, _ in classes], scale_uint8)

    settings = {"version": VERSION, "size": image_size}
    return cached("omniglot", settings, root, paths, build, scale_uint8, cache_dir, compress=True)


def load_omniglot(
    root: str | os.PathLike,
    image_size: int = 28,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> tuple[Tensor, Tensor, list[str]]:
    """All of Omniglot: uint8 images (N, 1, S, S) with strokes high, int64 labels (N,), class names.

    ``scale_uint8(images)`` (``images / 255``) gives the float32 tensors a model sees. The first call
    decodes every PNG and caches the array in ``cache_dir`` (default ``$FASTMAML_CACHE`` or
    ``~/.cache/fastmaml``); later calls read the cache.
    """
    data = load(root, image_size, cache_dir, workers)
    return data.images, data.labels, data.class_names


def splits(class_names: list[str], scheme: str = "maml", seed: int = SPLIT_SEED) -> dict[str, Tensor]:
    """Class ids of the meta-train, meta-val and meta-test splits.

    ``"maml"``: a seeded shuffle (``torch.randperm``, seed 0) of all characters; the first 1,200 are
    meta-train (4,800 classes with rotations), the next 100 meta-val and the remaining 323 meta-test
    (Finn et al.'s code shuffles with Python's ``random`` instead and trains on 1,100 of its 1,200).
    ``"lake"``: the background set (964) for training, the evaluation set (659) for testing; 100
    background characters, chosen by the same seeded shuffle, are held out as meta-val, leaving 864.
    """
    n = len(class_names)
    if scheme == "maml":
        train_classes, val_classes = MAML_SPLIT
        if n <= train_classes + val_classes:
            raise ValueError(
                f"the maml split needs more than {train_classes + val_classes} characters but there are {n}; "
                "use the full Omniglot or split_scheme='lake'"
            )
        train, val, test = split_classes(n, (train_classes, val_classes, None), seed=seed)
    elif scheme == "lake":
        background = torch.tensor([i for i, name in enumerate(class_names) if name.startswith(BACKGROUND + "/")])
        if len(background) <= LAKE_VAL_CLASSES or len(background) == n:
            raise ValueError(
                f"the lake split needs more than {LAKE_VAL_CLASSES} background and some evaluation characters, found "
                f"{len(background)} of {n}; use the full Omniglot layout ({LAYOUT})"
            )
        val, train = split_classes(background, (LAKE_VAL_CLASSES, None), seed=seed)
        test = torch.tensor([i for i in range(n) if not class_names[i].startswith(BACKGROUND + "/")])
    else:
        raise ValueError(f"split_scheme={scheme!r} is not one of ('maml', 'lake'); pick one of them")
    return {"train": train.sort().values, "val": val.sort().values, "test": test.sort().values}


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r}; pass a positive integer such as 28")
    return image_size
