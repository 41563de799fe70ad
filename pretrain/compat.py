"""AlexNet-compatible encoders from outside the suite: the interface, an adapter, the exact conversion.

Every stage rebuilds a plugged-in learner as the suite's own `AlexNetEncoder` from a checkpoint, so
"AlexNet-compatible" means: the module computes the same function as some `AlexNetEncoder(cfg)`.

- `AlexNetLike`: the interface (a `typing.Protocol`) such a module exposes; `AlexNetEncoder` has it.
- `SequentialAlexNet`: an adapter for an `nn.Sequential` trunk in torchvision's AlexNet layout
  (`torchvision.models.alexnet().features`, optionally with a BatchNorm2d after each conv).
- `to_alexnet_encoder(module)`: the equivalent `AlexNetEncoder`, found from the five convolutions and
  verified numerically at every named layer, so a checkpoint never benchmarks a different function.
- `save_encoder(module, path)`: the suite's checkpoint format, for any `AlexNetLike` module
  (`cebench.load_encoder` reads it back: `cebench.pretrain.loading.load_encoder`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from cebench.errors import CebenchError

from .loading import save_encoder_checkpoint
from .models import AlexNetConfig, AlexNetEncoder

LAYER_NAMES = AlexNetEncoder.layer_names  # conv1 pool1 conv2 pool2 conv3 conv4 conv5 pool5
# pool geometries AlexNetConfig can express (stride 2 always): torchvision/paper (3, 0), the demo (3, 1)
_POOLS = ((3, 0), (3, 1), (2, 0), (2, 1))


@runtime_checkable
class AlexNetLike(Protocol):
    """What the suite needs from a plugged-in encoder (RGB input normalised with the ImageNet mean/std).

    `cebench.pretrain.models.AlexNetEncoder` and `SequentialAlexNet` both satisfy it. An optional
    `norms()` returning five `nn.BatchNorm2d` (or five `nn.Identity`), applied between each conv and
    its ReLU, declares batch normalisation.
    """

    layer_names: tuple[str, ...]   # exactly LAYER_NAMES
    input_size: int                # square input side the weights expect (stages resize to it)
    out_channels: int              # pool5 channels
    out_size: int                  # pool5 spatial side n (pool5 is [B, out_channels, n, n])

    def convs(self) -> list[tuple[str, nn.Conv2d]]:
        """The five convolutions in order, named conv1..conv5."""
        ...

    def feature_stride(self, layer: str) -> int:
        """Input pixels per feature cell at `layer`."""
        ...

    def forward_intermediates(self, x: Tensor, layers=("pool5",)) -> dict[str, Tensor]:
        """[B, 3, S, S] -> {name: output} for the asked layers (conv layers after their ReLU)."""
        ...

    def forward_features(self, x: Tensor) -> Tensor:
        """[B, 3, S, S] -> pool5 [B, out_channels, out_size, out_size]."""
        ...


class SequentialAlexNet(nn.Module):
    """An `nn.Sequential` AlexNet trunk (torchvision layout) behind the `AlexNetLike` interface.

    Layout: five blocks `Conv2d [BatchNorm2d] ReLU`, with a `MaxPool2d` after blocks 1, 2 and 5, e.g.
    `torchvision.models.alexnet().features`. The module is used as is (no copy): weights trained in
    it are the weights benchmarked. `input_size`: the side the trunk was trained at.
    """

    layer_names = LAYER_NAMES

    def __init__(self, features: nn.Sequential, *, input_size: int = 227):
        super().__init__()
        self.features = features
        self.input_size = int(input_size)
        self._taps, self._convs, self._norms = _parse_layout(features)
        with torch.no_grad():  # one pass at the declared size gives pool5's shape
            p = next(features.parameters())
            x = torch.zeros(1, 3, self.input_size, self.input_size, dtype=p.dtype, device=p.device)
            pool5 = self.forward_features(x)
        self.out_channels, self.out_size = int(pool5.shape[1]), int(pool5.shape[-1])
        # input px per feature cell: the product of the conv and pool strides up to each tap
        self._strides, stride = {}, 1
        for idx, layer in enumerate(features):
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                stride *= _pair(layer.stride)[0]
            self._strides.update({n: stride for n, t in self._taps.items() if t == idx})

    def convs(self) -> list[tuple[str, nn.Conv2d]]:
        return [(f"conv{i}", self.features[j]) for i, j in enumerate(self._convs, 1)]

    def norms(self) -> list[nn.Module]:
        return [self.features[j] if j is not None else nn.Identity() for j in self._norms]

    def feature_stride(self, layer: str) -> int:
        if layer not in self._strides:
            raise ValueError(f"unknown layer {layer!r}; choose one of {LAYER_NAMES}")
        return self._strides[layer]

    def forward_intermediates(self, x: Tensor, layers=("pool5",)) -> dict[str, Tensor]:
        layers = tuple(layers)
        bad = [n for n in layers if n not in LAYER_NAMES]
        if bad:
            raise ValueError(f"unknown layer(s) {bad}; choose from {LAYER_NAMES}")
        last = max(self._taps[n] for n in layers)
        out: dict[str, Tensor] = {}
        for idx in range(last + 1):
            x = self.features[idx](x)  # a tap is a ReLU / pool output; the next layer never writes in place
            for name in layers:
                if self._taps[name] == idx:
                    out[name] = x
        return out

    def forward_features(self, x: Tensor) -> Tensor:
        return self.forward_intermediates(x, ("pool5",))["pool5"]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


def _parse_layout(features: nn.Sequential):
    """Indices of each named layer's output, of the five convs and of their BatchNorms (or None)."""
    if not isinstance(features, nn.Sequential):
        raise CebenchError(f"SequentialAlexNet needs an nn.Sequential, got {type(features).__name__}")
    layers = list(features)
    taps: dict[str, int] = {}
    convs: list[int] = []
    norms: list[int | None] = []
    i, where = 0, "SequentialAlexNet"
    for block in range(1, 6):
        if i >= len(layers) or not isinstance(layers[i], nn.Conv2d):
            found = type(layers[i]).__name__ if i < len(layers) else "the end"
            raise CebenchError(f"{where}: expected Conv2d (conv{block}) at index {i}, found {found}; the layout is "
                               "Conv2d [BatchNorm2d] ReLU blocks with MaxPool2d after conv1, conv2, conv5")
        convs.append(i)
        i += 1
        if i < len(layers) and isinstance(layers[i], nn.BatchNorm2d):
            norms.append(i)
            i += 1
        else:
            norms.append(None)
        if i >= len(layers) or not isinstance(layers[i], nn.ReLU):
            found = type(layers[i]).__name__ if i < len(layers) else "the end"
            raise CebenchError(f"{where}: expected ReLU after conv{block} at index {i}, found {found} "
                               "(the suite's AlexNet encoder has conv [BatchNorm] ReLU blocks and max pools only)")
        taps[f"conv{block}"] = i
        i += 1
        if block in (1, 2, 5):
            if i >= len(layers) or not isinstance(layers[i], nn.MaxPool2d):
                found = type(layers[i]).__name__ if i < len(layers) else "the end"
                raise CebenchError(f"{where}: expected MaxPool2d (pool{block}) at index {i}, found {found}")
            taps[f"pool{block}"] = i
            i += 1
    if i != len(layers):
        raise CebenchError(f"{where}: unexpected {type(layers[i]).__name__} at index {i} after pool5")
    if any(n is None for n in norms) and any(n is not None for n in norms):
        raise CebenchError(f"{where}: BatchNorm2d after some convs only; the suite's encoder has it after all "
                           "five or none")
    return taps, convs, norms


# --------------------------------------------------------------------------------------------------
# conversion to the suite's AlexNetEncoder
# --------------------------------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _square(conv: nn.Conv2d, name: str, what: str) -> dict:
    """Geometry of one conv; CebenchError unless AlexNetEncoder can hold it."""
    k, s, p = _pair(conv.kernel_size), _pair(conv.stride), conv.padding
    if isinstance(p, str):
        raise CebenchError(f"{what}: {name} uses padding={p!r}; give integer padding")
    p = _pair(p)
    if k[0] != k[1] or s[0] != s[1] or p[0] != p[1]:
        raise CebenchError(f"{what}: {name} is not square (kernel {k}, stride {s}, padding {p})")
    if conv.groups != 1 or _pair(conv.dilation) != (1, 1) or conv.padding_mode != "zeros":
        raise CebenchError(f"{what}: {name} has groups={conv.groups}, dilation={conv.dilation}, "
                           f"padding_mode={conv.padding_mode!r}; the suite's encoder needs 1, 1, 'zeros'")
    return {"kernel": k[0], "stride": s[0], "padding": p[0], "cin": conv.in_channels, "cout": conv.out_channels}


def _geometry(module, what: str) -> tuple[dict, list[nn.Conv2d], list[nn.Module]]:
    """AlexNetConfig fields given by the convs and norms (all but the pool), plus those layers."""
    missing = [m for m in ("layer_names", "input_size", "convs", "forward_intermediates") if not hasattr(module, m)]
    if missing:
        raise CebenchError(f"{what} is not AlexNet-compatible: it lacks {', '.join(missing)} "
                           "(the interface is cebench.AlexNetLike; cebench.SequentialAlexNet wraps a torchvision "
                           "AlexNet trunk)")
    if tuple(module.layer_names) != LAYER_NAMES:
        raise CebenchError(f"{what}: layer_names must be {LAYER_NAMES}, got {tuple(module.layer_names)}")
    named = list(module.convs())
    names_ok = [n for n, _ in named] == [f"conv{i}" for i in range(1, 6)]
    if not names_ok or not all(isinstance(c, nn.Conv2d) for _, c in named):
        raise CebenchError(f"{what}: convs() must return [('conv1', Conv2d), ..., ('conv5', Conv2d)], got "
                           f"{[(n, type(c).__name__) for n, c in named]}")
    geo = [_square(c, n, what) for n, c in named]
    if geo[0]["cin"] != 3:
        raise CebenchError(f"{what}: conv1 takes {geo[0]['cin']} input channels; the suite feeds RGB (3)")
    for i in range(1, 5):
        if geo[i]["cin"] != geo[i - 1]["cout"]:
            raise CebenchError(f"{what}: conv{i + 1} takes {geo[i]['cin']} channels but conv{i} gives "
                               f"{geo[i - 1]['cout']}")
    g2 = geo[1]
    if g2["stride"] != 1 or g2["padding"] != g2["kernel"] // 2:
        raise CebenchError(f"{what}: conv2 needs stride 1 and padding kernel//2 ({g2['kernel'] // 2}), has "
                           f"stride {g2['stride']}, padding {g2['padding']}")
    for i in (2, 3, 4):
        if (geo[i]["kernel"], geo[i]["stride"], geo[i]["padding"]) != (3, 1, 1):
            raise CebenchError(f"{what}: conv{i + 1} needs kernel 3, stride 1, padding 1, has kernel "
                               f"{geo[i]['kernel']}, stride {geo[i]['stride']}, padding {geo[i]['padding']}")
    norms = list(module.norms()) if callable(getattr(module, "norms", None)) else [nn.Identity()] * 5
    kinds = {type(n) for n in norms}
    if len(norms) != 5 or not (kinds <= {nn.BatchNorm2d} or kinds <= {nn.Identity}):
        raise CebenchError(f"{what}: norms() must give five BatchNorm2d or five Identity, got "
                           f"{[type(n).__name__ for n in norms]}")
    for i, n in enumerate(norms, 1):
        if isinstance(n, nn.BatchNorm2d) and (not n.affine or not n.track_running_stats or n.eps != 1e-5
                                              or n.num_features != geo[i - 1]["cout"]):
            raise CebenchError(f"{what}: norm {i} must be BatchNorm2d({geo[i - 1]['cout']}) with affine weights, "
                               f"running statistics and eps 1e-5")
    fields = {"channels": tuple(g["cout"] for g in geo), "conv1_kernel": geo[0]["kernel"],
              "conv1_stride": geo[0]["stride"], "conv1_padding": geo[0]["padding"], "conv2_kernel": g2["kernel"],
              "input_size": int(module.input_size), "norm": "batch" if kinds == {nn.BatchNorm2d} else "none"}
    return fields, [c for _, c in named], norms


def _copy_weights(enc: AlexNetEncoder, convs: list[nn.Conv2d], norms: list[nn.Module]) -> None:
    with torch.no_grad():
        for i, (conv, norm) in enumerate(zip(convs, norms, strict=True), 1):
            mine = getattr(enc, f"conv{i}")
            mine.weight.copy_(conv.weight.detach().to("cpu", torch.float32))
            if conv.bias is None:
                mine.bias.zero_()
            else:
                mine.bias.copy_(conv.bias.detach().to("cpu", torch.float32))
            if isinstance(norm, nn.BatchNorm2d):
                bn = getattr(enc, f"bn{i}")
                for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    getattr(bn, key).copy_(getattr(norm, key).detach().to("cpu"))


def _max_rel_diff(ref: Tensor, got: Tensor) -> float:
    return float((ref - got).abs().max() / ref.abs().max().clamp_min(1.0))


@torch.no_grad()
def to_alexnet_encoder(module, *, tolerance: float = 1e-3) -> AlexNetEncoder:
    """The suite's `AlexNetEncoder` computing the same function as `module` (on the CPU, eval mode).

    The conv widths, kernels, strides and norms come from `convs()` / `norms()`; the pool geometry is
    the one (of those AlexNetConfig can express) under which all eight named layers agree with the
    module's own `forward_intermediates` on a fixed random batch, to `tolerance` relative to each
    layer's largest activation. Raises CebenchError saying which layer differs otherwise.
    """
    if isinstance(module, AlexNetEncoder):
        return module
    what = type(module).__name__
    fields, convs, norms = _geometry(module, what)
    was_training = module.training if isinstance(module, nn.Module) else False
    if isinstance(module, nn.Module):
        module.eval()
    try:
        dev = convs[0].weight.device
        size = fields["input_size"]
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))  # [2, 3, S, S]
        theirs = {k: v.detach().to("cpu", torch.float32)
                  for k, v in module.forward_intermediates(x.to(dev, convs[0].weight.dtype), LAYER_NAMES).items()}
        if set(theirs) != set(LAYER_NAMES):
            raise CebenchError(f"{what}: forward_intermediates(x, layer_names) returned {sorted(theirs)}")
        best = None
        for kernel, padding in _POOLS:
            try:
                enc = AlexNetEncoder(AlexNetConfig(**fields, pool_kernel=kernel, pool_padding=padding))
            except ValueError:
                continue  # this pool leaves nothing at the declared input size
            _copy_weights(enc, convs, norms)
            enc.eval()
            ours = enc.forward_intermediates(x, LAYER_NAMES)
            bad = [(n, "shape", tuple(theirs[n].shape), tuple(ours[n].shape)) for n in LAYER_NAMES
                   if theirs[n].shape != ours[n].shape]
            if not bad:
                diffs = {n: _max_rel_diff(theirs[n], ours[n]) for n in LAYER_NAMES}
                bad = [(n, "value", d, None) for n, d in diffs.items() if d > tolerance]
            if not bad:
                return enc
            if best is None or (bad[0][1] == "value" and best[1][1] == "shape"):
                best = ((kernel, padding), bad[0])
        if best is None:
            raise CebenchError(f"{what}: input_size {size} is too small for its conv1 and pools")
        (kernel, padding), (name, kind, a, b) = best
        detail = (f"{name} has shape {a}, AlexNetEncoder gives {b}" if kind == "shape"
                  else f"{name} differs by {a:.3g} (relative)")
        raise CebenchError(f"{what} is not AlexNet-compatible: with the widths, kernels and strides of its convs "
                           f"(and max pool {kernel}/2, padding {padding}) {detail}; the suite would benchmark a "
                           "different function (conv [BatchNorm] ReLU blocks, max pools after conv1, conv2, conv5)")
    finally:
        if isinstance(module, nn.Module):
            module.train(was_training)


def state_digest(encoder: AlexNetEncoder) -> str:
    """sha256 of the architecture and every tensor: names the checkpoint so new weights rerun the stages."""
    h = hashlib.sha256(repr(sorted(encoder.cfg.to_dict().items())).encode())
    for key, value in sorted(encoder.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_encoder(module, path, *, method: str = "plugin") -> Path:
    """Write `module` (any AlexNetLike) in the suite's checkpoint format; returns the path.

    Verified first (`to_alexnet_encoder`): what is saved computes what the module computes.
    """
    return save_encoder_checkpoint(path, to_alexnet_encoder(module), method=method)

