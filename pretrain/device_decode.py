"""JPEG decoding and the pretraining augmentation on the device, batched.

The same images as `data.PretrainImages` (short side to `load_size`, a `crop` x `crop` crop at the
offsets drawn from (seed, epoch, index), horizontal flip), computed from the JPEG bytes by
`torchvision.io.decode_jpeg` (nvJPEG on CUDA, libjpeg on CPU) and one `torchvision.ops.roi_align`
over the batch (resize and crop in one bilinear, area-averaging resampling) instead of PIL in
DataLoader workers. The workers then only read file bytes. The benchmark (`training_throughput`)
measures which of the two is faster on a machine; PIL's bicubic resize and this bilinear one differ
by a few grey levels (the test bounds it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.ops import roi_align


class JpegBytes(Dataset):
    """(uint8 1-D tensor of the file's bytes, index): what a worker does when the device decodes."""

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return read_file(str(self.paths[i])), i


def collate_bytes(items):
    """Keep the variable-length byte tensors as a list (decode_jpeg takes a list)."""
    return [d for d, _ in items], [i for _, i in items]


def crop_params(h: int, w: int, load_size: int, crop: int, *, seed: int, epoch: int, index: int,
                random: bool = True, flip: bool = True) -> tuple[float, float, int, int, bool]:
    """(scale_y, scale_x, y0, x0, flip) exactly as `PretrainImages` draws them (same RNG, same order)."""
    s = load_size / min(w, h)
    if abs(s - 1) > 1e-6:
        rw, rh = max(crop, round(w * s)), max(crop, round(h * s))
    else:
        rw, rh = w, h
    if random:
        rng = np.random.default_rng([seed, epoch, index])
        y0, x0 = int(rng.integers(0, rh - crop + 1)), int(rng.integers(0, rw - crop + 1))
        do_flip = flip and bool(rng.integers(0, 2))
    else:
        y0, x0, do_flip = (rh - crop) // 2, (rw - crop) // 2, False
    return rh / h, rw / w, y0, x0, do_flip


def decode_batch(datas: list[Tensor], device) -> list[Tensor]:
    """JPEG bytes -> list of uint8 [3, H_i, W_i] on `device` (one batched nvJPEG call on CUDA)."""
    dev = torch.device(device)
    out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=dev)
    return out if isinstance(out, list) else [out]


def augment_batch(images: list[Tensor], indices, load_size: int, crop: int, *, seed: int = 0, epoch: int = 0,
                  random: bool = True, flip: bool = True) -> Tensor:
    """Decoded images (uint8 [3,H_i,W_i], one device) -> uint8 [B,3,crop,crop]: resize + crop by one
    roi_align over the zero-padded batch, then the flips."""
    dev = images[0].device
    hmax = max(im.shape[1] for im in images)
    wmax = max(im.shape[2] for im in images)
    batch = torch.zeros(len(images), 3, hmax, wmax, device=dev, dtype=torch.float32)  # [B,3,Hmax,Wmax]
    boxes, flips = [], []
    for b, (im, i) in enumerate(zip(images, indices, strict=True)):
        h, w = im.shape[1:]
        batch[b, :, :h, :w] = im
        # one replicated column / row past the edge: bilinear samples in the last half pixel see the edge, not 0
        if w < wmax:
            batch[b, :, :h, w] = im[:, :, -1]
        if h < hmax:
            batch[b, :, h, :min(w + 1, wmax)] = batch[b, :, h - 1, :min(w + 1, wmax)]
        sy, sx, y0, x0, f = crop_params(h, w, load_size, crop, seed=seed, epoch=epoch, index=int(i),
                                        random=random, flip=flip)
        # the crop [x0, x0+crop) of the resized image, in source pixels (roi_align: aligned=True, pixel centres)
        boxes.append((b, x0 / sx, y0 / sy, (x0 + crop) / sx, (y0 + crop) / sy))
        flips.append(f)
    rois = torch.tensor(boxes, dtype=torch.float32, device=dev)  # [B,5]: batch index, x1, y1, x2, y2
    out = roi_align(batch, rois, output_size=crop, spatial_scale=1.0, sampling_ratio=-1, aligned=True)  # [B,3,c,c]
    f = torch.tensor(flips, device=dev)
    out = torch.where(f[:, None, None, None], out.flip(-1), out)
    return out.round_().clamp_(0, 255).to(torch.uint8)
