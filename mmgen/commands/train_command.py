"""``mmgen train``: train a captioner from a YAML config with dotted overrides (torchrun-aware)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mmgen.commands import UsageError, add_threads_option


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a captioner (one process, or many under torchrun)",
        description="Train from a YAML config. Overrides are dotted keys: train.lr=3e-4 model.projector.kind=mlp. "
        "Launch on N GPUs / nodes with scripts/train.sh (torchrun).",
    )
    p.add_argument("--config", type=Path, help="YAML config (see configs/)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in train.out_dir although an earlier run left files there (deletes its checkpoints, best/, "
        "final/, tokenizer/, metrics and curves; keeps data/ and features/)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (YAML, every key with its help and default) and exit without training",
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    add_threads_option(p)  # the same as the override train.threads=N (saved with the run's config)
    p.set_defaults(func=run, positionals="overrides")


def run(args: argparse.Namespace) -> int:
    from mmgen.config import load_config
    from mmgen.distributed import cleanup_distributed
    from mmgen.training.objectives import build_trainer

    if args.resume is not None and args.overwrite:
        raise UsageError("--resume continues a run, --overwrite starts over: use one of them")
    if args.threads is not None:
        args.overrides = [*args.overrides, f"train.threads={args.threads}"]  # applied by the trainer, saved
    if args.resume is not None:
        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise UsageError(f"--resume {args.resume}: no config.yaml there; is it a run directory?")
        cfg = load_config(saved, args.overrides)
    elif args.print_config:
        cfg = load_config(args.config, args.overrides)  # defaults alone when there is no --config
    else:
        if args.config is None:
            raise UsageError("--config is required (or --resume RUN_DIR)")
        cfg = load_config(args.config, args.overrides, check_paths=True)  # missing paths fail before any work
    if args.print_config:
        from mmgen.config import describe_config

        print(describe_config(cfg))
        return 0
    try:  # a RunDirError (2), a diverging run (1): one line each, printed by mmgen.commands.cli
        trainer = build_trainer(cfg, resume=args.resume, overwrite=args.overwrite)
        if trainer.finished:  # said so; nothing was written
            return 0
        scores = trainer.fit()
        if trainer.dist.is_main:
            print(f"run directory: {trainer.run_dir}")
            if scores:
                print("final: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float)))
    finally:
        cleanup_distributed()
    return 0
