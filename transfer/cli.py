"""`cebench transfer cls|seg|svm|det`: fine-tuning and frozen-feature transfer for any set of inits.

    cebench transfer cls --init random --init "context encoder=runs/ce/checkpoint.pt" \
        --init supervised=runs/sup/checkpoint.pt --init imagenet --seeds 0,1,2 --out runs/cls

Wiring only: one subcommand per entry of `tasks.TASKS`, all with the same `--init` / `--seeds` flags and
the `transfer:` config section (`transfer.seeds=[...]` drives every task; `det.iterations=...` one task).
"""

from __future__ import annotations

from cebench.cliutil import add_cache_arg, parse_seeds, split_overrides
from cebench.cliutil import out_dir as make_out_dir
from cebench.config import load_config
from cebench.data.sources import DataConfig
from cebench.runtime import choose_device, cleanup, resolve_amp

from .common import job_runtime
from .config import TransferConfig
from .tasks import TASKS, main


def _run(args) -> int:
    ov = split_overrides(args.overrides, "data")
    cfg = load_config(TransferConfig, args.config, ov[""], section="transfer")
    if args.seeds:
        cfg.seeds = parse_seeds(args.seeds)
    data_cfg = load_config(DataConfig, args.config, ov["data"], section="data")
    out = make_out_dir(args, f"runs/transfer/{args.task}")
    # the precision, resolved once for the command (`cebench run` hands it resolved in the config file)
    cfg.runtime.amp = resolve_amp(cfg.runtime.amp, choose_device(args.device))
    rt = job_runtime(cfg.runtime, args.device)  # under torchrun: joins the process group once, its own GPU
    try:
        main(args.task, cfg, data_cfg, args.init or ["random"], out, args.device, data=args.data,
             prepare_only=getattr(args, "prepare_only", False), cache=args.cache)
    finally:
        cleanup(rt)
    return 0


def register(subparsers, common) -> None:
    p = subparsers.add_parser("transfer", help="transfer: fine-tune (cls, seg, det) or frozen features (svm)",
                              description="Transfer an AlexNet initialisation to VOC tasks.")
    sub = p.add_subparsers(dest="transfer_task", metavar="TASK", required=True)
    for name, task in TASKS.items():
        q = sub.add_parser(name, parents=[common], help=task.help, description=task.help)
        q.add_argument("--init", action="append", metavar="NAME[=CKPT]",
                       help="initialisation, repeatable: random | imagenet | 'context encoder=CKPT' | "
                            "autoencoder=CKPT | supervised=CKPT | ANY_NAME=CKPT (default: random)")
        q.add_argument("--seeds", default=None,
                       help="comma-separated seeds (default: transfer.seeds of the config); ',' = lr selection on "
                            "val only")
        if task.prepare_flag:
            q.add_argument(task.prepare_flag, dest="prepare_only", action="store_true",
                           help="only the preparation the jobs share (det: compute or check the cached proposals)")
        add_cache_arg(q)
        q.set_defaults(func=_run, task=name)


__all__ = ["register"]
