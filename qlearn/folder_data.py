"""Images streamed from a local folder in ImageNet's layout (``--dataset folder --data-dir DIR``).

Layout (the one ImageNet's train/val folders use after the usual val re-sorting)::

    DIR/train/<class>/*.{jpg,jpeg,png}
    DIR/val/<class>/*.{jpg,jpeg,png}

The class names are the sub-folder names, sorted; train and val must have the same class folders.
Images are decoded with Pillow one at a time by a ``torch.utils.data.Dataset`` (so a ``DataLoader``'s
worker processes decode in parallel), never all held in memory; no torchvision is needed.

Transforms (the standard ImageNet recipe, scaled to the model's ``input_size``):

* train: random resized crop (area 8 %-100 % of the image, aspect ratio 3/4..4/3), resized
  bilinearly to input_size x input_size, then a horizontal flip with probability 1/2;
* eval:  resize the shorter side to round(input_size / 0.875) (224 -> 256), centre crop input_size.

Both give (3, input_size, input_size) float32 in [0, 1]: pixel / 255. That *is* the normalisation
here: the integer engine's input is uint8 with scale 1/255 and zero point 0 (``QATConfig.input_range``),
and a per-channel mean/std normalisation is an affine map the first convolution can absorb.

Randomness: the crop and flip of training image ``i`` in epoch ``e`` come from a generator seeded with
(seed, epoch, i) -- not from a worker's global state -- so a run is the same for any number of worker
processes and any number of training processes. Call ``set_epoch(e)`` before each epoch (with the
DataLoader's default ``persistent_workers=False`` the workers receive the updated dataset each epoch).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qlearn._checks import check_bool, check_int, check_seed
from qlearn.image_data import ImageData

__all__ = ["IMAGE_EXTENSIONS", "FolderDataset", "FolderData", "scan_folder", "load_folder_data", "materialize",
           "make_color_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
EVAL_CROP_FRACTION = 0.875  # 224 / 256: the eval resize is input_size / 0.875 before the centre crop
CROP_SCALE = (0.08, 1.0)  # random resized crop: fraction of the image area
CROP_RATIO = (3 / 4, 4 / 3)  # and aspect ratio (log-uniform)


def _classes(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"{split_dir} does not exist: --dataset folder needs DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg"
        )
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{split_dir} holds no class folders: put each class's images in {split_dir}/<class>/")
    return classes


def scan_folder(root: str | Path, split: str, *, limit_per_class: int | None = None) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """The (file, label) list of ``root/split`` and the class names, checked.

    Files are sorted by class then name; ``limit_per_class`` keeps the first k of each class.
    Raises FileNotFoundError (no such folder) or ValueError (no class folders, a class with no images).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    limit = check_int(limit_per_class, "limit_per_class", minimum=1, allow_none=True)
    folder = Path(root) / split
    classes = _classes(folder)
    samples: list[tuple[str, int]] = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        samples += [(str(p), label) for p in files[:limit]]
    return samples, tuple(classes)


def _load_rgb(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # decodes now: errors surface here, not later
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def _to_tensor(img: Any) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 in [0, 1] (uint8 / 255)."""
    a = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32) / 255.0)


def random_resized_crop_box(width: int, height: int, gen: torch.Generator) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) crop: area in CROP_SCALE of the image, log-uniform ratio in CROP_RATIO.

    Ten tries as in the usual recipe, then the centre crop of the image's own aspect ratio (clamped).
    """
    area = width * height
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (CROP_SCALE[0] + u[0] * (CROP_SCALE[1] - CROP_SCALE[0]))
        ratio = math.exp(log_lo + u[1] * (log_hi - log_lo))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif ratio > CROP_RATIO[1]:
        w, h = int(round(height * CROP_RATIO[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


class FolderDataset(Dataset):
    """One split of an image folder: item i -> ((3, size, size) float32 in [0, 1], int64 label).

    ``train=True``: random resized crop + horizontal flip, seeded by (seed, epoch, i); ``set_epoch``.
    ``train=False``: resize + centre crop (deterministic).
    """

    def __init__(self, samples: list[tuple[str, int]], classes: tuple[str, ...], input_size: int, *,
                 train: bool, seed: int = 0) -> None:
        self.samples = list(samples)
        self.classes = tuple(classes)
        self.input_size = check_int(input_size, "input_size", minimum=4, maximum=512)
        self.train = check_bool(train, "train")
        self.seed = check_seed(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.samples[index]
        img = _load_rgb(path)
        size = self.input_size
        if self.train:
            # seed < 2^32, epoch and index < 2^20 in practice: the product stays far below 2^63
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + int(index))
            box = random_resized_crop_box(img.width, img.height, gen)
            img = img.resize((size, size), Image.BILINEAR, box=box)
            if float(torch.rand(1, generator=gen)) < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            short = max(size, int(round(size / EVAL_CROP_FRACTION)))
            scale = short / min(img.width, img.height)
            w, h = max(size, int(round(img.width * scale))), max(size, int(round(img.height * scale)))
            img = img.resize((w, h), Image.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
        return _to_tensor(img), label


def materialize(dataset: Dataset, indices: list[int] | None = None, *, workers: int = 0,
                batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``dataset[i]`` for ``indices`` (default all) into (N, C, H, W) float32 and (N,) int64."""
    workers = check_int(workers, "workers", minimum=0, maximum=256)
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, indices)
    xs, ys = [], []
    for x, y in DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=workers):
        xs.append(x)
        ys.append(torch.as_tensor(y, dtype=torch.int64))
    return torch.cat(xs).contiguous(), torch.cat(ys)


class FolderData(ImageData):
    """``ImageData`` for a streamed folder: ``train_set`` holds the whole training split, read lazily.

    x_test, y_test   : the val split at the eval transform, decoded once, in a seeded shuffled order
    x_train, y_train : only the first ``calib_images`` training images (seeded shuffle) at the eval
                       transform -- what post-training calibration uses; training streams ``train_set``
    """

    train_set: FolderDataset

    def __init__(self, name: str, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                 y_test: torch.Tensor, classes: tuple[str, ...], train_set: FolderDataset) -> None:
        super().__init__(name, x_train, y_train, x_test, y_test, classes)
        object.__setattr__(self, "train_set", train_set)

    @property
    def n_train(self) -> int:
        return len(self.train_set)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> FolderData:
        """The first ``n_train`` streamed training images (of a seeded shuffle) and ``n_test`` val images."""
        base = ImageData.subset(self, None, n_test)
        train_set = self.train_set
        if n_train is not None:
            check_int(n_train, "n_train", minimum=1)
            order = _shuffled(len(train_set), train_set.seed)[:n_train]
            keep = sorted(order)
            train_set = FolderDataset([train_set.samples[i] for i in keep], train_set.classes, train_set.input_size,
                                      train=True, seed=train_set.seed)
        return FolderData(self.name, self.x_train, self.y_train, base.x_test, base.y_test, self.classes, train_set)

    def __repr__(self) -> str:
        return (f"FolderData({self.name!r}: train {len(self.train_set)} images streamed, test "
                f"{tuple(self.x_test.shape)}, {self.num_classes} classes)")


def _shuffled(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()


def load_folder_data(root: str | Path, input_size: int = 32, *, seed: int = 0, limit_per_class: int | None = None,
                     calib_images: int = 512, workers: int = 0) -> FolderData:
    """Scan ``root`` (ImageNet layout, see the module docstring), check it, and return ``FolderData``.

    The val split (and ``calib_images`` training images for calibration) are decoded here, in a
    shuffled order fixed by ``seed``; the training split is streamed by ``train_set`` while training.
    Errors: the folder or a split is missing, a split has no class folders or a class no images
    (FileNotFoundError / ValueError naming the folder); train and val have different class folders
    (ValueError listing them); an image Pillow cannot read (ValueError naming the file).
    """
    if not isinstance(root, (str, Path)):
        raise TypeError(f"data_dir must be a folder path, got {type(root).__name__}")
    folder = Path(root)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a folder")
    seed = check_seed(seed)
    calib_images = check_int(calib_images, "calib_images", minimum=1)
    train_samples, classes = scan_folder(folder, "train", limit_per_class=limit_per_class)
    val_samples, val_classes = scan_folder(folder, "val", limit_per_class=limit_per_class)
    if classes != val_classes:
        only_train = sorted(set(classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(classes))
        raise ValueError(
            f"{folder}: train and val have different class folders (only in train: {only_train[:5]}, only in val: "
            f"{only_val[:5]}); the labels would not match: give both splits the same class folders"
        )
    train_set = FolderDataset(train_samples, classes, input_size, train=True, seed=seed)
    val_set = FolderDataset(val_samples, classes, input_size, train=False, seed=seed)
    calib_set = FolderDataset(train_samples, classes, input_size, train=False, seed=seed)
    x_test, y_test = materialize(val_set, _shuffled(len(val_set), seed + 1), workers=workers)
    x_cal, y_cal = materialize(calib_set, _shuffled(len(calib_set), seed)[:calib_images], workers=workers)
    return FolderData("folder", x_cal, y_cal, x_test, y_test, classes, train_set)



#: One colour per class of ``make_color_folder`` (RGB); noisy images around it are easy to tell apart.
COLORS = ((220, 40, 40), (40, 200, 60), (50, 60, 230), (230, 220, 40))


def make_color_folder(root: str | Path, per_class: int, val_per_class: int, *, classes: int = 3,
                      size: int | tuple[int, int] = 32, noise: float = 30.0, seed: int = 0) -> Path:
    """A small synthetic folder in ImageNet's layout, to try ``--dataset folder`` (and to test it):
    root/{train,val}/class<k>/<iii>.png, noisy (H, W, 3) uint8 images around one colour per class."""
    from PIL import Image

    classes = check_int(classes, "classes", minimum=1, maximum=len(COLORS))
    counts = (("train", check_int(per_class, "per_class", minimum=1)),
              ("val", check_int(val_per_class, "val_per_class", minimum=1)))
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(check_seed(seed))
    root = Path(root)
    for split, count in counts:
        for k, color in enumerate(COLORS[:classes]):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                a = np.clip(rng.normal(color, noise, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(folder / f"{i:03d}.png")
    return root
