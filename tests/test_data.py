"""qlearn.data: bundled digits, IDX and CIFAR parsing (safely), and clear errors for bad data."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from qlearn.data import (
    ImageData,
    load_cifar10,
    load_dataset,
    load_digits_data,
    load_mnist,
    read_cifar_batch,
    read_idx,
    upsample,
)


# ----------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_digits_data(32)


def test_digits_shapes_range_and_counts(digits):
    assert digits.x_train.shape == (1257, 1, 32, 32) and digits.x_test.shape == (540, 1, 32, 32)
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64
    for x in (digits.x_train, digits.x_test):
        assert x.min() >= 0 and x.max() <= 1
    assert digits.num_classes == 10 and digits.in_channels == 1 and digits.input_size == 32
    # every image used exactly once: per-class totals equal the bundled dataset's
    all_labels = torch.cat([digits.y_train, digits.y_test]).numpy()
    np.testing.assert_array_equal(np.bincount(all_labels), np.bincount(load_digits().target))


def test_digits_split_is_stratified(digits):
    total = np.bincount(load_digits().target)
    test = np.bincount(digits.y_test.numpy(), minlength=10)
    assert np.all(np.abs(test - total * 0.3) <= 1)


def test_digits_native_size_is_the_bundled_images():
    d = load_digits_data(8)
    flat = load_digits().images.reshape(-1, 64) / 16.0
    rows = {tuple(r) for r in np.round(flat, 6)}
    assert all(tuple(r) in rows for r in np.round(d.x_test.reshape(-1, 64).double().numpy(), 6))


def test_digits_deterministic_and_seeded(digits):
    again = load_digits_data(32)
    assert torch.equal(again.x_train, digits.x_train) and torch.equal(again.y_test, digits.y_test)
    other = load_digits_data(32, seed=1)
    assert not torch.equal(other.y_test, digits.y_test)


def _bilinear_reference(img: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize written out in float64 (the align_corners=False rule)."""
    h, w = img.shape
    def coords(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    y0, y1, fy = coords(h)
    x0, x1, fx = coords(w)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bot * fy[:, None]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), n_in=st.integers(2, 10), size=st.integers(4, 40))
def test_upsample_matches_bilinear_reference_and_stays_in_unit_range(seed, n_in, size):
    img = np.random.default_rng(seed).random((n_in, n_in))
    out = upsample(torch.tensor(img, dtype=torch.float64)[None, None], size)[0, 0].numpy()
    np.testing.assert_allclose(out, _bilinear_reference(img, size), atol=1e-12)
    assert out.min() >= 0 and out.max() <= 1


def test_subset(digits):
    small = digits.subset(100, 50)
    assert small.x_train.shape[0] == 100 and small.y_test.shape[0] == 50
    assert torch.equal(small.x_train, digits.x_train[:100])
    with pytest.raises(ValueError):
        digits.subset(0)


@pytest.mark.parametrize("call,exc", [
    (lambda: load_digits_data(3), ValueError),
    (lambda: load_digits_data(32.5), TypeError),
    (lambda: load_digits_data(32, seed="0"), TypeError),
    (lambda: load_digits_data(32, test_fraction=1.0), ValueError),
    (lambda: upsample(torch.zeros(2, 8, 8), 16), ValueError),
    (lambda: load_dataset("imagenet"), ValueError),
    (lambda: load_dataset(3), TypeError),
    (lambda: load_dataset("mnist"), ValueError),  # needs a folder
    (lambda: load_dataset("cifar10", root=123), TypeError),
])
def test_bad_arguments(call, exc):
    with pytest.raises(exc):
        call()


# ----------------------------------------------------------------------------- MNIST / IDX
def _write_idx(path: Path, arr: np.ndarray, code: int = 0x08, compress: bool = False) -> None:
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _fake_mnist(folder: Path, n_train: int = 20, n_test: int = 10, compress: bool = False) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        _write_idx(folder / (name + (".gz" if compress else "")), arr, compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_round_trip(tmp_path, compress):
    arrays = _fake_mnist(tmp_path, compress=compress)
    d = load_mnist(tmp_path)
    assert d.x_train.shape == (20, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    np.testing.assert_allclose(d.x_train[:, 0].numpy(), arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    resized = load_dataset("mnist", root=tmp_path, input_size=32)
    assert resized.x_train.shape == (20, 1, 32, 32) and resized.x_train.max() <= 1


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    dtype=st.sampled_from([(0x08, np.uint8), (0x09, np.int8), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")]),
    seed=st.integers(0, 100),
)
def test_read_idx_round_trip(tmp_path_factory, shape, dtype, seed):
    code, dt = dtype
    arr = (np.random.default_rng(seed).random(shape) * 100 - 50).astype(dt)
    path = tmp_path_factory.mktemp("idx") / "a.idx"
    _write_idx(path, arr, code)
    out = read_idx(path)
    np.testing.assert_array_equal(out, arr)
    assert out.shape == tuple(shape) and out.dtype.isnative


def test_mnist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="train-images"):
        load_mnist(tmp_path)  # empty folder
    _fake_mnist(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    good = img.read_bytes()
    img.write_bytes(good[:-7])
    with pytest.raises(ValueError, match="truncated"):
        load_mnist(tmp_path)
    img.write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="not an IDX"):
        load_mnist(tmp_path)
    img.write_bytes(good[:2] + b"\x42" + good[3:])
    with pytest.raises(ValueError, match="type code"):
        load_mnist(tmp_path)
    img.write_bytes(good)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(20, 12, np.uint8))
    with pytest.raises(ValueError, match="0..9"):
        load_mnist(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(ValueError, match="one label per image"):
        load_mnist(tmp_path)
    (tmp_path / "x.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "x.gz")


# ----------------------------------------------------------------------------- CIFAR-10
def _cifar_batch(n: int, seed: int, protocol: int) -> tuple[bytes, np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    obj = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"a.png"] * n}
    return pickle.dumps(obj, protocol=protocol), data, labels


def _fake_cifar(folder: Path, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    train = []
    for i in range(1, 6):
        raw, data, labels = _cifar_batch(4, i, protocol)
        (folder / f"data_batch_{i}").write_bytes(raw)
        train.append(data)
    raw, data, labels = _cifar_batch(3, 99, protocol)
    (folder / "test_batch").write_bytes(raw)
    return np.concatenate(train), np.array(labels)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_round_trip(tmp_path, protocol):
    train, test_labels = _fake_cifar(tmp_path, protocol)
    d = load_cifar10(tmp_path)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32) and d.in_channels == 3
    # the documented layout: 1024 red, then 1024 green, then 1024 blue values, row-major
    np.testing.assert_allclose(d.x_train[5, 1].numpy(), train[5, 1024:2048].reshape(32, 32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d.y_test.numpy(), test_labels)
    assert d.classes[0] == "airplane"
    nested = tmp_path / "outer"
    (nested / "cifar-10-batches-py").mkdir(parents=True)
    _fake_cifar(nested / "cifar-10-batches-py")
    assert load_dataset("cifar10", root=nested, input_size=16).x_test.shape == (3, 3, 16, 16)


class _Evil:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):  # what a malicious pickle does: call a function on load
        return (os.mkdir, (self.target,))


def test_cifar_refuses_code_in_pickle(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(str(target)), b"labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match="not a safe CIFAR-10 batch"):
        read_cifar_batch(path)
    assert not target.exists()
    pickle.loads(path.read_bytes())  # sanity: a plain unpickler does run the payload
    assert target.exists()


def test_cifar_errors(tmp_path):
    _fake_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path)
    path = tmp_path / "b"
    raw, _, _ = _cifar_batch(2, 0, 2)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="is a dict"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"labels": [1]}))
    with pytest.raises(ValueError, match="'data' and 'labels'"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}))
    with pytest.raises(ValueError, match=r"\(N, 3072\) uint8"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}))
    with pytest.raises(ValueError, match="one integer label"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}))
    with pytest.raises(ValueError, match="0..9"):
        read_cifar_batch(path)
    with pytest.raises(FileNotFoundError):
        read_cifar_batch(tmp_path / "missing")
