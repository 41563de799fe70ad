"""Context encoder models: plain nn.Modules with explicit arguments.

- `AlexNetEncoder` (conv1..pool5; the shared encoder of the suite, see CONTRIBUTING.md),
- `ChannelWiseFC` (m channels of n x n, each fully connected to itself: m*n^4 weights),
- `AlexNetDecoder` (5 up-convolutions with ReLU back to image space),
- `ContextEncoder` (feature learning: encoder + channel-wise FC + dropout + 1x1 conv + decoder; the
  autoencoder baseline is the same module used with an empty mask),
- `InpaintingCE` (the official inpainting net: DCGAN-style encoder, 4000-d bottleneck, predicts the
  centre), `Discriminator` (DCGAN-style, sees only the predicted region),
- `SupervisedNet` (the same AlexNet encoder + a multi-label classifier head; the "supervised, demo
  labels" upper bound).

All image tensors are RGB normalised with the ImageNet mean/std (`cebench.images.normalize`), so the
dataset mean is 0 and "fill the hole with the mean" is multiplication by (1 - mask).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cebench.images import denormalize

# --------------------------------------------------------------------------------------------------
# AlexNet encoder (shared API)
# --------------------------------------------------------------------------------------------------


@dataclass
class AlexNetConfig:
    """Architecture of the AlexNet encoder; saved in every checkpoint as arch["encoder"]."""

    channels: tuple[int, ...] = (32, 64, 96, 96, 64)
    conv1_kernel: int = 5
    conv1_stride: int = 2
    conv1_padding: int = 2
    conv2_kernel: int = 5
    pool_kernel: int = 3
    pool_padding: int = 1        # 1 for the demo (64 -> 32 -> 16 -> 8 -> 4); 0 = AlexNet
    input_size: int = 64
    norm: str = "batch"          # "none" (paper) | "batch" (demo departure, see docs/protocol.md)

    # The dataclass default is the demo encoder; presets below.
    @classmethod
    def paper(cls) -> "AlexNetConfig":
        """torchvision AlexNet widths (ImageNet weights load), 227 px, pool5 256 x 6 x 6, no norm."""
        return cls(channels=(64, 192, 384, 256, 256), conv1_kernel=11, conv1_stride=4, conv1_padding=2,
                   conv2_kernel=5, pool_kernel=3, pool_padding=0, input_size=227, norm="none")

    @classmethod
    def caffenet(cls) -> "AlexNetConfig":
        """The Caffe AlexNet widths of the paper (96, 256, 384, 384, 256), 227 px, pool5 256 x 6 x 6."""
        return cls(channels=(96, 256, 384, 384, 256), conv1_kernel=11, conv1_stride=4, conv1_padding=0,
                   conv2_kernel=5, pool_kernel=3, pool_padding=0, input_size=227, norm="none")

    @classmethod
    def demo(cls) -> "AlexNetConfig":
        """64 px, widths 32/64/96/96/64, conv1 5x5 stride 2, BatchNorm, pool5 64 x 4 x 4."""
        return cls()

    @classmethod
    def from_dict(cls, d: dict) -> "AlexNetConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "channels" in kw:
            kw["channels"] = tuple(int(c) for c in kw["channels"])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# What conv1 of an encoder sees: "rgb" (every encoder: the normalised RGB input itself) or "lab" (an encoder
# pretrained on lightness, the colorization row: CIE Lab computed from that RGB input, scaled by `LAB_SCALE`)
INPUT_SPACES = ("rgb", "lab")
LAB_SCALE = 50.0  # conv1 of a "lab" encoder sees ((L - 50) / 50, a / 50, b / 50): L in [-1, 1], ab ~ [-2, 2]
# sRGB (D65) -> CIE XYZ and the D65 white point, as skimage.color.rgb2lab (2 degree observer)
_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def rgb_to_lab(x01: Tensor) -> Tensor:
    """CIE Lab of sRGB images in [0, 1] ([B,3,H,W] -> [B,3,H,W]: L in [0, 100], a and b in about +-110), with
    the constants of skimage.color.rgb2lab (sRGB gamma, D65 white, 2 degree observer). Computed in float32
    with autocast off (the cube root and the gamma are not for bf16)."""
    with torch.autocast(device_type=x01.device.type, enabled=False):
        x = x01.float().clamp(0, 1)
        lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
        m = torch.tensor(_XYZ_FROM_RGB, device=x.device) / torch.tensor(_D65_WHITE, device=x.device)[:, None]
        t = torch.einsum("ij,bjhw->bihw", m, lin)  # XYZ / white, [B,3,H,W]
        f = torch.where(t > 0.008856, t.clamp_min(1e-12) ** (1 / 3), 7.787 * t + 16 / 116)
        return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def lab_input(x: Tensor) -> Tensor:
    """The suite's normalised RGB [B,3,H,W] -> what conv1 of a "lab" encoder sees: ((L-50)/50, a/50, b/50)."""
    lab = rgb_to_lab(denormalize(x.float()))
    return (lab - torch.tensor([50.0, 0.0, 0.0], device=lab.device).view(1, 3, 1, 1)) / LAB_SCALE


class AlexNetEncoder(nn.Module):
    """AlexNet conv1..pool5 (ReLU after every conv, optional BatchNorm before it), random init.

    Parameters live under `conv1..conv5` (and `bn1..bn5` with norm="batch"), so the torchvision
    ImageNet weights map one to one (see `cebench.pretrain.loading.imagenet_alexnet_encoder`).
    """

    layer_names = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")

    def __init__(self, cfg: AlexNetConfig, input_space: str = "rgb"):
        super().__init__()
        if cfg.norm not in ("none", "batch"):
            raise ValueError(f"AlexNetConfig.norm must be 'none' or 'batch', got {cfg.norm!r}")
        if len(cfg.channels) != 5:
            raise ValueError(f"AlexNetConfig.channels needs 5 widths, got {cfg.channels}")
        if input_space not in INPUT_SPACES:
            raise ValueError(f"input_space must be one of {', '.join(INPUT_SPACES)}, got {input_space!r}")
        self.cfg = cfg
        # "lab": conv1 reads (L, a, b) computed from the RGB input (`lab_input`), the way Zhang et al. fed RGB to
        # their L-trained colorization net (a ColorConv layer, then conv1 on L plus a zero-initialised conv1 on ab);
        # not a parameter, so the state dict is the same; checkpoints record it as arch["input_space"]
        self.input_space = input_space
        c1, c2, c3, c4, c5 = (int(c) for c in cfg.channels)
        self.conv1 = nn.Conv2d(3, c1, cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding)
        self.conv2 = nn.Conv2d(c1, c2, cfg.conv2_kernel, 1, cfg.conv2_kernel // 2)
        self.conv3 = nn.Conv2d(c2, c3, 3, 1, 1)
        self.conv4 = nn.Conv2d(c3, c4, 3, 1, 1)
        self.conv5 = nn.Conv2d(c4, c5, 3, 1, 1)
        for i, c in enumerate((c1, c2, c3, c4, c5), 1):
            setattr(self, f"bn{i}", nn.BatchNorm2d(c) if cfg.norm == "batch" else nn.Identity())
        self.pool = nn.MaxPool2d(cfg.pool_kernel, 2, cfg.pool_padding)
        self.out_channels = c5
        s = _conv_out(cfg.input_size, cfg.conv1_kernel, cfg.conv1_stride, cfg.conv1_padding)
        for _ in range(3):
            s = _conv_out(s, cfg.pool_kernel, 2, cfg.pool_padding)
        if s < 1:
            raise ValueError(f"input_size {cfg.input_size} is too small for this AlexNet config")
        self.out_size = s
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def input_size(self) -> int:
        """Square input side the encoder expects (part of the plug-in interface, cebench.AlexNetLike)."""
        return self.cfg.input_size

    def convs(self) -> list[tuple[str, nn.Conv2d]]:
        """The five convolutions in order (for data-dependent init and weight inspection)."""
        return [(f"conv{i}", getattr(self, f"conv{i}")) for i in range(1, 6)]

    def feature_stride(self, layer: str) -> int:
        """Input pixels per feature cell at `layer`."""
        s = self.cfg.conv1_stride
        strides = {"conv1": s, "pool1": 2 * s, "conv2": 2 * s, "pool2": 4 * s,
                   "conv3": 4 * s, "conv4": 4 * s, "conv5": 4 * s, "pool5": 8 * s}
        if layer not in strides:
            raise ValueError(f"unknown layer {layer!r}; choose one of {self.layer_names}")
        return strides[layer]

    def forward_intermediates(self, x: Tensor, layers=("pool5",), *, stem: bool = True) -> dict[str, Tensor]:
        """Outputs of the named layers (conv layers after their ReLU); stops after the last asked.
        stem=False: `x` is conv1's input already (a "lab" encoder's pretext net builds it itself)."""
        layers = tuple(layers)
        bad = [n for n in layers if n not in self.layer_names]
        if bad:
            raise ValueError(f"unknown layer(s) {bad}; choose from {self.layer_names}")
        last = max(self.layer_names.index(n) for n in layers)
        if stem and self.input_space == "lab":
            x = lab_input(x)
        out: dict[str, Tensor] = {}
        for idx, name in enumerate(self.layer_names[: last + 1]):
            if name.startswith("conv"):
                i = name[-1]
                x = F.relu(getattr(self, f"bn{i}")(getattr(self, name)(x)), inplace=False)
            else:
                x = self.pool(x)
            if name in layers:
                out[name] = x
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] normalised RGB -> pool5 [B, C5, n, n]."""
        return self.forward_intermediates(x, ("pool5",))["pool5"]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


def build_encoder(cfg: AlexNetConfig | None = None) -> AlexNetEncoder:
    return AlexNetEncoder(cfg or AlexNetConfig())


# --------------------------------------------------------------------------------------------------
# Feature-learning context encoder
# --------------------------------------------------------------------------------------------------


class ChannelWiseFC(nn.Module):
    """Each of `channels` feature maps (size x size) fully connected to itself: m*n^4 weights + m*n^2 bias.

    Equivalent to the official grouped convolution (kernel n, m groups, m*n^2 outputs); written as one
    batched matrix product.
    """

    def __init__(self, channels: int, size: int):
        super().__init__()
        self.channels, self.size = channels, size
        n2 = size * size
        self.weight = nn.Parameter(torch.empty(channels, n2, n2))
        self.bias = nn.Parameter(torch.zeros(channels, n2))
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(n2))

    def forward(self, x: Tensor) -> Tensor:
        b, m, h, w = x.shape  # [B, m, n, n]
        y = torch.einsum("bmi,mij->bmj", x.reshape(b, m, h * w), self.weight) + self.bias
        return y.reshape(b, m, h, w)


class AlexNetDecoder(nn.Module):
    """`n_layers` up-convolutions with ReLU (none after the last): [B, C, n, n] -> [B, 3, S, S].

    Each up-convolution doubles the size until 2^k * n reaches the output size; the remaining ones
    keep it (3x3, stride 1). When `out_size` is not n * 2^k (227 px at full scale), the result is
    resized bilinearly to `out_size` (a stated convenience: the paper does not say how 227 is reached).
    """

    def __init__(self, in_channels: int, in_size: int, out_size: int, widths=(64, 64, 32, 32),
                 n_layers: int = 5, norm: str = "batch"):
        super().__init__()
        n_up = 0
        while in_size * 2 ** (n_up + 1) <= out_size and n_up < n_layers:
            n_up += 1
        if in_size * 2 ** n_up < out_size and n_up < n_layers:
            n_up += 1  # overshoot by less than 2x and resize down
        widths = list(widths)[: n_layers - 1]
        while len(widths) < n_layers - 1:
            widths.append(widths[-1] if widths else 32)
        chans = [in_channels, *widths, 3]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            cin, cout = chans[i], chans[i + 1]
            if i < n_up:
                layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
            else:
                layers.append(nn.ConvTranspose2d(cin, cout, 3, 1, 1))
            if i < n_layers - 1:
                if norm == "batch":
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        self.out_size = out_size
        self.n_up = n_up

    def forward(self, z: Tensor) -> Tensor:
        y = self.net(z)
        if y.shape[-1] != self.out_size or y.shape[-2] != self.out_size:
            y = F.interpolate(y, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        return y


class ContextEncoder(nn.Module):
    """AlexNet encoder -> channel-wise FC -> dropout -> 1x1 conv -> decoder (full image prediction).

    `forward(x, mask)` erases the hole (mask 1 = missing; filled with the dataset mean, 0 after
    normalisation) and predicts the whole image; the loss picks the region. The autoencoder baseline is
    this module with `mask=None` (nothing erased, loss over the whole image).
    """

    def __init__(self, encoder_cfg: AlexNetConfig | None = None, *, dropout: float = 0.5,
                 decoder_widths=(64, 64, 32, 32), decoder_layers: int = 5, decoder_norm: str | None = None):
        super().__init__()
        encoder_cfg = encoder_cfg or AlexNetConfig()
        self.encoder = AlexNetEncoder(encoder_cfg)
        m, n = self.encoder.out_channels, self.encoder.out_size
        self.channel_fc = ChannelWiseFC(m, n)
        self.dropout = nn.Dropout(dropout)
        self.mix = nn.Conv2d(m, m, 1)  # stride-1 1x1 convolution propagating across channels
        self.decoder = AlexNetDecoder(m, n, encoder_cfg.input_size, widths=decoder_widths,
                                      n_layers=decoder_layers, norm=decoder_norm or encoder_cfg.norm)

    def forward_encoder(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            x = x * (1.0 - mask)  # [B,3,S,S] * [B,1,S,S]
        return self.encoder.forward_features(x)

    def forward_decoder(self, z: Tensor) -> Tensor:
        z = F.relu(self.channel_fc(z))
        z = F.relu(self.mix(self.dropout(z)))
        return self.decoder(z)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_decoder(self.forward_encoder(x, mask))


# --------------------------------------------------------------------------------------------------
# Inpainting context encoder (official code) and discriminator
# --------------------------------------------------------------------------------------------------


class _DenseWeight:
    """Mixin: the weight stays in the plain contiguous layout when the model is converted to
    channels_last (`model.to(memory_format=torch.channels_last)`): a matrix product gains nothing from
    NHWC, and CPU fused Adam copies every non-contiguous tensor to a contiguous one and back each
    step (2-3x its time on these 32.8M-weight layers)."""

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        if not self.weight.is_contiguous():
            self.weight.data = self.weight.data.contiguous()
        return out


class FullKernelConv2d(_DenseWeight, nn.Conv2d):
    """A padding-0 convolution whose kernel covers its whole input ([B, C, k, k] -> [B, O, 1, 1]),
    e.g. the 4x4 conv to the 4000-d bottleneck: computed as one matrix product
    [B, C*k*k] x [C*k*k, O]. Same parameters (and state-dict keys) as nn.Conv2d and the same
    result up to float rounding; on CPU oneDNN's convolution for this shape is several times slower
    than the GEMM (see results/profile.md). Any other input size falls back to the convolution."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if (h, w) != tuple(self.kernel_size) or self.groups != 1 or any(self.padding) or self.padding_mode != "zeros":
            return super().forward(x)
        w_ = self.weight  # [O, C, k, k]; flattened in its own memory order so it is never copied
        if not w_.is_contiguous() and w_.is_contiguous(memory_format=torch.channels_last):
            x, w_ = x.permute(0, 2, 3, 1), w_.permute(0, 2, 3, 1)  # (h, w, c) order: views of channels_last
        y = F.linear(x.reshape(b, -1), w_.reshape(self.out_channels, -1), self.bias)  # [B, C*k*k] -> [B, O]
        return y.reshape(b, self.out_channels, 1, 1)


class FullKernelConvTranspose2d(_DenseWeight, nn.ConvTranspose2d):
    """The transposed counterpart: a padding-0 up-convolution of a 1x1 input to k x k
    ([B, C, 1, 1] -> [B, O, k, k], the bottleneck back to 4x4), computed as one matrix product
    [B, C] x [C, O*k*k]. Same parameters as nn.ConvTranspose2d; other inputs use the convolution."""

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        b, c, h, w = x.shape
        if ((h, w) != (1, 1) or output_size is not None or self.groups != 1 or any(self.padding)
                or any(self.output_padding) or any(d != 1 for d in self.dilation)):
            return super().forward(x, output_size)
        kh, kw = self.kernel_size
        w_ = self.weight  # [C, O, k, k]; flattened in its own memory order so it is never copied
        if not w_.is_contiguous() and w_.is_contiguous(memory_format=torch.channels_last):
            y = (x.reshape(b, c) @ w_.permute(0, 2, 3, 1).reshape(c, -1)).reshape(b, kh, kw, self.out_channels)
            y = y.permute(0, 3, 1, 2)  # [B, O, k, k] in channels_last memory
        else:
            y = (x.reshape(b, c) @ w_.reshape(c, -1)).reshape(b, self.out_channels, kh, kw)  # [B, O, k, k]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y


def _dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@dataclass
class InpaintNetConfig:
    """The official inpainting net at `paper()` (128 px in, 64 px centre, 4000-d bottleneck)."""

    input_size: int = 64
    widths: tuple[int, ...] = (32, 32, 64, 128)   # encoder widths (official 64-64-128-256-512)
    bottleneck: int = 512                         # official 4000
    disc_widths: tuple[int, ...] = (32, 64, 128)  # official 64-128-256-512

    @classmethod
    def paper(cls) -> "InpaintNetConfig":
        return cls(input_size=128, widths=(64, 64, 128, 256, 512), bottleneck=4000,
                   disc_widths=(64, 128, 256, 512))

    @property
    def pred_size(self) -> int:
        return self.input_size // 2

    @classmethod
    def from_dict(cls, d: dict) -> "InpaintNetConfig":
        names = {f.name for f in fields(cls)}
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names}
        return cls(**kw)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


class InpaintingCE(nn.Module):
    """DCGAN-style context encoder: [B,3,S,S] (hole erased) -> [B,3,S/2,S/2] centre prediction (tanh).

    Encoder: len(widths) 4x4 stride-2 convs (LeakyReLU 0.2, BatchNorm after all but the first) down to
    4x4, a 4x4 conv to the bottleneck (1x1); decoder: 4x4 up-conv to 4x4 then stride-2 up-convs to S/2.
    Widths are chosen so S / 2^len(widths) == 4 (128 px: 5 convs, as in the official code).
    Outputs are in [-1, 1] when `out_range="tanh"`; inputs/targets are normalised images, so the
    trainer scales them (see `losses.py`).
    """

    def __init__(self, cfg: InpaintNetConfig | None = None):
        super().__init__()
        cfg = cfg or InpaintNetConfig()
        self.cfg = cfg
        n_down = len(cfg.widths)
        if cfg.input_size != 4 * 2 ** n_down:
            raise ValueError(f"InpaintNetConfig: input_size {cfg.input_size} needs "
                             f"{int(math.log2(cfg.input_size / 4))} "
                             f"encoder widths, got {len(cfg.widths)}")
        enc: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(cfg.widths):
            enc.append(nn.Conv2d(cin, w, 4, 2, 1, bias=False))
            if i > 0:
                enc.append(nn.BatchNorm2d(w))
            enc.append(nn.LeakyReLU(0.2, inplace=True))
            cin = w
        enc += [FullKernelConv2d(cin, cfg.bottleneck, 4, 1, 0, bias=False), nn.BatchNorm2d(cfg.bottleneck),
                nn.LeakyReLU(0.2, inplace=True)]
        self.encoder = nn.Sequential(*enc)  # -> [B, bottleneck, 1, 1]
        n_up = n_down - 1  # 4 -> S/2
        dec_w = list(reversed(cfg.widths))[:n_up]  # e.g. 512, 256, 128, 64
        dec: list[nn.Module] = [FullKernelConvTranspose2d(cfg.bottleneck, dec_w[0], 4, 1, 0, bias=False),
                                nn.BatchNorm2d(dec_w[0]), nn.ReLU(inplace=True)]
        cin = dec_w[0]
        for i in range(1, n_up):
            dec += [nn.ConvTranspose2d(cin, dec_w[i], 4, 2, 1, bias=False), nn.BatchNorm2d(dec_w[i]),
                    nn.ReLU(inplace=True)]
            cin = dec_w[i]
        dec += [nn.ConvTranspose2d(cin, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)
        _dcgan_init(self)

    def forward_encoder(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is not None:
            x = x * (1.0 - mask)
        return self.encoder(x)

    def forward_decoder(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_decoder(self.forward_encoder(x, mask))


class Discriminator(nn.Module):
    """DCGAN discriminator on the predicted region [B,3,P,P] -> logits [B].

    len(widths) 4x4 stride-2 convs to 4x4 (LeakyReLU 0.2, BatchNorm after all but the first), then a
    4x4 conv to one logit. Any P is accepted: the input is resized to 4 * 2^len(widths).
    """

    def __init__(self, widths=(32, 64, 128), in_size: int | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            layers.append(nn.Conv2d(cin, w, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(w))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            cin = w
        layers.append(FullKernelConv2d(cin, 1, 4, 1, 0, bias=False))  # 4x4 -> one logit
        self.net = nn.Sequential(*layers)
        self.in_size = 4 * 2 ** len(widths)
        _dcgan_init(self)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_size or x.shape[-2] != self.in_size:
            x = F.interpolate(x, size=(self.in_size, self.in_size), mode="bilinear", align_corners=False)
        return self.net(x).flatten()


# --------------------------------------------------------------------------------------------------
# Supervised upper bound
# --------------------------------------------------------------------------------------------------


class SupervisedNet(nn.Module):
    """The same AlexNet encoder + a small head (global max+avg pool, dropout, linear) over C classes."""

    def __init__(self, encoder_cfg: AlexNetConfig | None = None, num_classes: int = 20, dropout: float = 0.5):
        super().__init__()
        self.encoder = AlexNetEncoder(encoder_cfg or AlexNetConfig())
        c = self.encoder.out_channels
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        f = self.encoder.forward_features(x)  # [B, C5, n, n]
        pooled = torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1)
        return self.head(self.dropout(pooled))  # logits [B, C]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
