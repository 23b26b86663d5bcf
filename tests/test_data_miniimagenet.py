"""The mini-ImageNet reader on a generated fixture in Ravi & Larochelle's CSV format."""

import pytest
import torch

import fastmaml.data.images as images_module
from fastmaml.data import episodic_tasks, miniimagenet
from fixtures import miniimagenet_layout


pytestmark = pytest.mark.usefixtures("empty_memory_cache")


@pytest.fixture
def root(tmp_path):
    return miniimagenet_layout(tmp_path / "mini", {"train": 4, "val": 2, "test": 2}, per_class=6)


def test_load_all_splits_resized_and_labelled(root, tmp_path):
    images, labels, names, split_ids = miniimagenet.load_miniimagenet(root, image_size=16, cache_dir=tmp_path / "c")
    assert images.shape == (48, 3, 16, 16) and images.dtype == torch.uint8
    assert names == [f"n{i:08d}" for i in range(8)]
    assert {s: ids.tolist() for s, ids in split_ids.items()} == {"train": [0, 1, 2, 3], "val": [4, 5], "test": [6, 7]}
    # Each class is one plain colour (37c, 91c, 151c) mod 256; JPEG keeps a flat colour within a level or two.
    for c in range(8):
        expected = torch.tensor([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256]).view(3, 1, 1)
        assert (images[labels == c].int() - expected).abs().max() <= 3


def test_normalisation_standardises_per_channel(root, tmp_path):
    images, labels, _, _ = miniimagenet.load_miniimagenet(root, image_size=8, cache_dir=tmp_path / "c")
    x = miniimagenet.NORMALIZE(images[:2])
    mean, std = torch.tensor(miniimagenet.MEAN).view(3, 1, 1), torch.tensor(miniimagenet.STD).view(3, 1, 1)
    assert x.dtype == torch.float32
    assert torch.allclose(x, (images[:2].float() / 255 - mean) / std)


def test_entry_point_splits_share_one_cached_array(root, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    common = dict(ways=2, shots=2, query_shots=3, image_size=12, cache_dir=cache)
    train = episodic_tasks("miniimagenet", root, "train", **common)
    test = episodic_tasks("miniimagenet", root, "test", **common)
    assert train.images is test.images and (train.num_classes, test.num_classes) == (4, 2)
    assert (train.channels, train.image_size) == (3, 12)
    batch = test.sample_tasks(5, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (5, 4, 3, 12, 12) and batch.support_x.dtype == torch.float32
    # Only the test classes (6, 7) appear: their red channels are (222, 3) / 255, standardised.
    red = batch.query_x[:, :, 0, 0, 0] * miniimagenet.STD[0] + miniimagenet.MEAN[0]
    assert set((red * 255).round().int().tolist()[0]) <= {222, 221, 223, 2, 3, 4}
    images_module._MEMORY.clear()
    monkeypatch.setattr(miniimagenet, "decode", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    again = episodic_tasks("miniimagenet", root, "val", **common)
    assert torch.equal(again.images, train.images)
    with pytest.raises(ValueError, match="applies to omniglot only"):
        episodic_tasks("miniimagenet", root, "val", split_scheme="lake", **common)


def test_bad_layouts_raise_one_line_errors(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"has no images/ folder; mini-ImageNet must be laid out as ROOT/train"):
        miniimagenet.load(tmp_path / "nowhere", cache_dir=tmp_path / "c")
    (root / "val.csv").write_text("file,class\na.jpg,n1\n")
    with pytest.raises(ValueError, match="must start with the header 'filename,label'"):
        miniimagenet.load(root, cache_dir=tmp_path / "c")
    (root / "val.csv").write_text("filename,label\nn0000000000000000.jpg,n00000000\n")
    with pytest.raises(ValueError, match="class n00000000 of val.csv also appears in an earlier split"):
        miniimagenet.load(root, cache_dir=tmp_path / "c")
    (root / "val.csv").write_text("filename,label\nmissing.jpg,n00000099\n")
    with pytest.raises(FileNotFoundError, match=r"missing.jpg \(and 0 more\) listed in the CSV files is missing"):
        miniimagenet.load(root, cache_dir=tmp_path / "c")
    (root / "val.csv").write_text("filename,label\nn0000000400000000.jpg,n00000004\n")
    (root / "images" / "n0000000400000000.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cannot read image .*n0000000400000000.jpg"):
        miniimagenet.load(root, cache_dir=tmp_path / "c")
