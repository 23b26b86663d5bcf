"""Readers for real few-shot image data on disk, and the one entry point the trainer calls.

Readers decode a data set once, cache the uint8 array on disk (``$FASTMAML_CACHE`` or
``~/.cache/fastmaml``) and in memory, and share it between the meta-train, meta-val and meta-test
samplers. Nothing is downloaded: pass the path of files you have. Pillow is needed to decode images
(``pip install 'fastmaml[vision]'``, in a checkout ``pip install -e '.[vision]'``); it is imported only when a
reader decodes.
"""

from __future__ import annotations

import os

from fastmaml.tasks.episodes import EpisodicTasks

DATASETS = ("omniglot", "miniimagenet", "folder")
"""The data sets :func:`episodic_tasks` reads (a recipe's ``data.name``); ``folder`` is your own images.

Example:
    >>> DATASETS
    ('omniglot', 'miniimagenet', 'folder')
    >>> episodic_tasks("cifar", "data/cifar", "train", 5, 1, 15)
    Traceback (most recent call last):
    ...
    ValueError: dataset='cifar' is not one of ('omniglot', 'miniimagenet', 'folder'); pick one of them
"""
SPLITS = ("train", "val", "test")


def episodic_tasks(
    dataset: str,
    root: str | os.PathLike,
    split: str,
    ways: int,
    shots: int,
    query_shots: int,
    image_size: int | None = None,
    rotations: bool = False,
    cache_dir: str | os.PathLike | None = None,
    split_scheme: str = "maml",
) -> EpisodicTasks:
    """N-way K-shot episodes from one split of a data set on disk.

    Args:
        dataset: ``"omniglot"``, ``"miniimagenet"`` or ``"folder"`` (``ROOT/<class>/*.png``).
        root: the data set's folder (layouts in :mod:`fastmaml.data.omniglot`,
            :mod:`fastmaml.data.miniimagenet`, :mod:`fastmaml.data.folder`).
        split: ``"train"``, ``"val"`` or ``"test"`` (class-disjoint).
        ways, shots, query_shots: classes per task, support and query images per class.
        image_size: side in pixels; default 28 (Omniglot), 84 (mini-ImageNet), the files' own (folder).
        rotations: 0/90/180/270-degree rotations of each class are new classes (the MAML paper's
            Omniglot meta-train augmentation).
        cache_dir: where decoded arrays are cached.
        split_scheme: Omniglot's ``"maml"`` (1200/100/323 seeded) or ``"lake"`` (background vs
            evaluation); the other data sets have one scheme and accept only the default.

    Example:
        >>> # not run by the tests: it needs Omniglot's files on disk (nothing downloads)
        >>> root = "../shared/data/omniglot"
        >>> tasks = episodic_tasks("omniglot", root, "train", 5, 1, 15, rotations=True)  # doctest: +SKIP
        >>> tasks.num_classes, tasks.channels, tasks.image_size  # doctest: +SKIP
        (4800, 1, 28)
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not one of {DATASETS}; pick one of them")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}; pick one of them")
    if dataset != "omniglot" and split_scheme != "maml":
        raise ValueError(f"split_scheme={split_scheme!r} applies to omniglot only; leave it at 'maml' for {dataset}")
    if dataset == "omniglot":
        from fastmaml.data import omniglot

        data = omniglot.load(root, 28 if image_size is None else image_size, cache_dir)
        split_ids = omniglot.splits(data.class_names, split_scheme)
    elif dataset == "miniimagenet":
        from fastmaml.data import miniimagenet

        data, split_ids = miniimagenet.load(root, 84 if image_size is None else image_size, cache_dir)
    else:
        from fastmaml.data import folder

        data, split_ids = folder.load(root, image_size, cache_dir)
    return EpisodicTasks(
        data.images,
        data.labels,
        ways,
        shots,
        query_shots,
        classes=split_ids[split],
        rotations=rotations,
        normalize=data.normalize,
        class_names=data.class_names,
    )


__all__ = ["DATASETS", "EpisodicTasks", "episodic_tasks"]
