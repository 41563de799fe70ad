"""Loading the AlexNet encoder from any cebench checkpoint, or from torchvision's ImageNet weights.

`transfer` and `retrieval` build on the pretrained encoders only through `load_encoder` (the one loader of an
encoder checkpoint; `encoder_from_checkpoint` when its dict is already read) and `imagenet_alexnet_encoder`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cebench.checkpoint import (
    load_checkpoint,
    load_state_strict,
    save_checkpoint,
    strip_prefixes,
    sub_state_dict,
)
from cebench.errors import CebenchError, CheckpointError

from .models import INPUT_SPACES, AlexNetConfig, AlexNetEncoder

IMAGENET_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1
IMAGENET_ALEXNET_URL = f"https://download.pytorch.org/models/{IMAGENET_ALEXNET_FILE}"
# torchvision AlexNet `features.<i>` index -> our conv name
_TV_CONVS = {0: "conv1", 3: "conv2", 6: "conv3", 8: "conv4", 10: "conv5"}


def load_encoder(path, *, expect: str | None = None) -> AlexNetEncoder:
    """The encoder (eval mode, CPU) of a cebench checkpoint file (ce / ce-adv / ae / supervised / a pretext
    method / a plugged-in learner): `encoder_from_checkpoint` of `cebench.checkpoint.load_checkpoint(path)`.
    Its config is `encoder.cfg`; what else the checkpoint records (method, step) is in the file's dict."""
    return encoder_from_checkpoint(load_checkpoint(path), path, expect=expect)


def encoder_from_checkpoint(ckpt: dict, path="checkpoint", *, expect: str | None = None) -> AlexNetEncoder:
    """The encoder (eval mode, CPU) of a checkpoint dict already read (`path` names it in errors).

    The checkpoint's `arch["encoder"]` gives the AlexNetConfig; the encoder weights are the model's
    `encoder.*` keys (or all keys, for a checkpoint holding a bare encoder). Strict: a CheckpointError
    lists missing / unexpected keys. `expect`: a method name the checkpoint must have been trained with
    (`arch["name"]`). `arch["input_space"]` ("lab" for the colorization row, absent = "rgb") says what
    conv1 reads: a "lab" encoder takes the same normalised RGB input as every other and converts it to
    Lab itself.
    """
    arch = ckpt.get("arch") or {}
    if not isinstance(arch, dict) or "encoder" not in arch:
        raise CheckpointError(f"{path}: no AlexNet encoder in this checkpoint (arch has no 'encoder' entry; "
                              f"arch name {arch.get('name') if isinstance(arch, dict) else None!r})")
    method = arch.get("name")
    if expect is not None and method != expect:
        raise CheckpointError(f"{path}: expected a {expect!r} checkpoint, found {method!r}")
    cfg = AlexNetConfig.from_dict(arch["encoder"])
    space = arch.get("input_space", "rgb")
    if space not in INPUT_SPACES:
        raise CheckpointError(f"{path}: unknown encoder input_space {space!r} (known: {', '.join(INPUT_SPACES)})")
    model_sd = strip_prefixes(ckpt.get("model") or {})
    enc_sd = sub_state_dict(model_sd, "encoder")
    if not enc_sd:
        enc_sd = model_sd
    encoder = AlexNetEncoder(cfg, input_space=space)
    load_state_strict(encoder, enc_sd, path)
    return encoder.eval()


def save_encoder_checkpoint(path, encoder: AlexNetEncoder, method: str = "encoder", config: dict | None = None,
                            step: int = 0) -> Path:
    """Write a bare-encoder checkpoint in our format (for plugged-in learners); `load_encoder` reads it."""
    arch = {"name": method, "encoder": encoder.cfg.to_dict()}
    if getattr(encoder, "input_space", "rgb") != "rgb":  # a Lab-input encoder (colorization) stays one
        arch["input_space"] = encoder.input_space
    state = {"model": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}, "optimizer": None,
             "scaler": None, "step": step, "epoch": 0, "config": config or {}, "arch": arch}
    return save_checkpoint(path, state)


def imagenet_weights_path(weights_path=None) -> Path:
    if weights_path:
        return Path(weights_path)
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_ALEXNET_FILE


def imagenet_weights_help(path: Path | None = None) -> str:
    """Where the ImageNet AlexNet weights go, in one line."""
    path = path or imagenet_weights_path()
    return (f"place {IMAGENET_ALEXNET_FILE} (from {IMAGENET_ALEXNET_URL}) in {path.parent}, or fetch it with "
            "`cebench imagenet-weights --download` (cebench run: imagenet.download=true)")


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within `timeout` s, else the reason. Name lookup
    and connection run in a daemon thread, so a resolver that hangs cannot hold the caller longer."""
    import socket
    import threading

    result: dict = {}

    def probe():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if result.get("ok"):
        return None
    return result.get("error") or f"no answer within {timeout:g} s"


def fetch_imagenet_weights(*, timeout: float = 5.0, progress: bool = True) -> Path:
    """Opt-in download of torchvision's `AlexNet_Weights.IMAGENET1K_V1` into the torch hub cache
    (`<TORCH_HOME>/hub/checkpoints`, with torchvision's progress bar and its hash check). Returns the file
    at once when it is already there. Without network it fails within about `timeout` seconds with a
    CebenchError saying what to place where; nothing else in the suite downloads."""
    from urllib.parse import urlparse

    path = imagenet_weights_path()
    if path.is_file():
        return path
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    host = urlparse(url).hostname or "download.pytorch.org"
    reason = _reachable(host, 443, timeout)
    if reason is not None:
        raise CebenchError(f"cannot download the ImageNet AlexNet weights ({host} unreachable: {reason}); "
                           + imagenet_weights_help(path))
    import socket

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60.0)  # a stalled transfer fails instead of hanging the run
    try:
        AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=progress, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the transfer becomes one line
        raise CebenchError(f"downloading {url} failed ({type(exc).__name__}: {str(exc)[:160]}); "
                           + imagenet_weights_help(path)) from None
    finally:
        socket.setdefaulttimeout(previous)
    if not path.is_file():  # torchvision saved it under another name or folder
        raise CebenchError(f"downloaded {url} but {path} is missing; " + imagenet_weights_help(path))
    return path


def imagenet_alexnet_encoder(weights_path=None) -> AlexNetEncoder:
    """torchvision's ImageNet AlexNet conv1..pool5 as an AlexNetEncoder (AlexNetConfig.paper()).

    Reads the local torch hub cache (or `weights_path`); never downloads.
    """
    path = imagenet_weights_path(weights_path)
    if not path.is_file():
        raise CheckpointError(f"ImageNet AlexNet weights unavailable: {imagenet_weights_help(path)}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear line
        raise CheckpointError(f"{path}: unreadable ImageNet AlexNet weights ({type(exc).__name__})") from None
    mapped = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "features" and int(parts[1]) in _TV_CONVS:
            mapped[f"{_TV_CONVS[int(parts[1])]}.{parts[2]}"] = value
    encoder = AlexNetEncoder(AlexNetConfig.paper())
    load_state_strict(encoder, mapped, path)
    encoder.eval()
    return encoder
