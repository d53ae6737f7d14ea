"""Image data for the MobileNet pipeline: offline, deterministic, scaled to [0, 1].

The default is scikit-learn's bundled *digits* (1,797 8x8 grey images of handwritten digits, 16
grey levels), which ships inside the package: nothing is downloaded. It is split once with a fixed
stratified split (same seed, same images in the same order) and upsampled bilinearly to the model's
input size. Bilinear interpolation is a convex combination of pixels, so [0, 1] stays [0, 1] and the
input quantizes to uint8 with scale 1/255 and zero point 0.

MNIST (the four IDX files) and CIFAR-10 (the "python version" batches) can be read from a local
folder. CIFAR-10's batches are Python pickles; unpickling can run arbitrary code, so they are read
with a restricted unpickler that only rebuilds numpy arrays and builtin containers and refuses
everything else. A missing or corrupt file raises an error that names the file and what was wrong.
Every loader returns an ``ImageData`` (``qlearn.image_data``, re-exported here); ``load_dataset`` also
dispatches to the streamed image folder of ``qlearn.folder_data``.
"""
from __future__ import annotations

import gzip
import io
import math
import numbers
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qlearn._checks import check_int, check_seed
from qlearn.folder_data import load_folder_data
from qlearn.image_data import ImageData

__all__ = [
    "ImageData",
    "load_digits_data",
    "load_mnist",
    "load_cifar10",
    "load_dataset",
    "read_idx",
    "read_cifar_batch",
    "upsample",
    "DATASETS",
]

DATASETS = ("digits", "mnist", "cifar10", "folder")
DIGITS_TEST_FRACTION = 0.3
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _check_size(input_size: Any) -> int | None:
    """An image side in pixels, 4..512, or None (keep the stored size)."""
    return check_int(input_size, "input_size", minimum=4, maximum=512, allow_none=True)


def upsample(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize (N, C, H, W) float images in [0, 1] to (N, C, size, size) bilinearly (no change if None)."""
    size = _check_size(size)
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a (N, C, H, W) tensor")
    if size is None or (images.shape[-1] == size and images.shape[-2] == size):
        return images.contiguous()
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return out.clamp_(0.0, 1.0).contiguous()  # convex combination: the clamp only trims rounding


def load_digits_data(input_size: int = 32, *, seed: int = 0, test_fraction: float = DIGITS_TEST_FRACTION) -> ImageData:
    """scikit-learn's bundled digits, stratified split (fixed ``seed``), scaled to [0, 1], upsampled.

    8x8 images with grey levels 0..16 -> divided by 16 -> (N, 1, input_size, input_size) float32.
    With the defaults: 1,257 training and 540 test images, every class in the same proportion in both.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    size = _check_size(input_size)
    seed = check_seed(seed)  # [0, 2^32 - 1]: scikit-learn's random_state range
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0.05 <= float(test_fraction) <= 0.95:
        raise ValueError(f"test_fraction must be between 0.05 and 0.95, got {test_fraction!r}")
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, test_size=float(test_fraction), stratify=labels, random_state=int(seed))
    x = torch.from_numpy(images)[:, None]  # (N, 1, 8, 8)
    return ImageData(
        "digits",
        upsample(x[tr], size),
        torch.from_numpy(labels[tr]),
        upsample(x[te], size),
        torch.from_numpy(labels[te]),
        tuple(str(i) for i in range(10)),
    )


# ----------------------------------------------------------------------------- MNIST (IDX files)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path} is corrupt: not a valid gzip file ({exc})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (MNIST's format), optionally gzip-compressed.

    Header: two zero bytes, a type code (0x08 = uint8 ...), the number of dimensions d, then d
    big-endian uint32 sizes; then the data, row-major. Any mismatch raises ValueError.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (it must start with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path} has unknown IDX type code 0x{code:02x}")
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is corrupt: header too short for {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(shape) * dtype.itemsize  # Python ints: exact (an int64 product can wrap around)
    body = raw[4 + 4 * ndim :]
    if len(body) != expected:
        raise ValueError(
            f"{path} is corrupt or truncated: header says shape {shape} ({expected} bytes) "
            f"but the file holds {len(body)} bytes of data"
        )
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        f"{what}: none of {', '.join(names)} (optionally .gz) found in {folder}. "
        "qlearn never downloads data; put the files there or use the bundled 'digits' dataset."
    )


def _check_folder(root: Any, what: str) -> Path:
    if root is None:
        raise ValueError(f"{what} needs a folder: pass --data-dir / root=<folder holding the files>")
    if not isinstance(root, (str, Path)):
        raise TypeError(f"root must be a folder path, got {type(root).__name__}")
    folder = Path(root)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{what} data_dir {folder} is a file, not a folder: pass the folder that holds the files")
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} data_dir {folder} does not exist")
    return folder


def load_mnist(root: str | Path, input_size: int | None = None) -> ImageData:
    """MNIST from the four IDX files in ``root`` (official 60,000/10,000 split), scaled to [0, 1].

    Files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    t10k-labels-idx1-ubyte (each optionally .gz; the ``train-images.idx3-ubyte`` spelling works too).
    Images are (N, 1, 28, 28), resized to ``input_size`` when given.
    """
    folder = _check_folder(root, "MNIST")
    size = _check_size(input_size)

    def split(prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        ipath = _find(folder, (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"), f"MNIST {prefix} images")
        lpath = _find(folder, (f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"), f"MNIST {prefix} labels")
        images, labels = read_idx(ipath), read_idx(lpath)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{ipath} must hold uint8 images (N, H, W), got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{lpath} must hold one label per image: {labels.shape} labels for {images.shape[0]} images")
        if labels.size and labels.max() > 9:
            raise ValueError(f"{lpath} is corrupt: MNIST labels are 0..9, found {int(labels.max())}")
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]  # (N, 1, 28, 28) in [0, 1]
        return upsample(x, size), torch.from_numpy(labels.astype(np.int64))

    xtr, ytr = split("train")
    xte, yte = split("t10k")
    return ImageData("mnist", xtr, ytr, xte, yte, tuple(str(i) for i in range(10)))


# ----------------------------------------------------------------------------- CIFAR-10 (pickles)
class _Refused(pickle.UnpicklingError):
    """A pickle asked for something other than plain data and numpy arrays."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, str/bytes, numbers and numpy arrays -- and nothing else.

    ``find_class`` is the only way a pickle can reach Python code; everything outside this list is
    refused, so a malicious file cannot run a function.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 pickles of arrays
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name}: only numpy arrays and plain data are allowed")


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> (images (N, 3, 32, 32) uint8, labels (N,) int64), safely.

    The batch is a pickled dict with b'data' ((N, 3072) uint8, rows of R, G, B planes) and b'labels'.
    """
    path = Path(path)
    raw = _read_bytes(path)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise ValueError(f"{path} is not a safe CIFAR-10 batch: {exc}") from None
    except Exception as exc:  # truncated or garbage bytes raise many kinds of error
        raise ValueError(f"{path} is corrupt: could not read it as a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is corrupt: a CIFAR-10 batch is a dict, got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise ValueError(f"{path} is corrupt: a CIFAR-10 batch needs 'data' and 'labels', found {sorted(map(str, obj))}")
    data = obj["data"]
    labels = np.asarray(obj["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise ValueError(f"{path} is corrupt: 'data' must be a (N, 3072) uint8 array, got {type(data).__name__} {shape}")
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path} is corrupt: need one integer label per image, got labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path} is corrupt: CIFAR-10 labels are 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(root: str | Path, input_size: int | None = None) -> ImageData:
    """CIFAR-10 from ``root`` (data_batch_1..5 and test_batch, or the cifar-10-batches-py folder in it).

    Images (N, 3, 32, 32) scaled to [0, 1], resized to ``input_size`` when given.
    """
    folder = _check_folder(root, "CIFAR-10")
    if not (folder / "test_batch").exists() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"

    def load(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_cifar_batch(_find(folder, (n,), f"CIFAR-10 {n}")) for n in names]
        x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0  # (N, 3, 32, 32) in [0, 1]
        y = np.concatenate([p[1] for p in parts])
        return upsample(torch.from_numpy(x), _check_size(input_size)), torch.from_numpy(y)

    xtr, ytr = load([f"data_batch_{i}" for i in range(1, 6)])
    xte, yte = load(["test_batch"])
    return ImageData("cifar10", xtr, ytr, xte, yte, CIFAR10_CLASSES)


def load_dataset(name: str = "digits", *, root: str | Path | None = None, input_size: int = 32, seed: int = 0,
                 limit_per_class: int | None = None, workers: int = 0) -> ImageData:
    """Load ``name`` in {'digits', 'mnist', 'cifar10', 'folder'}; digits needs no ``root`` (it is bundled).

    'folder' streams an ImageNet-layout folder (``qlearn.folder_data.load_folder_data``; returns a
    ``FolderData`` whose ``train_set`` is read from disk while training); ``limit_per_class`` keeps the
    first k images of each class and ``workers`` decodes with that many processes (folder only).
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a string, got {name!r}")
    if name == "folder":
        return load_folder_data(_check_folder(root, "image folder"), input_size, seed=seed,
                                limit_per_class=limit_per_class, workers=workers)
    if limit_per_class is not None:
        raise ValueError(f"limit_per_class (--limit-per-class) applies to the 'folder' dataset, not {name!r}")
    if name == "digits":
        return load_digits_data(input_size, seed=seed)
    if name == "mnist":
        return load_mnist(_check_folder(root, "MNIST"), input_size)
    if name == "cifar10":
        return load_cifar10(_check_folder(root, "CIFAR-10"), input_size)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
