"""``mmgen evaluate``: caption a dataset with a saved model, score it, write results and an HTML report.

Exit codes: 2 when an argument is wrong (a missing model, data file or images folder, a data file that
cannot be read, a bad option), reported in one line before any captioning; 1 when some images could not
be decoded (listed, and left out of the scores); 0 otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmgen.commands import (
    FAILED,
    UsageError,
    add_device_option,
    add_generation_flags,
    add_generation_overrides,
    add_strict_paths_option,
    add_threads_option,
    apply_threads,
    generation_changes,
    non_negative_int,
    positive_int,
    split_generation_overrides,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="caption a dataset with a model and score it (COCO metrics, HTML report)",
        description="Caption every image of a dataset in batches with beam search, score the captions against the "
        "references (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D), and write results.json, scores.json, per_image.tsv and "
        "report.html into --out; on mmgen data synth scenes also scene_accuracy.json (which attributes the captions "
        "get wrong).",
    )
    p.add_argument("--model", required=True, type=Path, help="a saved model directory (e.g. RUN/best) or Hub repo id")
    p.add_argument(
        "--data", required=True, nargs="+", help="caption file(s) or dataset (COCO, Karpathy, JSONL, CSV, HF)"
    )
    p.add_argument("--images", help="images directory for COCO-style annotation files")
    add_strict_paths_option(p)
    p.add_argument("--split", help="split to evaluate (Karpathy / HF datasets), e.g. test")
    add_generation_flags(p)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-images", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--tokenizer", choices=("auto", "java", "python"), default="auto", help="PTB tokenizer backend")
    p.add_argument(
        "--metrics", nargs="+", default=None, help="metrics (default: Bleu METEOR ROUGE_L CIDEr; METEOR needs Java)"
    )
    add_device_option(p)
    p.add_argument("--workers", type=non_negative_int, default=2, help="DataLoader worker processes")
    p.add_argument("--out", type=Path, default=Path("eval"), help="output directory (default: ./eval)")
    add_threads_option(p)
    add_generation_overrides(p)
    p.set_defaults(func=run, positionals="overrides")


def check_arguments(args: argparse.Namespace) -> None:
    """Fail with one line per missing path named on the command line (UsageError), before any loading."""
    from mmgen.config import looks_like_local_path, path_exists
    from mmgen.hub import looks_like_repo_id

    problems = []
    if not args.model.is_dir() and not looks_like_repo_id(str(args.model)):  # a Hub repo id is looked up later
        problems.append(f"--model {args.model}: no such directory")
    for source in args.data:  # a hub dataset name is not a path; files, folders and globs are
        if looks_like_local_path(source, data=True) and not path_exists(source):
            problems.append(f"--data {source}: no such file or directory")
    if args.images is not None and not Path(args.images).is_dir():
        problems.append(f"--images {args.images}: no such directory")
    if problems:
        raise UsageError("\n".join(problems))


def load_inputs(args: argparse.Namespace, device: str):
    """The model, its generation settings with the command's overrides, and the records (UsageError when
    the model or the data cannot be read)."""
    import dataclasses

    from mmgen.data import DataFormatError, load_records
    from mmgen.models import CaptionModel

    try:
        model = CaptionModel.from_pretrained(args.model, device=device)
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"cannot load the model: {e}") from None
    changes = generation_changes(args)
    gen = dataclasses.replace(model.generation_config, **changes)
    model.check_generation(gen)
    try:
        source = args.data if len(args.data) > 1 else args.data[0]
        records = load_records(source, images=args.images, split=args.split, strict_paths=args.strict_paths)
    except (FileNotFoundError, DataFormatError) as e:
        raise UsageError(f"cannot read --data: {e}") from None
    if args.max_images is not None:
        records = [records[i] for i in range(min(args.max_images, len(records)))]
    return model, gen, records


def run(args: argparse.Namespace) -> int:
    import torch

    from mmgen.evaluation.evaluate import evaluate_model, write_evaluation
    from mmgen.scenes.accuracy import format_scene_accuracy, load_scenes, scene_accuracy
    from mmgen.training.logs import read_metrics

    args.data, more = split_generation_overrides(args.data)  # --data takes every argument after it
    args.overrides = [*args.overrides, *more]
    check_arguments(args)
    apply_threads(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, gen, records = load_inputs(args, device)
    result = evaluate_model(
        model,
        records,
        gen,
        batch_size=args.batch_size,
        device=device,
        num_workers=args.workers,
        tokenizer=args.tokenizer,
        metrics=args.metrics,
    )
    scenes = load_scenes(args.data[0]) if len(args.data) == 1 else None
    acc = None
    if scenes:  # mmgen data synth annotations: which attributes the captions get wrong
        acc = scene_accuracy(result.captions, scenes)
    curves = read_metrics(args.model.parent) if (args.model.parent / "metrics.jsonl").is_file() else None  # RUN/best
    paths = write_evaluation(args.out, result, title=f"mmgen evaluation: {args.model}", scenes=acc, curves=curves)
    for k, v in result.scores.items():
        print(f"{k}: {v}")
    if acc:
        print(format_scene_accuracy(acc))
    c = result.collapse
    print(f"distinct captions: {c.get('distinct_fraction', float('nan')):.3f}  vocabulary: {c.get('vocab_size')}")
    if result.failed:
        print(f"{len(result.failed)} images failed to decode (listed in scores.json and the report):")
        for image_id, reason in result.failed[:10]:
            print(f"  {image_id}: {reason}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return FAILED if result.failed else 0
