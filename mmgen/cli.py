"""The ``mmgen`` command line: parses arguments, then calls the library.

Each subcommand lives in ``mmgen/commands/<name>.py`` with ``add_parser(subparsers)`` (which sets
``func``) and is listed in ``COMMANDS``. Modules are imported when the parser is built; heavy
imports happen inside each command's ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    # name: module under mmgen.commands
    "score": "score",
    "data": "data",
    "caption": "caption",
    "train": "train",
    "evaluate": "evaluate",
    "demo": "demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmgen",
        description="Train, run and evaluate image-captioning models (timm ViT -> projector -> causal LM).",
    )
    parser.add_argument("--version", action="version", version=f"mmgen {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(f"mmgen.commands.{module}").add_parser(sub)
    return parser


def _version() -> str:
    from mmgen import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from mmgen.config import ConfigError
    from mmgen.errors import CheckpointError

    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"mmgen {args.command}: config error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:  # a saved model or checkpoint that cannot be read: the message names the file
        print(f"mmgen {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
