"""Real photographs, offline: scikit-learn's two bundled photos and a fixed set of crops of them.

scikit-learn ships two 427 x 640 RGB photos (``sklearn.datasets.load_sample_images``): ``china.jpg``
(a Chinese palace) and ``flower.jpg`` (a daisy). They are all the ImageNet-like images a learner is
guaranteed to have offline, so the ImageNet lesson calibrates and evaluates on *crops* of them:
crop 0 of each photo is the standard evaluation view (shorter side resized to 256, centre 224 x 224),
the others are random squares covering 30-100 % of the shorter side, half of them mirrored, resized
to ``size`` x ``size``. Everything is deterministic (a seeded ``numpy.random.RandomState``).

There are no ImageNet labels for these crops, so what can be measured honestly is how often a
quantized model agrees with the float model (top-1 / top-5) and how close its logits are (SQNR).
With ImageNet's validation set in a local folder, ``image_folder`` reads real labelled images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qlearn._checks import check_int, check_seed

__all__ = ["sample_photos", "sample_crops", "resize_crop", "image_folder", "PHOTO_NAMES"]

PHOTO_NAMES = ("china", "flower")  # the order of sklearn.datasets.load_sample_images().images
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def sample_photos() -> dict[str, np.ndarray]:
    """{'china': (427, 640, 3) uint8, 'flower': (427, 640, 3) uint8}, the photos bundled with scikit-learn."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    return {name: np.array(img, dtype=np.uint8) for name, img in zip(PHOTO_NAMES, images)}


def resize_crop(photo: np.ndarray, top: int, left: int, side: int, size: int, flip: bool = False) -> np.ndarray:
    """The square photo[top:top+side, left:left+side] resized to (3, size, size) uint8 (bilinear,
    antialiased, rounded to integer pixels), mirrored left-right when ``flip``."""
    patch = torch.from_numpy(np.ascontiguousarray(photo[top : top + side, left : left + side])).permute(2, 0, 1)
    x = patch[None].float()  # (1, 3, side, side) float32 in [0, 255]
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)[0]  # (3, size, size) uint8
    return (x.flip(-1) if flip else x).numpy()


def _centre_view(photo: np.ndarray, size: int) -> np.ndarray:
    """The usual ImageNet evaluation view: shorter side to size * 256/224, then the centre size x size."""
    h, w = photo.shape[:2]
    x = torch.from_numpy(np.ascontiguousarray(photo)).permute(2, 0, 1)[None].float()
    s = round(size * 256 / 224) / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True, align_corners=False)
    hh, ww = x.shape[2:]
    t, l = (hh - size) // 2, (ww - size) // 2
    return x[0, :, t : t + size, l : l + size].round().clamp(0, 255).to(torch.uint8).numpy()


def sample_crops(n: int = 50, size: int = 224, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """``n`` crops of the two photos, alternating china / flower: (n, 3, size, size) uint8 and one
    dict per crop (photo, top, left, side, flip; side None for the centre views).

    Crops 0 and 1 are the centre evaluation views; the rest are seeded random squares of 30-100 % of
    the shorter side, each mirrored with probability 1/2. The same (n, size, seed) always gives the
    same pixels on every machine (integer geometry, float32 resize, rounding to uint8).
    """
    n = check_int(n, "n", minimum=1, maximum=10_000)
    size = check_int(size, "size", minimum=32, maximum=1024)
    seed = check_seed(seed)
    photos = sample_photos()
    rng = np.random.RandomState(seed)
    crops, info = [], []
    for i in range(n):
        name = PHOTO_NAMES[i % 2]
        photo = photos[name]
        if i < 2:
            crops.append(_centre_view(photo, size))
            info.append(dict(photo=name, top=None, left=None, side=None, flip=False))
            continue
        h, w = photo.shape[:2]
        side = int(rng.randint(int(0.3 * min(h, w)), min(h, w) + 1))
        top, left = int(rng.randint(0, h - side + 1)), int(rng.randint(0, w - side + 1))
        flip = bool(rng.rand() < 0.5)
        crops.append(resize_crop(photo, top, left, side, size, flip))
        info.append(dict(photo=name, top=top, left=left, side=side, flip=flip))
    return np.stack(crops), info


def image_folder(data_dir: Any, wnids: list[str], class_names: list[str] | None = None, *, size: int = 224,
                 limit: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Labelled images from a local folder DIR/<wnid or class name>/*.JPEG (ImageNet's validation layout).

    Returns (N, 3, size, size) uint8 centre views (``_centre_view``), (N,) int64 labels (indices into
    ``wnids``) and the file paths. A folder named after neither a wnid nor a class name raises
    ValueError; ``limit`` keeps the first ``limit`` files in sorted order. Needs Pillow to decode.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir {str(root)!r} is not a folder (expected DIR/<wnid>/*.JPEG)")
    limit = check_int(limit, "limit", minimum=1, allow_none=True)
    index = {w: i for i, w in enumerate(wnids)}
    if class_names is not None:
        index.update({c: i for i, c in enumerate(class_names) if c not in index})
    files: list[tuple[Path, int]] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if sub.name not in index:
            raise ValueError(f"folder {sub.name!r} in {str(root)!r} is neither an ImageNet wnid nor a class name")
        files += [(f, index[sub.name]) for f in sorted(sub.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"no images (*.JPEG, *.jpg, *.png) found under {str(root)!r}/<class>/")
    files = files[:limit] if limit else files
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading image files needs Pillow: pip install pillow") from None
    images = []
    for path, _ in files:
        with Image.open(path) as im:
            images.append(_centre_view(np.array(im.convert("RGB"), dtype=np.uint8), size))
    labels = np.array([lab for _, lab in files], dtype=np.int64)
    return np.stack(images), labels, [str(p) for p, _ in files]
