"""The ``mmgen`` command line (``mmgen``, ``python -m mmgen``): parses arguments, then calls the library.

Each subcommand lives in a module of :mod:`mmgen.commands` with ``add_parser(subparsers)`` (which sets
``func``) and is listed in ``COMMANDS``. A command line that names its command first builds that command's
parser alone (``mmgen caption ...`` imports no other command); otherwise (``mmgen --help``, a misspelt
command) every command's. Heavy imports happen inside each command's ``run``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings

COMMANDS = {
    # name: module under mmgen.commands
    "score": "score_command",
    "data": "data_command",
    "caption": "caption",
    "train": "train_command",
    "evaluate": "evaluate_command",
    "demo": "demo_command",
    "serve": "serve_command",
    "push": "push_command",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit code 2), subcommands included."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of ``mmgen``; for ``argv`` that starts with a command name, of that command alone."""
    parser = _Parser(
        prog="mmgen",
        description="Train, run and evaluate image-captioning models (timm ViT -> projector -> causal LM).",
    )
    parser.add_argument("--version", action="version", version=f"mmgen {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = argv[0] if argv and argv[0] in COMMANDS else None
    for name, module in COMMANDS.items():
        if named in (None, name):
            importlib.import_module(f"mmgen.commands.{module}").add_parser(sub)
    return parser


def _version() -> str:
    from mmgen import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run ``mmgen``; returns the exit code: 0 success, 2 a usage error, 1 a failure at run time."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad argument (one line already printed)
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from mmgen.commands import USAGE, UsageError
    from mmgen.config import ConfigError
    from mmgen.errors import CheckpointError

    try:
        with one_line_warnings(f"mmgen {args.command}"):
            return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"mmgen {args.command}: config error: {e}", file=sys.stderr)
        return USAGE
    except UsageError as e:
        for line in str(e).splitlines():
            print(f"mmgen {args.command}: {line}", file=sys.stderr)
        return USAGE
    except CheckpointError as e:  # a saved model or checkpoint that cannot be read: the message names the file
        print(f"mmgen {args.command}: {e}", file=sys.stderr)
        return USAGE


@contextlib.contextmanager
def one_line_warnings(prefix: str):
    """Warnings shown while a command runs are one line, ``PREFIX: warning: message``, not Python's default of the
    file, line number, category and source line."""

    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"{prefix}: warning: {message}\n"

    original, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        yield
    finally:
        warnings.formatwarning = original


if __name__ == "__main__":
    sys.exit(main())
