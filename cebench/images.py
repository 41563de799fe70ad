"""Robust image reading: every stage opens images through `open_rgb`.

Grayscale, palette, CMYK, alpha and 16-bit/float images are converted to 8-bit RGB; corrupt or
truncated files raise `BadImageError` naming the file, so no DataLoader worker dies deep inside PIL.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import BadImageError, DatasetMissingError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit single channel: rescale the actual range to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0 if hi > 255 else 255.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr8 = np.clip((arr - lo) * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (0, 0, 0))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")  # L, P, CMYK, YCbCr, LAB, HSV, 1


def open_rgb(path, max_side: int = 0) -> Image.Image:
    """Read an image file as 8-bit RGB, fully decoded. Raises BadImageError on any failure.

    max_side > 0: an image whose longer side exceeds it is scaled down to exactly that (aspect kept,
    antialiased); a JPEG is decoded at the smallest DCT scale (1/2, 1/4, 1/8) still at least that
    large first (`Image.draft`), which makes large photos several times cheaper to read."""
    path = Path(path)
    if path.is_dir():
        raise BadImageError(path, "is a folder, expected an image file")
    if not path.is_file():
        raise BadImageError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                target = None
                if max_side and max(img.size) > max_side:
                    s = max_side / max(img.size)
                    target = (max(1, round(img.width * s)), max(1, round(img.height * s)))
                    if img.format == "JPEG":
                        img.draft("RGB", target)
                img.load()  # force full decode: truncated files fail here, not later
                out = _to_rgb(img)
                if target is not None and out.size != target:
                    out = out.resize(target, Image.BILINEAR)
                return out.copy()
    except BadImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImageError(path, f"image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = "truncated image" if "truncated" in str(exc).lower() else f"unreadable image ({exc})"
        raise BadImageError(path, reason) from None


@dataclass(frozen=True)
class ImageReport:
    path: str
    ok: bool
    mode: str | None
    size: tuple[int, int] | None
    problem: str | None  # None when the image is plain 8-bit RGB and decodes fully


def inspect_image(path) -> ImageReport:
    """Check one image without raising: used by `cebench data check`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                mode, size = img.mode, img.size
                img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        reason = "truncated image" if "truncated" in str(exc).lower() else f"unreadable image ({exc})"
        return ImageReport(str(path), False, None, None, reason)
    problem = None if mode == "RGB" else f"mode {mode} (converted to RGB when loaded)"
    return ImageReport(str(path), True, mode, size, problem)


def list_images(root, recursive: bool = True) -> list[Path]:
    """All image files under `root`, sorted for determinism."""
    root = Path(root)
    it = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# Every encoder in the suite takes RGB tensors normalised with the ImageNet mean/std (torchvision's
# convention), so ImageNet AlexNet weights, our context encoders and HOG share one input pipeline.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(x):
    """[B,3,H,W] or [3,H,W] float in [0,1] -> normalised tensor."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


def denormalize(x):
    """Inverse of `normalize`: back to [0,1] (not clamped)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * std + mean


def require_images(folder) -> list[Path]:
    """The images of a user's folder, or a DatasetMissingError saying what is missing where."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetMissingError(f"{folder}: image folder not found")
    paths = list_images(folder)
    if not paths:
        raise DatasetMissingError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) found in this folder")
    return paths
