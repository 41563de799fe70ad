import torch

from cebench.pretrain.losses import gan_d_loss, gan_g_loss, joint, multilabel_bce, overlap_weights, weighted_l2
from cebench.pretrain.masks import center_mask
from cebench.pretrain.models import InpaintingCE, InpaintNetConfig
from cebench.pretrain.objectives import InpaintObjective


def test_overlap_band_weights():
    m = center_mask(1, 32)  # hole rows/cols 8..23
    w = overlap_weights(m, overlap=4, overlap_weight=10.0)
    assert w[0, 0, 16, 16] == 1 and w[0, 0, 8, 8] == 1
    assert w[0, 0, 4, 16] == 10 and w[0, 0, 7, 7] == 10 and w[0, 0, 27, 27] == 10
    assert w[0, 0, 3, 16] == 0 and w[0, 0, 28, 28] == 0
    assert (w == 10).sum() == 24 * 24 - 16 * 16


def test_inpaint_ring_weights():
    obj = InpaintObjective(InpaintingCE(InpaintNetConfig()), overlap=4, overlap_weight=10)
    w = obj.ring_weights(32, "cpu")
    assert w[0, 0, 0, 0] == 10 and w[0, 0, 3, 10] == 10 and w[0, 0, 4, 4] == 1 and (w == 1).sum() == 24 * 24


def test_weighted_l2_and_gan_and_joint():
    p, t = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    assert weighted_l2(p, t, None) == 1
    w = torch.zeros(2, 1, 8, 8)
    w[:, :, :2] = 1
    t2 = t.clone()
    t2[:, :, 2:] = 5  # outside the weights: ignored
    assert weighted_l2(p, t2, w) == 1
    big = torch.full((4,), 20.0)
    assert gan_d_loss(big, -big) < 1e-6 and gan_g_loss(big) < 1e-6 and gan_g_loss(-big) > 10
    assert torch.isclose(joint(torch.tensor(1.0), torch.tensor(2.0)), torch.tensor(0.999 + 0.002))
    assert joint(torch.tensor(3.0), None) == 3


def test_multilabel_bce_ignores_difficult():
    logits = torch.tensor([[10.0, -10.0, 50.0]])
    labels = torch.tensor([[1.0, -1.0, 0.0]])  # third is "difficult": ignored despite a huge logit
    assert multilabel_bce(logits, labels) < 1e-3
