"""`cebench inpaint IMAGE [--mask MASK.png] --checkpoint CKPT --out OUT.png`.

Any image size:
- mode "resize" (default): the image is resized to the net's S x S, the net fills the central S/2
  square (or the user mask, see below), the fill is resized back to the image's size and pasted only
  into the hole; the rest of the output is the original pixels.
- mode "tile" (centre mask only): the net runs at its native resolution on the S x S crop around the
  image's centre (images smaller than S are resized up first); the hole is the central S/2 square of
  that crop.
A user mask (white = missing, same size as the image) is supported by the AlexNet context encoders
(ce / ce-adv checkpoints, which predict the whole image). The inpainting nets (inpaint / inpaint-adv)
fill only the centre square, so with them a mask must lie inside the central square of the resized
image, or an error says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cebench.checkpoint import load_checkpoint, load_state_strict
from cebench.errors import BadImageError, CheckpointError
from cebench.images import open_rgb
from cebench.io import atomic_save_image
from cebench.runtime import choose_device

from .masks import center_box
from .models import AlexNetConfig, ContextEncoder, InpaintingCE, InpaintNetConfig
from .objectives import InpaintObjective, ReconstructionObjective


def load_inpainter(path, device="cpu"):
    """An eval-mode objective (InpaintObjective or ReconstructionObjective) from a trained checkpoint."""
    ck = load_checkpoint(path)
    arch = ck.get("arch") or {}
    name = arch.get("name")
    if name in ("inpaint", "inpaint-adv"):
        net = InpaintingCE(InpaintNetConfig.from_dict(arch["inpaint_net"]))
        obj = InpaintObjective(net, arch.get("overlap", 4), arch.get("overlap_weight", 10.0))
    elif name in ("ce", "ce-adv"):
        patch = int((ck.get("config") or {}).get("target_patch", 0) or 0)
        if patch:
            raise CheckpointError(f"{path}: this context encoder was trained with target_patch={patch}: it predicts "
                                  f"per-patch standardised pixels, not an image (a hidden patch's brightness and "
                                  f"contrast are unknown), so it cannot inpaint; use an inpaint or inpaint-adv "
                                  f"checkpoint, or a ce trained with target_patch=0")
        net = ContextEncoder(AlexNetConfig.from_dict(arch["encoder"]), dropout=arch.get("dropout", 0.5),
                             decoder_widths=tuple(arch.get("decoder_widths", (64, 64, 32, 32))),
                             decoder_layers=arch.get("decoder_layers", 5))
        obj = ReconstructionObjective(net)
    else:
        raise CheckpointError(f"{path}: not an inpainting checkpoint (method {name!r}; need inpaint, inpaint-adv, "
                              "ce or ce-adv)")
    load_state_strict(net, ck["model"], path)
    return obj.to(device).eval()


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]


@torch.no_grad()
def inpaint_file(image, checkpoint, out, mask=None, device="auto", mode: str = "resize") -> Path:
    dev = choose_device(device)
    img = open_rgb(image)
    w, h = img.size
    if min(w, h) < 8:
        raise BadImageError(image, f"image too small ({w}x{h}); need at least 8x8")
    obj = load_inpainter(checkpoint, dev)
    full = isinstance(obj, ReconstructionObjective)
    size = obj.net.encoder.cfg.input_size if full else obj.net.cfg.input_size
    x = _to_tensor(img)  # [1,3,h,w]
    if mask is not None:
        m_img = open_rgb(mask).convert("L")
        if m_img.size != (w, h):
            raise BadImageError(mask, f"mask is {m_img.size[0]}x{m_img.size[1]}, image {image} is {w}x{h}")
        hole = torch.from_numpy((np.asarray(m_img) > 127).astype(np.float32))[None, None]
        if hole.sum() == 0:
            raise BadImageError(mask, "mask has no missing pixels (white = missing)")
        if hole.mean() > 0.9:
            raise BadImageError(mask, "mask covers over 90% of the image; nothing left as context")
    else:
        hole = None
    if mode == "tile" and hole is None:
        result = _tile_centre(obj, x, size, full, dev)
    else:
        result = _resize_fill(obj, x, hole, size, full, dev, mask)
    arr = (result[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return atomic_save_image(Image.fromarray(arr), out, format="PNG")


def _predict(obj, xs: torch.Tensor, ms: torch.Tensor, full: bool) -> torch.Tensor:
    """Full S x S prediction composite in [0,1] for a [1,3,S,S] image and [1,1,S,S] hole."""
    if full:
        _, o = obj(xs, ms)
        return o["pred"]
    lo, side = center_box(xs.shape[-1], 0.5)
    y = xs.clone()
    y[:, :, lo:lo + side, lo:lo + side] = obj.predict(xs)
    return y


def _resize_fill(obj, x, hole, size, full, dev, mask_path):
    h, w = x.shape[-2:]
    xs = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1).to(dev)
    if hole is None:
        lo_h, side_h = center_box(h, 0.5)
        lo_w, side_w = center_box(w, 0.5)
        hole = torch.zeros(1, 1, h, w)
        hole[:, :, lo_h:lo_h + side_h, lo_w:lo_w + side_w] = 1
        ms = torch.zeros(1, 1, size, size)
        lo, side = center_box(size, 0.5)
        ms[:, :, lo:lo + side, lo:lo + side] = 1
    else:
        ms = (F.interpolate(hole, size=(size, size), mode="bilinear", align_corners=False) > 0).float()
        if not full:
            lo, side = center_box(size, 0.5)
            inside = torch.zeros_like(ms)
            inside[:, :, lo:lo + side, lo:lo + side] = 1
            if (ms * (1 - inside)).sum() > 0:
                raise BadImageError(mask_path, "this inpainting net fills only the central square (1/2 of each side); "
                                    "the mask reaches outside it (use a ce checkpoint for free-form masks)")
    pred = _predict(obj, xs, ms.to(dev), full).float().cpu()
    back = F.interpolate(pred, size=(h, w), mode="bicubic", align_corners=False)
    return x * (1 - hole) + back * hole


def _tile_centre(obj, x, size, full, dev):
    h0, w0 = x.shape[-2:]
    orig = x
    h, w = h0, w0
    if min(h, w) < size:
        s = size / min(h, w)
        x = F.interpolate(x, size=(max(size, round(h * s)), max(size, round(w * s))), mode="bicubic",
                          align_corners=False).clamp(0, 1)
        h, w = x.shape[-2:]
    y0, x0 = (h - size) // 2, (w - size) // 2
    crop = x[:, :, y0:y0 + size, x0:x0 + size].to(dev)
    ms = torch.zeros(1, 1, size, size, device=dev)
    lo, side = center_box(size, 0.5)
    ms[:, :, lo:lo + side, lo:lo + side] = 1
    pred = _predict(obj, crop, ms, full).float().cpu()
    out = x.clone()
    out[:, :, y0:y0 + size, x0:x0 + size] = pred
    if (h, w) != (h0, w0):  # upscaled small image: back to its size, original pixels outside the hole
        hole = torch.zeros(1, 1, h, w)
        hole[:, :, y0 + lo:y0 + lo + side, x0 + lo:x0 + lo + side] = 1
        hole = (F.interpolate(hole, size=(h0, w0), mode="bilinear", align_corners=False) > 0).float()
        out = F.interpolate(out, size=(h0, w0), mode="bicubic", align_corners=False)
        out = orig * (1 - hole) + out * hole
    return out
