from dataclasses import dataclass, field

import pytest
import yaml

from cebench.cache import cache_key
from cebench.config import load_config, save_config
from cebench.errors import ConfigError


@dataclass
class Inner:
    norm: str = "batch"
    width: float = 1.0


@dataclass
class Stage:
    lr: float = 1e-3
    steps: int = 10
    seeds: tuple[int, ...] = (0, 1)
    use_amp: bool = False
    name: str | None = None
    encoder: Inner = field(default_factory=Inner)


def write(tmp_path, data):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_yaml_section_and_overrides(tmp_path):
    p = write(tmp_path, {"stage": {"lr": 0.01, "encoder": {"norm": "none"}}, "other": {"x": 1}})
    cfg = load_config(Stage, p, ["steps=5", "encoder.width=0.5", "seeds=3,4,5", "use_amp=true"], section="stage")
    assert cfg.lr == 0.01 and cfg.steps == 5
    assert cfg.encoder == Inner(norm="none", width=0.5)
    assert cfg.seeds == (3, 4, 5)
    assert cfg.use_amp is True


def test_unknown_key_lists_valid_keys(tmp_path):
    p = write(tmp_path, {"stage": {"lrr": 0.01}})
    with pytest.raises(ConfigError) as exc:
        load_config(Stage, p, section="stage")
    msg = str(exc.value)
    assert "lrr" in msg and "valid keys" in msg and "steps" in msg and str(p) in msg
    with pytest.raises(ConfigError, match="encoder.depth"):
        load_config(Stage, None, ["encoder.depth=3"])


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read 'abc' as int"):
        load_config(Stage, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Stage, None, ["steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Stage, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Stage, bad, section="stage")


def test_save_roundtrip_and_hash(tmp_path):
    cfg = load_config(Stage, None, ["lr=0.5"])
    path = save_config(cfg, tmp_path / "out")
    again = load_config(Stage, path)
    assert again == cfg
    assert cache_key(cfg) == cache_key(again)
    assert cache_key(cfg) != cache_key(load_config(Stage, None, ["lr=0.25"]))


def test_bundled_configs_parse():
    from cebench.benchmarks.cli import resolve_config
    from cebench.config import read_yaml

    for name in ("tiny", "demo", "paper"):
        data = read_yaml(resolve_config(name))
        assert {"data", "pretrain", "transfer"} <= set(data)


def test_parse_seeds_shared_by_transfer_clis():
    from cebench.cliutil import parse_seeds

    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 3 , 4") == [3, 4]
    assert parse_seeds(",") == []  # lr selection on val only
    with pytest.raises(ConfigError, match=r"--seeds 'x,1': expected comma-separated integers"):
        parse_seeds("x,1")
