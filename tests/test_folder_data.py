"""Streaming image folders (qlearn.folder_data): layout checks, transforms, seeded augmentation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from qlearn.data import load_dataset
from qlearn.folder_data import (
    FolderData,
    FolderDataset,
    load_folder_data,
    make_color_folder,
    random_resized_crop_box,
    scan_folder,
)


def make_folder(root: Path, n_train: int = 6, n_val: int = 3) -> Path:
    """root/{train,val}/class0..2/<iii>.png: noisy 20x24 images around one colour per class."""
    return make_color_folder(root, n_train, n_val, classes=3, size=(20, 24))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("images"))


def test_scan_and_load(folder):
    samples, classes = scan_folder(folder, "train")
    assert classes == ("class0", "class1", "class2") and len(samples) == 18
    assert [label for _, label in samples] == [0] * 6 + [1] * 6 + [2] * 6
    data = load_dataset("folder", root=folder, input_size=16, seed=0)
    assert isinstance(data, FolderData) and data.n_train == 18 and data.num_classes == 3
    assert data.x_test.shape == (9, 3, 16, 16) and data.x_test.dtype == torch.float32
    assert 0.0 <= float(data.x_test.min()) and float(data.x_test.max()) <= 1.0
    assert sorted(data.y_test.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # every val image, shuffled
    assert data.x_train.shape[0] == 18  # calibration images (fewer than calib_images=512 exist)
    sub = data.subset(5, 4)
    assert sub.n_train == 5 and sub.x_test.shape[0] == 4 and isinstance(sub, FolderData)


def test_limit_per_class(folder):
    data = load_folder_data(folder, 16, limit_per_class=2)
    assert data.n_train == 6 and data.x_test.shape[0] == 6
    with pytest.raises(ValueError, match="limit_per_class"):
        load_dataset("digits", limit_per_class=2)
    with pytest.raises(ValueError, match="limit_per_class"):
        load_folder_data(folder, 16, limit_per_class=0)


def test_eval_transform_is_resize_then_centre_crop(tmp_path):
    # a 16x16 image and input_size 14: the shorter side goes to round(14 / 0.875) = 16 (no resize),
    # then the centre 14x14 crop: exactly pixels [1:15, 1:15] / 255
    a = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.png")
    ds = FolderDataset([(str(tmp_path / "x.png"), 0)], ("c",), 14, train=False)
    x, y = ds[0]
    expected = torch.from_numpy(a[1:15, 1:15].transpose(2, 0, 1).astype(np.float32) / 255.0)
    assert y == 0 and torch.equal(x, expected)


def test_train_transform_constant_image_and_crop_box(tmp_path):
    Image.fromarray(np.full((30, 40, 3), (10, 128, 250), np.uint8)).save(tmp_path / "c.png")
    ds = FolderDataset([(str(tmp_path / "c.png"), 2)], ("a", "b", "c"), 12, train=True, seed=3)
    x, y = ds[0]
    assert x.shape == (3, 12, 12) and y == 2
    # resampling and flipping a constant image leaves it constant: colour / 255 everywhere
    assert torch.allclose(x, torch.tensor([10, 128, 250]).float().div(255).reshape(3, 1, 1).expand(3, 12, 12))
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, right, bottom = random_resized_crop_box(40, 30, gen)
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        assert 0.08 * 1200 * 0.9 <= w * h <= 1200 and 0.7 <= w / h <= 1.4


def test_augmentation_is_seeded_by_sample_and_epoch_not_by_workers(folder):
    samples, classes = scan_folder(folder, "train")
    ds = FolderDataset(samples, classes, 16, train=True, seed=5)
    ds.set_epoch(1)
    one = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=0)])
    two = torch.cat([x for x, _ in DataLoader(ds, batch_size=4, num_workers=2)])
    assert torch.equal(one, two)  # the same crops with 0 or 2 worker processes
    ds.set_epoch(2)
    assert not torch.equal(one, torch.stack([ds[i][0] for i in range(len(ds))]))  # a new epoch, new crops


def test_bad_folders_are_clear_errors(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="train"):
        load_folder_data(tmp_path, 16)  # no train/ folder
    (tmp_path / "train").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_folder_data(tmp_path, 16)
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_folder_data(tmp_path, 16)
    # class folders of train and val differ: refused, naming them
    bad = make_folder(tmp_path / "mislabelled", 2, 1)
    (bad / "val" / "class2").rename(bad / "val" / "class9")
    with pytest.raises(ValueError, match=r"different class folders.*class2.*class9"):
        load_folder_data(bad, 16)
    # an unreadable image names the file
    broken = make_folder(tmp_path / "broken", 2, 1)
    (broken / "val" / "class1" / "000.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*000\.png"):
        load_folder_data(broken, 16)
    with pytest.raises(FileNotFoundError):
        load_dataset("folder", root=tmp_path / "missing")
    with pytest.raises(TypeError):
        load_folder_data(3, 16)
