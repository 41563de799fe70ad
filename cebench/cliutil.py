"""Small helpers shared by the stage CLIs (argument parsing only; no stage logic)."""

from __future__ import annotations

from pathlib import Path

from cebench.errors import ConfigError


def split_overrides(overrides, *sections: str) -> dict[str, list[str]]:
    """Route `data.demo=tiny` to section "data" (prefix removed); everything else to "" (the stage)."""
    out: dict[str, list[str]] = {"": [], **{s: [] for s in sections}}
    for item in overrides or []:
        key = item.split("=", 1)[0]
        head = key.split(".", 1)[0]
        if head in sections and "." in key:
            out[head].append(item[len(head) + 1:])
        else:
            out[""].append(item)
    return out


def add_cache_arg(parser) -> None:
    """`--cache DIR`: where a command keeps what it derives from the data (see cebench.cache)."""
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="folder for derived files (proposals, decoded images); never the data folder "
                             "(default: $CEBENCH_CACHE, else OUT/cache)")


def out_dir(args, default: str) -> Path:
    path = Path(args.out or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_seeds(text: str) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]; `--seeds ,` -> [] (lr selection on val only, no test runs)."""
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
