"""What the arguments of ``mmgen caption`` ask for, in both modes (:mod:`~mmgen.commands.caption.bulk` for
``--out``): the image files they name and the generation settings."""

from __future__ import annotations

import argparse
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
    return {**overrides, **generation_changes(args)}
