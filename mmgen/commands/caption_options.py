"""What ``mmgen caption`` (both modes, :mod:`~mmgen.commands.caption_bulk` for ``--out``) and ``mmgen serve``
share: the image files the arguments name, the generation settings the options ask for, the Captioner."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmgen.commands import UsageError, generation_changes


def expand_arguments(arguments: list[str]) -> list[Path]:
    """The image files the arguments name (directories: the image files directly inside, sorted).

    Raises:
        UsageError: one line per argument that is missing or a directory without image files.
    """
    from mmgen.captioner import IMAGE_EXTENSIONS, list_images

    problems = []
    for arg in map(Path, arguments):
        if not arg.exists():
            problems.append(f"{arg}: no such file or directory")
        elif arg.is_dir() and not list_images([arg]):
            folders = any(f.is_dir() for f in arg.iterdir())
            hint = "; subdirectories are not searched, name them" if folders else ""
            kinds = ", ".join(IMAGE_EXTENSIONS)
            problems.append(f"{arg}: a directory with no image files ({kinds}) directly inside it{hint}")
    if problems:
        raise UsageError("\n".join(problems))
    return list_images(arguments)


def generation_overrides(args: argparse.Namespace) -> dict:
    """The ``GenerationConfig`` overrides the options ask for (one caption per image), ``generation.KEY=VALUE``
    arguments last."""
    overrides = {"num_return_sequences": 1}  # one caption per image is printed
    if args.bad_words:
        overrides["bad_words"] = tuple(w.strip() for w in args.bad_words.split(",") if w.strip())
    return {**overrides, **generation_changes(args, {"beams": "num_beams", "max_new_tokens": "max_new_tokens"})}


def load_captioner(args: argparse.Namespace, device: str | None = None):
    """The Captioner the options name, or a :class:`UsageError` saying why the model cannot be loaded."""
    from mmgen.captioner import Captioner

    if args.quantize and (args.device or "cpu") != "cpu":
        raise UsageError(f"--quantize {args.quantize} runs on the CPU only; drop --device {args.device}")
    if args.quantize and args.dtype not in (None, "float32"):
        raise UsageError(f"--quantize {args.quantize} starts from float32 weights; drop --dtype {args.dtype}")
    try:
        dtype = args.dtype or ("float32" if args.quantize else None)  # int8 starts from fp32 whatever was saved
        return Captioner.from_pretrained(args.model, device=device or args.device, dtype=dtype, quantize=args.quantize)
    except (FileNotFoundError, OSError) as e:
        raise UsageError(f"cannot load the model: {e}") from None


def stderr_is_tty() -> bool:
    """Whether stderr is a terminal (a progress bar goes there only then)."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
