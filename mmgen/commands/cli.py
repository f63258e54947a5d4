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
    """Run ``mmgen``; returns the exit code: 0 success, 2 a usage error, 1 a failure at run time.

    Errors a user can act on are one line on stderr (see :func:`_failure`), and so are warnings.
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    try:
        args, extra = parser.parse_known_args(argv)
        _take_extra_positionals(args, extra)
    except SystemExit as e:  # --help, --version, or a bad argument (one line already printed)
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    name = " ".join(n for n in ("mmgen", args.command, getattr(args, "data_command", None)) if n)
    with one_line_warnings(name):
        try:
            return int(args.func(args) or 0)
        except BaseException as e:  # noqa: BLE001 - what is not a user's error is raised again
            code = _failure(e)
            if code is None:
                raise
            for line in _message(e).splitlines() or [""]:
                print(f"{name}: {line}", file=sys.stderr)
            return code


def _take_extra_positionals(args: argparse.Namespace, extra: list[str]) -> None:
    """Positional arguments after the options (``mmgen caption IMG --model M generation.num_beams=5``) join the
    command's list of them (``positionals``, set by the command); anything else is an unrecognised argument (a
    one-line usage error naming the command)."""
    name = getattr(args, "positionals", None)
    rest = [a for a in extra if a.startswith("-") or name is None]
    if rest:
        prog = " ".join(n for n in ("mmgen", args.command, getattr(args, "data_command", None)) if n)
        sys.stderr.write(f"{prog}: error: unrecognized arguments: {' '.join(rest)} (see {prog} --help)\n")
        raise SystemExit(2)
    if extra:
        setattr(args, name, [*getattr(args, name), *extra])


def _failure(e: BaseException) -> int | None:
    """The exit code of an error a user can act on (its message says what to do), None for anything else."""
    from mmgen.commands import USAGE, UsageError
    from mmgen.config import ConfigError
    from mmgen.data.records import DataFormatError
    from mmgen.errors import CheckpointError, RunDirError, RunFailed

    if isinstance(e, (ConfigError, UsageError, CheckpointError, DataFormatError, RunDirError)):
        return USAGE  # a bad option, config value, file or folder: nothing was done
    if isinstance(e, RunFailed):
        return 1
    if isinstance(e, KeyboardInterrupt):
        return 130
    if isinstance(e, OSError) and e.filename is not None:  # a file the machine refuses (permissions, disk full)
        return 1
    return None


def _message(e: BaseException) -> str:
    """The text printed for ``e``: one line, but for the errors that list one problem a line."""
    from mmgen.commands import UsageError
    from mmgen.config import ConfigError

    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, ConfigError):
        return f"config error: {e}"
    if isinstance(e, UsageError):
        return str(e)
    text = str(e) if not isinstance(e, OSError) else f"{e.strerror}: {e.filename}"
    return text.replace("\r", "\\r").replace("\n", "\\n")  # a file name with a line break stays on the line


@contextlib.contextmanager
def one_line_warnings(prefix: str):
    """Warnings shown while the block runs are one line, ``PREFIX: warning: message`` (whitespace in the message
    collapsed), not Python's default of the file, line number, category and source line. Only the formatting is
    replaced, so that code recording warnings (``warnings.catch_warnings(record=True)``) still gets them."""

    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"{prefix}: warning: {' '.join(str(message).split())}\n"

    original, warnings.formatwarning = warnings.formatwarning, format_warning
    try:
        yield
    finally:
        warnings.formatwarning = original


if __name__ == "__main__":
    sys.exit(main())
