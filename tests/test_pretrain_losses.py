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


def test_patch_standardize_hand_case_and_inverse():
    from cebench.pretrain.losses import patch_standardize

    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, :2, :2] = torch.tensor([[0.0, 2.0], [0.0, 2.0]])  # patch (0,0): channel 0 is 0 / 2, channel 1 is 0
    x[0, :, 2:, 2:] = 3.0                                      # patch (1,1) flat: mean 3, var 0
    z, mean, std = patch_standardize(x, 2, eps=1e-12)
    # patch (0,0) over 8 values (two 2s, six 0s): mean 0.5, var 0.75
    assert torch.allclose(mean[0, 0, :2, :2], torch.full((2, 2), 0.5))
    assert torch.allclose(std[0, 0, 0, 0], torch.tensor(0.75).sqrt())
    assert torch.allclose(z[0, 0, :2, :2], (x[0, 0, :2, :2] - 0.5) / 0.75 ** 0.5, atol=1e-5)
    assert torch.allclose(z[0, 1, :2, :2], torch.full((2, 2), -0.5 / 0.75 ** 0.5), atol=1e-5)
    assert torch.allclose(z[0, :, 2:, 2:], torch.zeros(2, 2, 2), atol=1e-4)  # a flat patch stays flat
    assert mean.shape == (1, 1, 4, 4) and torch.allclose(mean[0, 0, 2:, 2:], torch.full((2, 2), 3.0))
    # the per-patch statistics agree with a loop over patches, and (z * std + mean) gives x back
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 8, generator=g)
    z, mean, std = patch_standardize(x, 4, eps=1e-2)
    ref = x[1, :, 4:, :4]  # one patch, all channels
    assert torch.allclose(z[1, :, 4:, :4], (ref - ref.mean()) / (ref.var(unbiased=False) + 1e-2).sqrt(), atol=1e-5)
    assert torch.allclose(z * std + mean, x, atol=1e-5)
    try:
        patch_standardize(x, 3)
    except ValueError as exc:
        assert "does not divide" in str(exc)
    else:
        raise AssertionError("patch 3 on 8 px should be refused")


def test_reconstruction_objective_patch_target():
    from cebench.images import normalize
    from cebench.pretrain.losses import patch_standardize
    from cebench.pretrain.models import AlexNetConfig, ContextEncoder
    from cebench.pretrain.objectives import ReconstructionObjective

    torch.manual_seed(0)
    net = ContextEncoder(AlexNetConfig(), decoder_widths=(16, 8, 8), decoder_layers=4).eval()
    x01 = torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1
    obj = ReconstructionObjective(net, "masked", target_patch=8)
    losses, out = obj(x01, mask)
    pred = net(normalize(x01), mask)
    target, mean, std = patch_standardize(normalize(x01), 8)
    w = overlap_weights(mask, 4, 10.0)
    assert torch.allclose(losses["rec"], weighted_l2(pred, target, w), rtol=1e-5)
    # the image-space prediction (for samples and the adversary) is mapped back with the true statistics
    assert torch.allclose(out["fake"], (pred * std + mean) * mask + normalize(x01) * (1 - mask), atol=1e-5)
    losses.pop("loss").backward()  # gradients reach the encoder through the standardised target
    assert net.encoder.conv1.weight.grad.abs().sum() > 0
    try:
        ReconstructionObjective(net, "masked", target_patch=7)
    except ValueError as exc:
        assert "target_patch" in str(exc)
    else:
        raise AssertionError("a patch that does not divide 64 should be refused")
