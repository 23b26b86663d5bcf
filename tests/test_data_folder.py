"""The image-folder reader: ROOT/<class>/*.png|jpg, with or without train/val/test folders."""

import pytest
import torch

from fastmaml.data import episodic_tasks, folder
from fixtures import image_folder


pytestmark = pytest.mark.usefixtures("empty_memory_cache")


def test_grayscale_folder_gives_one_channel_and_a_seeded_split(tmp_path):
    root = image_folder(tmp_path / "gray", classes=10, per_class=5, mode="L")
    images, labels, names, split_ids = folder.load_folder(root, cache_dir=tmp_path / "c")
    assert images.shape == (50, 1, 12, 12) and names[3] == "class_3"
    for c in range(10):  # grey level 20 * c, within JPEG rounding for the .JPG files
        assert (images[labels == c].int() - 20 * c).abs().max() <= 2
    assert [len(split_ids[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert len(set(torch.cat(list(split_ids.values())).tolist())) == 10


def test_colour_folder_with_split_folders_and_resize(tmp_path):
    root = tmp_path / "colour"
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        image_folder(root / split, classes=count, per_class=4, size=20)
    images, labels, names, split_ids = folder.load_folder(root, image_size=8, cache_dir=tmp_path / "c")
    assert images.shape == (28, 3, 8, 8)
    assert names[:4] == ["train/class_0", "train/class_1", "train/class_2", "val/class_0"]
    assert {s: ids.tolist() for s, ids in split_ids.items()} == {"train": [0, 1, 2], "val": [3, 4], "test": [5, 6]}
    tasks = episodic_tasks("folder", root, "val", 2, 1, 3, image_size=8, cache_dir=tmp_path / "c")
    batch = tasks.sample_tasks(4, torch.Generator().manual_seed(0))
    assert batch.query_x.shape == (4, 6, 3, 8, 8) and 0.0 <= batch.query_x.min() and batch.query_x.max() <= 1.0
    assert (tasks.channels, tasks.image_size, tasks.num_classes) == (3, 8, 2)


def test_mixed_sizes_without_image_size_raise(tmp_path):
    root = image_folder(tmp_path / "mixed", classes=2, per_class=2)
    from PIL import Image

    Image.new("RGB", (30, 20)).save(root / "class_1" / "big.png")
    with pytest.raises(ValueError, match=r"images have different sizes .*pass image_size"):
        folder.load_folder(root, cache_dir=tmp_path / "c")
    images, *_ = folder.load_folder(root, image_size=10, cache_dir=tmp_path / "c")
    assert images.shape == (5, 3, 10, 10)


def test_bad_roots_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder; lay out your images as ROOT/<class>"):
        folder.load_folder(tmp_path / "nowhere")
    root = image_folder(tmp_path / "one", classes=2, per_class=1)
    (root / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_class has no .png/.jpg"):
        folder.load_folder(root, cache_dir=tmp_path / "c")
