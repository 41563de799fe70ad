"""Our torch HOG against scikit-image's hog: exact parity (max abs diff < 1e-6).

Exact parity is possible because scikit-image uses hard orientation binning and cell means; the only
differences left are float rounding (scikit-image accumulates cells in float32), well under 1e-6.
"""

import numpy as np
import pytest
import torch
from skimage.feature import hog as skhog

from cebench.features.hog import HOGExtractor, hog, hog_output_dim

torch.set_num_threads(1)


@pytest.mark.parametrize("block_norm", ["L1", "L1-sqrt", "L2", "L2-Hys"])
@pytest.mark.parametrize("ori,ppc,cpb", [(9, (8, 8), (3, 3)), (8, (5, 7), (2, 2)), (7, (6, 6), (1, 1))])
@pytest.mark.parametrize("colour", [False, True])
def test_hog_matches_skimage(block_norm, ori, ppc, cpb, colour):
    rng = np.random.default_rng(0)
    # uint8-like values: many gradients exactly on bin edges (0, 45, 90 degrees) are exercised
    shape = (2, 37, 45, 3) if colour else (2, 37, 45)
    imgs = rng.integers(0, 256, size=shape) / 255.0
    t = torch.from_numpy(imgs)
    t = t.permute(0, 3, 1, 2) if colour else t
    ours = hog(t, ori, ppc, cpb, block_norm).numpy()
    ours32 = hog(t.float(), ori, ppc, cpb, block_norm).numpy()
    for i in range(2):
        ref = skhog(imgs[i], orientations=ori, pixels_per_cell=ppc, cells_per_block=cpb,
                    block_norm=block_norm, channel_axis=-1 if colour else None)
        ref32 = skhog(imgs[i].astype(np.float32), orientations=ori, pixels_per_cell=ppc,
                      cells_per_block=cpb, block_norm=block_norm, channel_axis=-1 if colour else None)
        assert ours.shape[1] == ref.size == hog_output_dim(37, 45, ori, ppc, cpb)
        assert np.abs(ours[i] - ref).max() < 1e-6
        assert np.abs(ours32[i] - ref32).max() < 1e-6


def test_hog_structured_image_and_grey_channel_forms():
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    img = (np.sin(6 * xx + 3 * yy) > 0).astype(np.float64) * 0.7 + 0.1 * xx
    ref = skhog(img, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2))
    t = torch.from_numpy(img)
    a = hog(t[None], 9, 8, 2).numpy()[0]
    b = hog(t[None, None], 9, 8, 2).numpy()[0]
    assert np.abs(a - ref).max() < 1e-6 and np.array_equal(a, b)


def test_hog_fast_mode_interpolate_and_errors():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((3, 3, 32, 32)))
    exact = hog(x, exact_orientation=True, cells_per_block=2)
    fast = hog(x, exact_orientation=False, cells_per_block=2)
    assert np.corrcoef(exact.ravel(), fast.ravel())[0, 1] > 0.9999
    interp = hog(x, interpolate=True, cells_per_block=2)
    assert interp.shape == exact.shape and torch.isfinite(interp).all()
    assert np.corrcoef(exact.ravel(), interp.ravel())[0, 1] > 0.8
    with pytest.raises(ValueError):
        hog(torch.rand(1, 10, 10), pixels_per_cell=8, cells_per_block=3)
    with pytest.raises(ValueError):
        hog(torch.rand(1, 32, 32), block_norm="L3")


def test_hog_extractor_on_normalized_input():
    from cebench.images import normalize

    x = torch.rand(2, 3, 32, 32)
    f1 = HOGExtractor(pixels_per_cell=(8, 8), cells_per_block=(2, 2))(x)
    f2 = HOGExtractor(pixels_per_cell=(8, 8), cells_per_block=(2, 2), normalized=True)(normalize(x))
    assert f1.shape == (2, 9 * 9 * 4)
    assert torch.allclose(f1, f2, atol=1e-4)
