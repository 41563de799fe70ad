"""The batch augmentations of cls/seg against straightforward references: per-sample slices and turns
must give bit for bit what a fully vectorised formula (the previous implementation) gives, from the same
generator draws, so a faster augmentation leaves every fine-tuning run unchanged."""

import pytest
import torch
import torch.nn.functional as F

from cebench.transfer.data import flip_rot_perm, scale_crop


def _ref_flip_rot_perm(x, gen, *, flip, rot90, channel_perm, masks=None):
    b = x.shape[0]
    if flip:
        f = torch.rand(b, generator=gen) < 0.5
        x = torch.where(f.view(-1, 1, 1, 1), x.flip(-1), x)
        if masks is not None:
            masks = torch.where(f.view(-1, 1, 1), masks.flip(-1), masks)
    if rot90:
        k = torch.randint(0, 4, (b,), generator=gen)
        x = torch.stack([torch.rot90(x, r, (-2, -1)) for r in range(4)])[k, torch.arange(b)]
        if masks is not None:
            masks = torch.stack([torch.rot90(masks, r, (-2, -1)) for r in range(4)])[k, torch.arange(b)]
    if channel_perm:
        perms = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)])
        x = torch.gather(x, 1, perms.view(b, 3, 1, 1).expand_as(x))
    return x, masks


def _ref_scale_crop(x, gen, out_size, scale, masks=None):
    b, _, h, w = x.shape
    s = float(scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=gen)))
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    nh2, nw2 = max(nh, out_size), max(nw, out_size)
    oy = torch.randint(0, nh2 - out_size + 1, (b,), generator=gen)
    ox = torch.randint(0, nw2 - out_size + 1, (b,), generator=gen)
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if masks is not None:
            masks = F.interpolate(masks[:, None].float(), size=(nh, nw), mode="nearest")[:, 0].to(masks.dtype)
    ph, pw = max(0, out_size - nh), max(0, out_size - nw)
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        if masks is not None:
            masks = F.pad(masks, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=255)
    ar = torch.arange(out_size)
    rows = (oy[:, None] + ar).view(b, 1, out_size, 1)
    cols = (ox[:, None] + ar).view(b, 1, 1, out_size)
    bi = torch.arange(b).view(b, 1, 1, 1)
    x = x[bi, torch.arange(x.shape[1]).view(1, -1, 1, 1), rows, cols]
    if masks is not None:
        masks = masks[bi[:, 0], rows[:, 0], cols[:, 0]]
    return x, masks


@pytest.mark.parametrize("opts", [dict(flip=True, rot90=True, channel_perm=True), dict(flip=False, rot90=True,
                                  channel_perm=False), dict(flip=True, rot90=False, channel_perm=True)])
def test_flip_rot_perm_equals_the_vectorised_reference(opts):
    x = torch.randn(17, 3, 12, 12)
    m = torch.randint(0, 21, (17, 12, 12))
    got = flip_rot_perm(x, torch.Generator().manual_seed(3), masks=m, **opts)
    ref = _ref_flip_rot_perm(x, torch.Generator().manual_seed(3), masks=m, **opts)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    flip_rot_perm(x, g1, **opts)
    _ref_flip_rot_perm(x, g2, **opts)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))  # the same draws consumed


@pytest.mark.parametrize("scale,out", [((1.0, 1.25), 16), ((0.5, 0.8), 16), ((1.0, 1.0), 16), ((1.2, 1.5), 12)])
def test_scale_crop_equals_the_advanced_index_reference(scale, out):
    x = torch.randn(9, 3, 16, 16)
    m = torch.randint(0, 21, (9, 16, 16))
    for seed in range(4):
        got = scale_crop(x, torch.Generator().manual_seed(seed), out, scale, masks=m)
        ref = _ref_scale_crop(x, torch.Generator().manual_seed(seed), out, scale, masks=m)
        assert got[0].shape == (9, 3, out, out) and got[1].shape == (9, out, out)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
