"""EpisodicTasks: shapes, labels, determinism, class restriction, rotations, errors."""

import pytest
import torch
from torch.utils.data import TensorDataset

from fastmaml.tasks.episodes import EpisodicTasks, from_dataset, split_classes


def identity_images(classes: int, per_class: int | list[int], side: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel is the image's own index (float64 so indices stay exact), and labels."""
    counts = [per_class] * classes if isinstance(per_class, int) else per_class
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    # Shuffle so a class's images are not contiguous: the sampler must not assume sorted labels.
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    images = torch.arange(len(labels), dtype=torch.float64).view(-1, 1, 1, 1).expand(-1, 1, side, side).clone()
    return images, labels


def image_ids(x: torch.Tensor) -> torch.Tensor:
    return x[..., 0, 0, 0].long()  # (tasks, examples)


def test_shapes_and_labels():
    images, labels = identity_images(10, 6)
    tasks = EpisodicTasks(images, labels, ways=5, shots=2, query_shots=3)
    batch = tasks.sample_tasks(7, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (7, 10, 1, 4, 4) and batch.query_x.shape == (7, 15, 1, 4, 4)
    assert batch.support_y.dtype == torch.int64 and batch.query_y.dtype == torch.int64
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert batch.query_y[3].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert (tasks.channels, tasks.image_size, tasks.image_shape, tasks.num_classes) == (1, 4, (1, 4, 4), 10)


def test_each_way_is_one_class_with_distinct_images():
    images, labels = identity_images(12, 7)
    tasks = EpisodicTasks(images, labels, ways=4, shots=3, query_shots=4)
    batch = tasks.sample_tasks(50, torch.Generator().manual_seed(3))
    support, query = image_ids(batch.support_x), image_ids(batch.query_x)
    for t in range(50):
        ways_classes = []
        for way in range(4):
            ids = torch.cat([support[t][batch.support_y[t] == way], query[t][batch.query_y[t] == way]])
            assert len(set(ids.tolist())) == 7, "support and query images of a class must all differ"
            classes = set(labels[ids].tolist())
            assert len(classes) == 1
            ways_classes.append(classes.pop())
        assert len(set(ways_classes)) == 4, "a task's ways must be distinct classes"


def test_same_seed_same_tasks_other_seed_other_tasks():
    images, labels = identity_images(20, 5)
    tasks = EpisodicTasks(images, labels, ways=5, shots=1, query_shots=2)
    a = tasks.sample_tasks(8, torch.Generator().manual_seed(42))
    b = tasks.sample_tasks(8, torch.Generator().manual_seed(42))
    c = tasks.sample_tasks(8, torch.Generator().manual_seed(43))
    assert all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))
    assert not torch.equal(a.support_x, c.support_x)


def test_label_order_and_support_choice_are_random():
    images, labels = identity_images(6, 4)
    tasks = EpisodicTasks(images, labels, ways=2, shots=1, query_shots=1)
    batch = tasks.sample_tasks(2000, torch.Generator().manual_seed(0))
    support_classes = labels[image_ids(batch.support_x)]  # (tasks, 2)
    # Way 0 holds the smaller class id about half of the time, not always.
    assert 0.4 < (support_classes[:, 0] < support_classes[:, 1]).float().mean() < 0.6
    # Every image of class 0 is the support image sometimes, and each class appears in every way.
    first = image_ids(batch.support_x)[:, 0][support_classes[:, 0] == 0]
    assert set(first.tolist()) == set(torch.nonzero(labels == 0).flatten().tolist())
    assert set(support_classes[:, 1].tolist()) == set(range(6))


def test_classes_restrict_and_split_classes_is_disjoint():
    images, labels = identity_images(30, 5)
    train, val, test = split_classes(30, (20, 4, None), seed=0)
    assert (len(train), len(val), len(test)) == (20, 4, 6)
    assert len(set(torch.cat([train, val, test]).tolist())) == 30
    assert torch.equal(train, split_classes(30, (20, 4, None), seed=0)[0])
    g = torch.Generator().manual_seed(0)
    seen = {}
    for name, split in (("train", train), ("test", test)):
        batch = EpisodicTasks(images, labels, 3, 1, 2, classes=split).sample_tasks(200, g)
        seen[name] = set(labels[image_ids(batch.query_x)].flatten().tolist())
        assert seen[name] <= set(split.tolist())
    assert seen["test"] == set(test.tolist()) and not seen["train"] & seen["test"]


def test_unequal_class_sizes_never_pick_padding():
    images, labels = identity_images(5, [3, 8, 4, 12, 3])
    tasks = EpisodicTasks(images, labels, ways=5, shots=1, query_shots=2)
    batch = tasks.sample_tasks(100, torch.Generator().manual_seed(0))
    ids = torch.cat([image_ids(batch.support_x), image_ids(batch.query_x)], dim=1)
    assert ids.min() >= 0 and ids.max() < len(labels)
    for t in range(100):
        assert len(set(ids[t].tolist())) == 15


def test_rotations_make_four_classes_per_character():
    side = 5
    images = torch.rand(12, 2, side, side, dtype=torch.float64)  # asymmetric: rotations are distinct
    labels = torch.arange(4).repeat_interleave(3)
    tasks = EpisodicTasks(images, labels, ways=6, shots=1, query_shots=2, rotations=True)
    assert tasks.num_classes == 16 and tasks.num_base_classes == 4
    index, rotation = tasks.sample_indices(40, torch.Generator().manual_seed(5))
    batch = tasks.sample_tasks(40, torch.Generator().manual_seed(5))
    assert sorted(set(rotation.flatten().tolist())) == [0, 1, 2, 3]
    for t in range(40):
        pairs = {(int(labels[index[t, w, 0]]), int(rotation[t, w])) for w in range(6)}
        assert len(pairs) == 6, "the ways must be distinct (character, rotation) classes"
        for w in range(6):
            expected = torch.rot90(images[index[t, w, 1:]], int(rotation[t, w]), dims=(-2, -1))
            assert torch.equal(batch.query_x[t, 2 * w:2 * w + 2], expected)


def test_uint8_images_are_scaled_by_default():
    images = torch.randint(0, 256, (20, 1, 3, 3), dtype=torch.uint8)
    images[0] = 255
    tasks = EpisodicTasks(images, torch.arange(4).repeat_interleave(5), ways=4, shots=2, query_shots=3)
    batch = tasks.sample_tasks(10, torch.Generator().manual_seed(0))
    assert batch.support_x.dtype == torch.float32
    assert 0.0 <= batch.support_x.min() and batch.query_x.max() <= 1.0
    full = torch.cat([batch.support_x, batch.query_x], 1)
    assert (full == 1.0).all(dim=(-1, -2, -3)).any(), "every image appears in a 4-way 5-image episode"


def test_from_dataset_stacks_pairs():
    dataset = TensorDataset(torch.rand(12, 1, 4, 4), torch.arange(3).repeat(4))
    images, labels = from_dataset(dataset)
    assert images.shape == (12, 1, 4, 4) and labels.tolist() == torch.arange(3).repeat(4).tolist()
    batch = EpisodicTasks(images, labels, 3, 2, 2).sample_tasks(2, torch.Generator().manual_seed(0))
    assert batch.query_x.shape == (2, 6, 1, 4, 4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(ways=11, shots=1), "ways=11 but the split has 10 classes; lower ways"),
        (dict(ways=5, shots=4, query_shots=3), r"class \d+ has 6 images but shots\+query_shots=7"),
        (dict(ways=5, shots=1, classes=[0, 1, 99]), r"classes \[99\] have no images"),
        (dict(ways=5, shots=0), "shots=0; it must be an integer >= 1"),
        (dict(ways=5, shots=1, rotations=True, classes=[0]), "ways=5 but the split has 4 classes"),
    ],
)
def test_bad_settings_raise_one_line_errors(kwargs, message):
    images, labels = identity_images(10, 6)
    with pytest.raises(ValueError, match=message) as error:
        kwargs = {"query_shots": 1, **kwargs}
        EpisodicTasks(images, labels, **kwargs)
    assert "\n" not in str(error.value)


def test_short_class_error_names_the_class():
    images, labels = identity_images(6, [5, 5, 2, 5, 5, 5])
    with pytest.raises(ValueError, match=r"class 2 \(zeta\) has 2 images but shots\+query_shots=3 needs 3"):
        EpisodicTasks(images, labels, 5, 1, 2, class_names=["a", "b", "zeta", "d", "e", "f"])


def test_bad_tensors_raise():
    with pytest.raises(ValueError, match=r"pass a tensor \(N, C, H, W\)"):
        EpisodicTasks(torch.zeros(10, 4, 4), torch.zeros(10, dtype=torch.long), 2, 1)
    with pytest.raises(ValueError, match="one integer label per image"):
        EpisodicTasks(torch.zeros(10, 1, 4, 4), torch.zeros(9, dtype=torch.long), 2, 1)
    with pytest.raises(ValueError, match="needs square images"):
        EpisodicTasks(torch.zeros(10, 1, 4, 5), torch.arange(10), 2, 1, rotations=True)
    with pytest.raises(ValueError, match="ask for 40 classes but there are 30"):
        split_classes(30, (20, 20, None))


@pytest.mark.parametrize("classes", [40, 9], ids=["redrawn-draws", "smallest-keys"])
def test_class_choice_is_distinct_and_uniform_in_every_position(classes):
    """Both ways of choosing a task's classes (redrawing repeats among many classes, the smallest keys among few)
    give distinct classes, each class equally likely in every way's position."""
    ways, tasks = 3, 18_000
    images, labels = torch.zeros(classes * 2, 1, 2, 2), torch.arange(classes).repeat_interleave(2)
    sampler = EpisodicTasks(images, labels, ways=ways, shots=1, query_shots=1)
    index, _ = sampler.sample_indices(tasks, torch.Generator().manual_seed(0))
    chosen = labels[index[:, :, 0]]  # (tasks, ways): the class of each way
    ordered = chosen.sort(dim=1).values
    assert not (ordered[:, 1:] == ordered[:, :-1]).any()
    expected = tasks / classes
    for way in range(ways):
        counts = torch.bincount(chosen[:, way], minlength=classes).double()
        chi2 = ((counts - expected) ** 2 / expected).sum().item()
        assert chi2 < classes + 6 * (2 * classes) ** 0.5  # mean `classes - 1`, sd sqrt(2 (classes - 1))
