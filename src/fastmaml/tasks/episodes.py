"""N-way K-shot episodes over any labelled image set, sampled in a few vectorised tensor ops.

An *episode* (task) picks ``ways`` classes at random, gives them the labels ``0..ways-1`` in random
order, and draws ``shots`` support and ``query_shots`` query images per class, all distinct.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from fastmaml._text import with_article
from fastmaml.tasks.batch import TaskBatch

Normalize = Callable[[Tensor], Tensor]


def scale_uint8(images: Tensor) -> Tensor:
    """uint8 pixels to float32 in [0, 1] (``x / 255``), the default for uint8 image sets."""
    return images.float().div_(255.0)


class EpisodicTasks:
    """N-way K-shot classification tasks from images ``(N, C, H, W)`` and integer labels ``(N,)``.

    The images are shared, not copied per split (only ``rotations`` makes copies): ``classes`` names
    the label values this task distribution draws from (e.g. the meta-train classes), so meta-train,
    meta-val and meta-test samplers can all hold the same tensor.

    Args:
        images: (N, C, H, W), float (used as given: already normalised) or uint8 (passed through
            ``normalize`` after gathering, which keeps the stored set 4x smaller).
        labels: (N,) integer class ids.
        ways: classes per task.
        shots: support images per class.
        query_shots: query images per class (default: ``shots``).
        classes: the class ids to sample from (default: every label present).
        rotations: each class at 0/90/180/270 degrees is a distinct class (Santoro et al. 2016, used
            by the MAML paper for Omniglot), so ``num_classes`` is 4x the base classes. The split's
            images are rotated once with ``torch.rot90`` and held (4x the split's memory) so that
            sampling stays one gather. Needs square images.
        normalize: ``fn(gathered) -> float tensor`` for uint8 images; default :func:`scale_uint8`.
        class_names: a name per class id, for error messages and reports.

    Example:
        >>> images, labels = torch.rand(50, 1, 28, 28), torch.arange(10).repeat_interleave(5)
        >>> tasks = EpisodicTasks(images, labels, ways=5, shots=1, query_shots=4)
        >>> batch = tasks.sample_tasks(32, torch.Generator().manual_seed(0))
        >>> tuple(batch.support_x.shape), tuple(batch.query_y.shape)
        ((32, 5, 1, 28, 28), (32, 20))
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        ways: int,
        shots: int,
        query_shots: int | None = None,
        *,
        classes: Sequence[int] | Tensor | None = None,
        rotations: bool = False,
        normalize: Normalize | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        query_shots = shots if query_shots is None else query_shots
        _check_counts(ways, shots, query_shots)
        if not isinstance(images, Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images has shape {shape}; pass a tensor (N, C, H, W) (add a channel dim for grayscale)")
        labels = torch.as_tensor(labels)
        if labels.shape != images.shape[:1] or labels.is_floating_point():
            raise ValueError(
                f"labels has shape {tuple(labels.shape)} dtype {labels.dtype} for {images.shape[0]} images; "
                "pass one integer label per image"
            )
        if rotations and images.shape[-1] != images.shape[-2]:
            raise ValueError(f"rotations=True needs square images, got {tuple(images.shape[-2:])}; resize them first")
        if images.dtype == torch.uint8:
            normalize = scale_uint8 if normalize is None else normalize
        elif not images.is_floating_point():
            raise ValueError(f"images have dtype {images.dtype}; pass float (normalised) or uint8 images")
        self.images, self.normalize = images, normalize
        self.ways, self.shots, self.query_shots = ways, shots, query_shots
        self.rotations = bool(rotations)
        self.class_names = list(class_names) if class_names is not None else None
        self.classes, self._index, self._counts = _index_classes(labels.long().cpu(), classes)
        self._uniform = bool((self._counts == self._index.shape[1]).all())  # no padding to mask out
        self.num_base_classes = len(self.classes)
        self.num_classes = self.num_base_classes * (4 if self.rotations else 1)
        self._check_split()
        self._source, self._row = images, None
        if self.rotations:
            self._source, self._row = _rotated_copies(images, self._index)

    @property
    def nbytes(self) -> int:
        """Bytes of the images sampling gathers from (with ``rotations``, the four rotated copies)."""
        return self._source.numel() * self._source.element_size()

    @property
    def device(self) -> torch.device:
        """Where the images are held, so where each meta-batch is gathered."""
        return self._source.device

    def to(self, device: torch.device | str) -> EpisodicTasks:
        """These tasks with their images held on ``device`` (copied once): each meta-batch is then one gather
        there, rotations included, and only the sampled indices cross from the host. The indices are drawn
        from the same CPU generator on every device, so a seed gives the same tasks on the CPU and a GPU.

        Example:
            >>> tasks = EpisodicTasks(torch.rand(50, 1, 28, 28), torch.arange(10).repeat_interleave(5), 5, 1)
            >>> tasks.to("cpu").sample_tasks(2, torch.Generator()).support_x.device
            device(type='cpu')
        """
        moved = copy.copy(self)
        moved._source = self._source.to(device)
        return moved

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int | tuple[int, int]:
        """The side of square images (every reader's), else (H, W)."""
        height, width = self.images.shape[2:]
        return height if height == width else (height, width)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one example."""
        channels, height, width = self.images.shape[1:]
        return (channels, height, width)

    def _check_split(self) -> None:
        if self.ways > self.num_classes:
            raise ValueError(
                f"ways={self.ways} but the split has {self.num_classes} classes; lower ways or use a larger split"
            )
        need = self.shots + self.query_shots
        short = torch.nonzero(self._counts < need).flatten()
        if len(short):
            i = int(short[0])
            class_id = int(self.classes[i])
            name = f" ({self.class_names[class_id]})" if self.class_names and class_id < len(self.class_names) else ""
            raise ValueError(
                f"class {class_id}{name} has {int(self._counts[i])} images but shots+query_shots={need} needs "
                f"{need} ({len(short)} classes are short); lower shots/query_shots or leave those classes out"
            )

    def sample_indices(self, tasks: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Image indices (tasks, ways, shots + query_shots) and rotations (tasks, ways) of ``tasks`` episodes.

        Way ``j`` of a task has label ``j``; the classes behind the ways are a uniformly random ordered
        choice without replacement, so labels carry no class information across tasks.
        """
        if tasks < 1:
            raise ValueError(f"tasks={tasks}; sample at least one task")
        chosen = self._choose_classes(tasks, generator)  # (tasks, ways)
        base, rotation = (chosen // 4, chosen % 4) if self.rotations else (chosen, torch.zeros_like(chosen))
        # The `n` smallest of iid uniform keys, in key order, are a uniformly random ordered choice of `n` distinct
        # examples (their order decides support vs query). Padded slots of smaller classes get key 2 > any
        # uniform key, so they are never picked.
        per_class = self.shots + self.query_shots
        width = self._index.shape[1]
        example_keys = torch.rand(tasks, self.ways, width, generator=generator)
        if not self._uniform:
            slots = torch.arange(width)
            example_keys.masked_fill_(slots >= self._counts[base].unsqueeze(-1), 2.0)
        picks = example_keys.topk(per_class, dim=2, largest=False).indices  # (tasks, ways, n)
        return self._index[base.unsqueeze(-1), picks], rotation

    def _choose_classes(self, tasks: int, generator: torch.Generator) -> Tensor:
        """A uniformly random ordered choice of ``ways`` distinct classes per task, (tasks, ways).

        Many classes (Omniglot's 4,800 with rotations): iid uniform draws, redrawing the rare task with a
        repeated class (rejection keeps the choice uniform); 32 tasks cost 160 draws instead of 153,600 keys.
        Few classes: the ``ways`` smallest of iid uniform keys, which never repeats.
        """
        if 4 * self.ways * self.ways > self.num_classes:  # a repeat in more than ~1 task of 8: keys
            keys = torch.rand(tasks, self.num_classes, generator=generator)
            return keys.topk(self.ways, dim=1, largest=False).indices
        chosen = torch.randint(self.num_classes, (tasks, self.ways), generator=generator)
        while True:
            ordered = chosen.sort(dim=1).values
            repeated = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
            if not repeated.any():
                return chosen
            chosen[repeated] = torch.randint(self.num_classes, (int(repeated.sum()), self.ways), generator=generator)

    def sample_tasks(self, tasks: int, generator: torch.Generator) -> TaskBatch:
        """A meta-batch of ``tasks`` episodes.

        Shapes: support_x (tasks, ways*shots, C, H, W), support_y (tasks, ways*shots) int64 in
        ``0..ways-1``, query_x (tasks, ways*query_shots, C, H, W), query_y (tasks, ways*query_shots);
        examples are grouped by way (all of way 0 first).
        """
        index, rotation = self.sample_indices(tasks, generator)
        if self._row is not None:
            # Row of the (rotation, image) pair in the pre-rotated copies (4 * split images, C, H, W).
            index = rotation.unsqueeze(-1) * (self._source.shape[0] // 4) + self._row[index]
        if self._source.is_cuda:  # from pinned memory the copy is queued, not waited for
            index = index.pin_memory().to(self._source.device, non_blocking=True)
        k = self.shots
        # Gather support and query straight into their final layout: one copy of the pixels each.
        support_x = self._gather(index[:, :, :k].reshape(tasks, -1))  # (tasks, ways*shots, C, H, W)
        query_x = self._gather(index[:, :, k:].reshape(tasks, -1))  # (tasks, ways*query_shots, C, H, W)
        labels = torch.arange(self.ways, device=support_x.device)
        support_y = labels.repeat_interleave(k).expand(tasks, -1).contiguous()
        query_y = labels.repeat_interleave(self.query_shots).expand(tasks, -1).contiguous()
        return TaskBatch(support_x, support_y, query_x, query_y)

    def _gather(self, rows: Tensor) -> Tensor:
        x = self._source[rows]
        return self.normalize(x) if self.normalize is not None else x

    def __repr__(self) -> str:
        return (
            f"EpisodicTasks({self.ways}-way {self.shots}-shot, query_shots={self.query_shots}, "
            f"classes={self.num_classes}{' (rotations)' if self.rotations else ''}, "
            f"images={tuple(self.images.shape)} {self.images.dtype})"
        )


def _check_counts(ways: int, shots: int, query_shots: int) -> None:
    for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("query_shots", query_shots, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}; it must be an integer >= {low}")


def _index_classes(labels: Tensor, classes: Sequence[int] | Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """The class ids, a padded (classes, max_count) matrix of image indices per class, and the counts."""
    present = torch.unique(labels)
    ids = present if classes is None else torch.as_tensor(classes, dtype=torch.long).flatten()
    if len(torch.unique(ids)) != len(ids):
        raise ValueError("classes lists a class twice; pass each class id once")
    missing = ids[~torch.isin(ids, present)]
    if len(missing):
        raise ValueError(f"classes {missing[:5].tolist()} have no images; pass class ids that occur in labels")
    if len(ids) == 0:
        raise ValueError("the split has no classes; pass a non-empty list of class ids")
    # Stable sort groups image indices by label; a class's images keep their data-set order.
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, ids)
    counts = torch.searchsorted(sorted_labels, ids, right=True) - starts
    width = int(counts.max())
    slots = torch.arange(width)
    positions = (starts.unsqueeze(1) + slots).clamp(max=len(labels) - 1)
    index = torch.where(slots < counts.unsqueeze(1), order[positions], -1)  # (classes, width); -1 = padding
    return ids, index, counts


def _rotated_copies(images: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """The split's images at 0/90/180/270 degrees, (4 * M, C, H, W), and a map image index -> 0..M-1.

    Holding the rotated copies (4x the split's images, still in their stored dtype) makes a rotated
    episode one plain gather; rotating at every sample cost as much again as the whole gather.
    """
    members = index[index >= 0]  # the split's image indices, (M,)
    split = images[members.to(images.device)]
    source = torch.cat([torch.rot90(split, k, dims=(-2, -1)) for k in range(4)])
    row = torch.full((images.shape[0],), -1, dtype=torch.long)
    row[members] = torch.arange(len(members))
    return source, row


def from_dataset(dataset: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Stack a map-style ``torch.utils.data.Dataset`` of ``(image (C, H, W), label)`` pairs into tensors.

    Example:
        >>> images, labels = from_dataset([(torch.zeros(1, 4, 4), 0), (torch.ones(1, 4, 4), 1)])
        >>> tuple(images.shape), labels.tolist()
        ((2, 1, 4, 4), [0, 1])
    """
    if len(dataset) == 0:
        raise ValueError("the dataset is empty; pass a dataset with (image, label) pairs")
    images, labels = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise ValueError(f"dataset[{i}] is {with_article(type(item).__name__)}; it must be an (image, label) pair")
        images.append(torch.as_tensor(item[0]))
        labels.append(int(item[1]))
    shapes = {tuple(t.shape) for t in images}
    if len(shapes) > 1:
        raise ValueError(f"dataset images have different shapes {sorted(shapes)[:3]}; resize them to one size")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def split_classes(
    classes: int | Sequence[int] | Tensor, sizes: Sequence[int | None], seed: int | None = 0
) -> tuple[Tensor, ...]:
    """Partition class ids into disjoint splits (e.g. meta-train/val/test) after a seeded shuffle.

    Args:
        classes: the class ids, or a count ``n`` for ``0..n-1``.
        sizes: classes per split, in order; one entry may be ``None`` for "the rest".
        seed: the shuffle's seed (``torch.randperm`` on a CPU generator); ``seed=None`` keeps the order.

    Example:
        >>> [len(s) for s in split_classes(1623, (1200, 100, None))]
        [1200, 100, 323]
    """
    ids = torch.arange(classes) if isinstance(classes, int) else torch.as_tensor(classes, dtype=torch.long).flatten()
    if sum(s is None for s in sizes) > 1:
        raise ValueError(f"sizes={tuple(sizes)} has more than one None; at most one split can take the rest")
    fixed = sum(s for s in sizes if s is not None)
    if any(s is not None and s < 0 for s in sizes) or fixed > len(ids):
        raise ValueError(f"sizes={tuple(sizes)} ask for {fixed} classes but there are {len(ids)}; lower the sizes")
    if seed is not None:
        ids = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))]
    counts = [len(ids) - fixed if s is None else s for s in sizes]
    return tuple(torch.split(ids[: sum(counts)], counts))
