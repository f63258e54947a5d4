"""``mmgen data ACTION``: dataset tools (``synth``, ``stats``, ``features``).

Each action is a pair of functions in ``ACTIONS``: one adds its arguments to a sub-subparser, the
other runs it and returns the exit code. The logic lives in :mod:`mmgen.data` and :mod:`mmgen.scenes`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmgen.commands import (
    UsageError,
    add_device_option,
    add_strict_paths_option,
    add_threads_option,
    apply_threads,
    non_negative_int,
    positive_int,
)


def _add_synth(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="output directory (captions_train.json, captions_val.json, images/)")
    p.add_argument("--n", type=positive_int, required=True, help="total number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=positive_int, default=64, help="side length in pixels (default: 64)")
    p.add_argument(
        "--split-val", type=non_negative_int, default=0, metavar="K", help="the last K images form the val split"
    )
    p.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format (default: png)")
    from mmgen.scenes import difficulties

    kinds = difficulties()
    described = "; ".join(f"{name}: {what}" for name, what in kinds.items())
    p.add_argument("--difficulty", choices=tuple(kinds), default="simple", help=f"{described} (default: simple)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_synth(args: argparse.Namespace) -> int:
    from mmgen.scenes.writer import make_scenes

    if args.split_val > args.n:
        raise UsageError(f"--split-val {args.split_val}: more than the {args.n} images of --n")

    summary = make_scenes(
        args.out,
        args.n,
        seed=args.seed,
        image_size=args.image_size,
        val=args.split_val,
        image_format=args.format,
        difficulty=args.difficulty,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    for split, path in summary["splits"].items():
        print(f"{split}: {path}")
    print(f"wrote {summary['n']} images in {summary['seconds']:.2f} s ({summary['images_per_second']:.0f} images/s)")
    return 0


def _add_stats(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="SOURCE",
        help="caption file(s) (COCO or Karpathy json, JSONL, CSV), HF dataset folder, shards or hub name",
    )
    p.add_argument("--images", default=None, help="images directory for COCO/Karpathy files and relative paths")
    add_strict_paths_option(p)
    p.add_argument("--split", default=None, help="keep one split (train/val/test) where the source has splits")
    p.add_argument("--no-restval", dest="restval", action="store_false", help="Karpathy: keep 'restval' apart")
    p.add_argument("--image-column", default=None)
    p.add_argument("--caption-column", default=None)
    p.add_argument("--no-decode", dest="decode", action="store_false", help="do not decode the images")
    p.add_argument(
        "--max-pixels", type=positive_int, default=None, help="decompression-bomb limit (default: DataConfig's)"
    )
    p.add_argument("--max-images", type=positive_int, default=None, help="only look at the first N images")
    p.add_argument("--workers", type=positive_int, default=4, help="decoding threads")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON instead of a report")


def _run_stats(args: argparse.Namespace) -> int:
    from mmgen.config import DataConfig
    from mmgen.data.records import DataFormatError
    from mmgen.data.sources import load_records
    from mmgen.data.stats import dataset_stats, format_stats, stats_dict

    try:
        records = load_records(
            args.data,
            images=args.images,
            split=args.split,
            restval=args.restval,
            image_column=args.image_column,
            caption_column=args.caption_column,
            keep_uncaptioned=True,  # counted, not hidden
            strict_paths=args.strict_paths,
        )
    except (DataFormatError, FileNotFoundError, ImportError) as e:
        print(f"mmgen data stats: {e}", file=sys.stderr)
        return 2
    max_pixels = args.max_pixels or DataConfig().max_pixels
    st = dataset_stats(
        records, decode=args.decode, max_pixels=max_pixels, workers=args.workers, max_images=args.max_images
    )
    print(json.dumps(stats_dict(st), indent=2) if args.as_json else format_stats(st))
    return 1 if st.failed else 0


def _add_features(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="training config whose frozen encoder and data are used")
    p.add_argument("--out", help="cache directory (default: train.feature_cache_dir or RUN_DIR/features)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="storage dtype (default: bf16 on GPU)")
    add_device_option(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    add_threads_option(p)
    p.set_defaults(positionals="overrides")


def _run_features(args: argparse.Namespace) -> int:
    from mmgen.distributed import cleanup_distributed

    apply_threads(args)
    try:
        cache = build_feature_cache_cli(args.config, args.overrides, args.out, dtype=args.dtype, device=args.device)
    finally:
        cleanup_distributed()
    print(
        f"feature cache: {cache.path} ({cache.num_records} images, features {tuple(cache.row_shape)}, "
        f"{len(cache.failed)} failed)"
    )
    return 0


def build_feature_cache_cli(
    config_path: str | Path | None,
    overrides: list[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    dtype: Any = None,
    shard_bytes: int | None = None,
    device: str | None = None,
) -> Any:
    """Build (or check) the feature cache a training run of a config would use, without training.

    The encoder is created as the trainer creates it (``torch.manual_seed(train.seed)`` first, so a
    random-init encoder gets the same weights), hence ``mmgen train`` reuses the cache.

    Args:
        config_path: A training config (YAML/JSON).
        overrides: Dotted overrides (``data.train=...``).
        out_dir: The cache directory (default ``train.feature_cache_dir``, else ``<train.out_dir>/features``).
        dtype: Storage dtype (name or torch dtype) (default: bfloat16 on CUDA, float32 on CPU).
        shard_bytes: Feature bytes per shard (default: the store's).
        device: 'cpu', 'cuda', ... (default: CUDA when available).

    Returns:
        The opened cache.
    """
    import torch

    from mmgen import distributed as D
    from mmgen.config import load_config
    from mmgen.data.features import ensure_feature_cache
    from mmgen.models.encoder import Encoder
    from mmgen.training import run_data as tdata

    # the cache holds the training split: a preset's placeholder data.val is never read; the paths used must exist
    cfg = load_config(config_path, [*(overrides or []), "data.val=null", "data.val_images=null"], check_paths=True)
    dist = D.init_distributed(device)
    run_dir = Path(cfg.train.out_dir)
    data = tdata.prepare(cfg, run_dir, dist)
    torch.manual_seed(cfg.train.seed)
    encoder = Encoder(cfg.model.encoder).to(dist.device)
    cache_dir = Path(out_dir or cfg.train.feature_cache_dir or run_dir / "features")
    sizes = {} if shard_bytes is None else {"shard_bytes": shard_bytes}
    return ensure_feature_cache(encoder, data.train_records, cache_dir, cfg, dist, dtype=dtype, **sizes)


ACTIONS: dict[str, tuple[str, Callable, Callable]] = {
    # name: (help, add_arguments, run)
    "synth": ("write a synthetic shapes-and-backgrounds caption dataset", _add_synth, _run_synth),
    "stats": ("statistics of a caption dataset and the images that fail to decode", _add_stats, _run_stats),
    "features": (
        "precompute frozen-encoder features for training (memory-mapped safetensors shards)",
        _add_features,
        _run_features,
    ),
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``mmgen data`` and its actions."""
    names = ", ".join(ACTIONS)
    p = subparsers.add_parser("data", help=f"dataset tools: {names}", description=f"Dataset tools: {names}.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    for name, (help_text, add_args, _) in ACTIONS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    p.set_defaults(func=run, _data_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen action; without one, print the help."""
    action = ACTIONS.get(getattr(args, "data_command", None) or "")
    if action is None:
        args._data_parser.print_help()
        return 2
    return int(action[2](args) or 0)
