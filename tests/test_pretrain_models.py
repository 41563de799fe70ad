"""Shapes and parameter counts of the pretraining models, demo and full size."""

import pytest
import torch

from cebench.errors import CheckpointError
from cebench.pretrain.loading import imagenet_alexnet_encoder, load_encoder, save_encoder_checkpoint
from cebench.pretrain.models import (
    AlexNetConfig,
    AlexNetEncoder,
    ChannelWiseFC,
    ContextEncoder,
    Discriminator,
    InpaintingCE,
    InpaintNetConfig,
    SupervisedNet,
    build_encoder,
    count_parameters,
)

torch.set_num_threads(1)


def test_demo_encoder_shapes_and_strides():
    enc = build_encoder(AlexNetConfig.demo())
    x = torch.randn(2, 3, 64, 64)
    out = enc.forward_intermediates(x, enc.layer_names)
    assert out["pool5"].shape == (2, 64, 4, 4)
    assert enc.out_channels == 64 and enc.out_size == 4
    assert out["conv5"].shape[-1] * enc.feature_stride("conv5") == 64
    assert out["pool5"].shape[-1] * enc.feature_stride("pool5") == 64
    assert torch.equal(enc.forward_features(x), out["pool5"])


def test_paper_encoder_matches_torchvision_alexnet():
    import torchvision

    enc = build_encoder(AlexNetConfig.paper())
    tv = torchvision.models.alexnet(weights=None)
    tv_convs = sum(p.numel() for p in tv.features.parameters())
    assert count_parameters(enc) == tv_convs
    with torch.no_grad():
        assert enc(torch.zeros(1, 3, 227, 227)).shape == (1, 256, 6, 6)


def test_channelwise_fc_counts_and_is_per_channel():
    m, n = 256, 6
    fc = ChannelWiseFC(m, n)
    assert fc.weight.numel() == m * n**4  # 331,776
    dense = (m * n * n) ** 2              # 84,934,656 for a dense 9216 x 9216 layer
    assert dense == m**2 * n**4 and fc.weight.numel() * m == dense
    # channel c of the output depends on channel c of the input only
    x = torch.randn(1, m, n, n, requires_grad=True)
    fc(x)[0, 7].sum().backward()
    touched = (x.grad.abs().sum(dim=(2, 3)) > 0).flatten().nonzero().flatten().tolist()
    assert touched == [7]


@pytest.mark.parametrize("cfg", [AlexNetConfig.demo(), AlexNetConfig.paper()], ids=["demo", "paper"])
def test_context_encoder_shapes(cfg):
    ce = ContextEncoder(cfg)
    s = cfg.input_size
    m, n = ce.encoder.out_channels, ce.encoder.out_size
    assert count_parameters(ce.channel_fc) == m * n**4 + m * n * n
    assert len([l for l in ce.decoder.net if isinstance(l, torch.nn.ConvTranspose2d)]) == 5
    ce.eval()
    with torch.no_grad():
        y = ce(torch.randn(1, 3, s, s), torch.zeros(1, 1, s, s))
    assert y.shape == (1, 3, s, s)


@pytest.mark.parametrize("cfg", [InpaintNetConfig(), InpaintNetConfig.paper()], ids=["demo", "paper"])
def test_inpainting_ce_and_discriminator(cfg):
    g, d = InpaintingCE(cfg), Discriminator(cfg.disc_widths)
    g.eval(); d.eval()
    x = torch.randn(2, 3, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        z = g.forward_encoder(x)
        y = g.forward_decoder(z)
        assert z.shape == (2, cfg.bottleneck, 1, 1)
        assert y.shape == (2, 3, cfg.pred_size, cfg.pred_size)
        assert y.abs().max() <= 1
        assert d(y).shape == (2,)
    if cfg.input_size == 128:
        assert d.in_size == 64 and cfg.bottleneck == 4000
        # first conv of the official net: 3 -> 64, 4x4, no bias
        assert g.encoder[0].weight.shape == (64, 3, 4, 4)


def test_supervised_net():
    net = SupervisedNet(AlexNetConfig.demo(), num_classes=5)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_load_encoder_roundtrip_and_strict(tmp_path):
    ce = ContextEncoder(AlexNetConfig.demo())
    from cebench.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ce.pt", {"model": ce.state_dict(), "step": 3, "config": {},
                                        "arch": {"name": "ce", "encoder": AlexNetConfig.demo().to_dict()}})
    enc = load_encoder(tmp_path / "ce.pt", expect="ce")
    assert enc.cfg == AlexNetConfig.demo() and not enc.training
    for k, v in ce.encoder.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="expected a 'ae'"):
        load_encoder(tmp_path / "ce.pt", expect="ae")
    # wrong architecture: strict error listing keys
    save_checkpoint(tmp_path / "bad.pt", {"model": ce.state_dict(),
                                          "arch": {"name": "ce", "encoder": AlexNetConfig(norm="none").to_dict()}})
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_encoder(tmp_path / "bad.pt")
    save_encoder_checkpoint(tmp_path / "bare.pt", AlexNetEncoder(AlexNetConfig.demo()), method="mine")
    assert load_encoder(tmp_path / "bare.pt", expect="mine").cfg == AlexNetConfig.demo()  # saved as method "mine"


def test_imagenet_weights_missing_is_clear(tmp_path):
    with pytest.raises(CheckpointError, match="unavailable"):
        imagenet_alexnet_encoder(tmp_path / "nope.pth")


def test_imagenet_weights_mapping(tmp_path):
    import torchvision

    tv = torchvision.models.alexnet(weights=None)
    torch.save(tv.state_dict(), tmp_path / "alexnet.pth")
    enc = imagenet_alexnet_encoder(tmp_path / "alexnet.pth")
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        assert torch.allclose(enc(x), tv.features(x), atol=1e-5)
