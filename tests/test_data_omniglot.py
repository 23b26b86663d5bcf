"""The Omniglot reader on a generated fixture in the official layout, and on a few real files."""

from pathlib import Path

import pytest
import torch

import fastmaml.data.images as images_module
from fastmaml.data import episodic_tasks, omniglot
from fastmaml.tasks.episodes import scale_uint8
from fixtures import omniglot_layout

REAL = Path(__file__).parents[2] / "shared" / "data" / "omniglot"


pytestmark = pytest.mark.usefixtures("empty_memory_cache")


@pytest.fixture
def root(tmp_path):
    return omniglot_layout(tmp_path / "omniglot", {"Latin": 3, "Greek": 2}, {"Tifinagh": 2}, drawings=4)


def test_load_shapes_labels_names_and_strokes_high(root, tmp_path):
    images, labels, names = omniglot.load_omniglot(root, cache_dir=tmp_path / "cache")
    assert images.shape == (28, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.tolist() == [c for c in range(7) for _ in range(4)]
    assert names[0] == "images_background/Greek/character01" and names[-1] == "images_evaluation/Tifinagh/character02"
    # Each drawing is a 40x40 black square on white (105x105): strokes high, ~14% of the pixels.
    x = scale_uint8(images)
    assert 0.10 < x.mean() < 0.20 and x.max() == 1.0 and x.min() == 0.0
    assert ((x > 0.5).float().mean(dim=(1, 2, 3)) > 0.08).all()


def test_load_image_is_exactly_what_the_set_holds(root, tmp_path):
    images, labels, names = omniglot.load_omniglot(root, image_size=14, cache_dir=tmp_path / "cache")
    path = sorted((root / names[3]).glob("*.png"))[2]
    x = omniglot.load_image(path, image_size=14)
    assert x.shape == (1, 14, 14) and x.dtype == torch.float32
    assert torch.equal(x, scale_uint8(images[labels == 3][2]))


def test_second_load_reads_the_cache_and_a_new_file_misses_it(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first, labels, _ = omniglot.load_omniglot(root, cache_dir=cache)
    assert len(list(cache.glob("omniglot-*.npz"))) == 1
    images_module._MEMORY.clear()

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached load must not decode")

    monkeypatch.setattr(omniglot, "decode", no_decoding)
    second, labels2, _ = omniglot.load_omniglot(root, cache_dir=cache)
    assert torch.equal(first, second) and torch.equal(labels, labels2)
    monkeypatch.undo()
    images_module._MEMORY.clear()
    character = root / "images_background/Latin/character01"
    (character / "0001_01.png").rename(character / "0001_99.png")
    omniglot.load_omniglot(root, cache_dir=cache)
    assert len(list(cache.glob("omniglot-*.npz"))) == 2


def test_default_cache_dir_is_fastmaml_cache(root, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMAML_CACHE", str(tmp_path / "env_cache"))
    omniglot.load_omniglot(root)
    assert len(list((tmp_path / "env_cache").glob("omniglot-version1-size28-*.npz"))) == 1


def test_corrupt_image_error_names_the_file(root, tmp_path):
    bad = root / "images_evaluation/Tifinagh/character02/0002_03.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot read image .*character02/0002_03\.png .*replace or delete"):
        omniglot.load_omniglot(root, cache_dir=tmp_path / "cache")


def test_wrong_root_names_the_layout_and_the_official_zips(tmp_path):
    official = "images_background.zip and images_evaluation.zip from github.com/brendenlake/omniglot"
    with pytest.raises(FileNotFoundError, match=official):
        omniglot.load_omniglot(tmp_path, cache_dir=tmp_path / "cache")
    (tmp_path / "images_background.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="found images_background.zip there: unzip it"):
        omniglot.characters(tmp_path)


def test_splits_are_disjoint_with_the_documented_sizes(monkeypatch):
    names = [f"images_background/A/character{i:02d}" for i in range(12)]
    names += [f"images_evaluation/B/character{i:02d}" for i in range(8)]
    monkeypatch.setattr(omniglot, "MAML_SPLIT", (12, 3))
    monkeypatch.setattr(omniglot, "LAKE_VAL_CLASSES", 2)
    maml = omniglot.splits(names, "maml")
    assert [len(maml[s]) for s in ("train", "val", "test")] == [12, 3, 5]
    assert len(set(torch.cat(list(maml.values())).tolist())) == 20
    lake = omniglot.splits(names, "lake")
    assert [len(lake[s]) for s in ("train", "val", "test")] == [10, 2, 8]
    assert lake["test"].tolist() == list(range(12, 20)) and max(lake["val"]) < 12
    with pytest.raises(ValueError, match="split_scheme='paper' is not one of"):
        omniglot.splits(names, "paper")
    monkeypatch.setattr(omniglot, "MAML_SPLIT", (1200, 100))
    with pytest.raises(ValueError, match="needs more than 1300 characters but there are 20"):
        omniglot.splits(names, "maml")


def test_entry_point_shares_one_decoded_tensor_across_splits(root, tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot, "LAKE_VAL_CLASSES", 1)
    common = dict(ways=2, shots=1, query_shots=2, cache_dir=tmp_path / "cache", split_scheme="lake")
    train = episodic_tasks("omniglot", root, "train", rotations=True, **common)
    val = episodic_tasks("omniglot", root, "val", rotations=True, **common)
    test = episodic_tasks("omniglot", root, "test", **common)
    assert train.images is test.images is val.images
    assert (train.num_classes, val.num_classes, test.num_classes) == (4 * 4, 4 * 1, 2)
    assert (train.channels, train.image_size) == (1, 28)
    batch = test.sample_tasks(3, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (3, 2, 1, 28, 28) and batch.query_y.shape == (3, 4)
    with pytest.raises(ValueError, match="ways=3 but the split has 2 classes"):
        episodic_tasks("omniglot", root, "test", **{**common, "ways": 3})


@pytest.mark.skipif(not REAL.is_dir(), reason="the real Omniglot is not beside the clone (../shared/data/omniglot)")
def test_real_omniglot_images_and_split_sizes():
    chars = omniglot.characters(REAL)
    assert len(chars) == 1623
    for _, folder in (chars[0], chars[1000]):
        path = sorted(folder.glob("*.png"))[0]
        x = omniglot.load_image(path)
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert x.min() == 0.0 and x.max() <= 1.0 and 0.02 < x.mean() < 0.4, "strokes high on a dark background"
        assert omniglot.load_image(path, image_size=105).unique().tolist() == [0.0, 1.0]
    names = [name for name, _ in chars]
    maml, lake = omniglot.splits(names, "maml"), omniglot.splits(names, "lake")
    assert [len(maml[s]) for s in ("train", "val", "test")] == [1200, 100, 323]
    assert [len(lake[s]) for s in ("train", "val", "test")] == [864, 100, 659]
    # Pinned: the seeded maml split must not change between versions (it decides what is meta-test).
    assert [names[i] for i in maml["val"][:2].tolist()] == [
        "images_background/Alphabet_of_the_Magi/character10",
        "images_background/Alphabet_of_the_Magi/character17",
    ]


def test_process_pool_decodes_the_same_and_reports_corrupt_files(root, tmp_path, monkeypatch):
    serial, _, _ = omniglot.load_omniglot(root, cache_dir=tmp_path / "serial", workers=1)
    images_module._MEMORY.clear()
    monkeypatch.setattr(images_module, "POOL_MIN_FILES", 1)
    pooled, _, _ = omniglot.load_omniglot(root, cache_dir=tmp_path / "pooled", workers=2)
    assert torch.equal(serial, pooled)
    images_module._MEMORY.clear()
    (root / "images_background/Greek/character02/0002_04.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match=r"cannot read image .*Greek/character02/0002_04\.png"):
        omniglot.load_omniglot(root, cache_dir=tmp_path / "third", workers=2)
