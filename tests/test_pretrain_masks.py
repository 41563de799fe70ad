import numpy as np
import pytest
import torch
from PIL import Image

from cebench.errors import BadImageError
from cebench.pretrain.masks import (
    Masker,
    NoiseMasker,
    RegionMasker,
    block_mask,
    center_mask,
    load_mask_file,
    silhouettes_from_label_maps,
)

torch.set_num_threads(1)


def test_center_mask_is_a_quarter():
    for s in (64, 128, 227):
        m = center_mask(3, s)
        side = round(s / 2)
        assert m.shape == (3, 1, s, s) and m.sum().item() == 3 * side * side
    assert center_mask(1, 128).mean().item() == 0.25


def test_noise_masks_20_to_30_percent_and_seeded():
    nm = NoiseMasker(64, seed=0)
    a = nm(32, torch.Generator().manual_seed(1))
    b = nm(32, torch.Generator().manual_seed(1))
    frac = a.mean(dim=(1, 2, 3))
    assert torch.equal(a, b) and a.shape == (32, 1, 64, 64)
    assert frac.min() >= 0.2 and frac.max() <= 0.3
    assert not torch.equal(a[0], a[1])


def test_region_masks_from_a_voc_mask():
    lab = np.zeros((100, 100), np.uint8)
    lab[20:80, 40:60] = 15          # a "person"-like bar
    lab[30:50, 10:30] = 7
    lab[0:5, :] = 255               # ignore border
    sil = silhouettes_from_label_maps([lab], out_size=32)
    assert sil.shape == (2, 32, 32)
    rm = RegionMasker(64, sil, area=(0.1, 0.25))
    m = rm(64, torch.Generator().manual_seed(0))
    frac = m.mean(dim=(1, 2, 3))
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert frac.min() > 0.03 and frac.max() < 0.35 and frac.std() > 0


def test_blocks_and_none_and_file(tmp_path):
    m = block_mask(8, 64, torch.Generator().manual_seed(0))
    assert m.shape == (8, 1, 64, 64) and 0.05 < m.mean() < 0.4
    assert Masker("none", 64)(4, torch.Generator()) is None
    arr = np.zeros((40, 40), np.uint8)
    arr[10:20, 10:30] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    fm = Masker("file", 40, mask_file=str(tmp_path / "m.png"))(2, torch.Generator())
    assert fm.shape == (2, 1, 40, 40) and fm.sum().item() == 2 * 200
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(BadImageError, match="no missing pixels"):
        load_mask_file(tmp_path / "empty.png")
