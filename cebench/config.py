"""Typed configuration: YAML file, then `key=value` overrides, resolved config saved beside outputs.

Each stage declares a dataclass; `load_config` fills it from one section of a YAML file and applies
command-line overrides (`lr=3e-3`, `encoder.norm=batch`). Unknown keys are rejected with the list of
valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .io import atomic_write_text


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def _unwrap_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(value, tp, where: str):
    """Convert a YAML/CLI value to the declared field type, with a clear error."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {getattr(tp, '__name__', tp)})")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        elem = args[0] if args else Any
        items = [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    try:
        if tp is bool:
            if isinstance(value, str):
                low = value.lower()
                if low in ("true", "1", "yes", "on"):
                    return True
                if low in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: cannot read {value!r} as {tp.__name__}") from None
    return value


def _build(cls, data: dict, where: str):
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value, cls, where: str) -> None:
    keys = dotted.split(".")
    node, node_cls = data, cls
    for i, key in enumerate(keys):
        types_ = _field_types(node_cls) if dataclasses.is_dataclass(node_cls) else None
        if types_ is not None and key not in types_:
            raise ConfigError(
                f"{where}: unknown key '{'.'.join(keys[: i + 1])}'; valid keys: {', '.join(sorted(types_))}"
            )
        if i == len(keys) - 1:
            node[key] = value
            return
        sub_tp = _unwrap_optional(types_[key])[0] if types_ else Any
        if not isinstance(node.get(key), dict):
            current = node.get(key)
            node[key] = config_to_dict(current) if dataclasses.is_dataclass(current) else {}
        node, node_cls = node[key], sub_tp


def parse_overrides(overrides) -> list[tuple[str, Any]]:
    pairs = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        pairs.append((key, yaml.safe_load(raw) if raw != "" else ""))
    return pairs


def read_yaml(path) -> dict:
    """The mapping in a YAML config file; ConfigError naming the file for anything else."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a YAML config file (or one of tiny, demo, paper)")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (neither one of tiny, demo, paper nor an existing YAML file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML config file (not UTF-8 text)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, found {type(data).__name__}")
    return data


def config_from_dict(cls, data: dict, where: str = ""):
    """`cls` from a mapping (a section of a resolved config file), unknown keys refused as in `load_config`."""
    return _build(cls, dict(data), where)


def load_config(cls, path=None, overrides=(), section: str | None = None):
    """Build `cls` from `path` (optionally one `section` of it) and `key=value` overrides.

    With a `section`, an override may carry the section's own prefix (`pretrain.steps=3` as well as
    `steps=3`), so a key copied from a `cebench run` command line works in the stage command too."""
    data: dict = {}
    where = str(path) if path is not None else cls.__name__
    if path is not None:
        full = read_yaml(path)
        if section is not None:
            data = full.get(section) or {}
            where = f"{path} [{section}]"
            if not isinstance(data, dict):
                raise ConfigError(f"{where}: section must be a mapping")
        else:
            data = full
    data = dict(data)
    own = set(_field_types(cls))
    for key, value in parse_overrides(overrides):
        # `pretrain.steps=500` (the form `cebench run` needs) means `steps=500` in the pretrain section
        head, dot, rest = key.partition(".")
        dotted = rest if section is not None and head == section and dot and head not in own else key
        _set_dotted(data, dotted, value, cls, f"override {key}")
    return _build(cls, data, where if path is not None else "")


def config_to_dict(cfg) -> dict:
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return conv(cfg)


def save_config(cfg, out_dir, name: str = "config.yaml") -> Path:
    """Write the resolved config beside the outputs it produced."""
    path = Path(out_dir) / name
    data = config_to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path
