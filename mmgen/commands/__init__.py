"""The ``mmgen`` command line: one module (or package) per subcommand, listed in :mod:`mmgen.commands.cli`,
and what they share (exit codes, options, the Captioner that ``--model`` names).

Exit codes: 0 success; :data:`USAGE` (2) when the command line is wrong (a bad option value, a file or
folder named on it that is missing or unusable), reported before any work in one line per problem;
:data:`FAILED` (1) when something fails while running (e.g. images that cannot be decoded).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

USAGE = 2
"""Exit code of a usage error."""
FAILED = 1
"""Exit code of a failure at run time."""


class UsageError(Exception):
    """The command line is wrong; ``mmgen.commands.cli.main`` prints each line of the message and exits with 2."""


GENERATION_OVERRIDE = re.compile(r"^generation\.[A-Za-z_][\w.]*=")
"""A ``generation.KEY=VALUE`` argument (the same dotted overrides as ``mmgen train``)."""


def add_generation_overrides(parser: argparse.ArgumentParser) -> None:
    """Add the ``generation.KEY=VALUE`` overrides of the model's saved generation settings as positional
    arguments (``mmgen caption``, whose positional arguments are images, splits them off those with
    :func:`split_generation_overrides` instead)."""
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="generation.KEY=VALUE",
        help="dotted overrides of the model's generation settings, e.g. generation.num_beams=5",
    )


def split_generation_overrides(arguments: list[str]) -> tuple[list[str], list[str]]:
    """``(other arguments, generation.KEY=VALUE overrides)``, each in the order given."""
    overrides = [a for a in arguments if GENERATION_OVERRIDE.match(a)]
    return [a for a in arguments if not GENERATION_OVERRIDE.match(a)], overrides


GENERATION_FLAGS = {"beams": "num_beams", "max_new_tokens": "max_new_tokens"}
"""The flags of ``mmgen caption`` and ``evaluate`` for generation settings (``--beams``, ``--max-new-tokens``):
attribute -> the setting it changes. Every other setting is reached by ``generation.KEY=VALUE``."""


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--beams`` and ``--max-new-tokens`` (:data:`GENERATION_FLAGS`)."""
    parser.add_argument("--beams", type=int, default=None, help="beam size (default: the model's saved setting)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="caption length limit in tokens")


def generation_changes(args: argparse.Namespace, flags: dict[str, str] = GENERATION_FLAGS) -> dict:
    """The generation settings the command line changes: the flags (``flags``: attribute -> field, when given),
    then the dotted ``generation.KEY=VALUE`` overrides (``args.overrides``), which win."""
    from mmgen.config import generation_overrides

    changes = {field: getattr(args, attr) for attr, field in flags.items() if getattr(args, attr, None) is not None}
    return {**changes, **generation_overrides(getattr(args, "overrides", None) or [])}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    value = _int_at_least(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def number_in(low: float, high: float, low_open: bool = False):
    """argparse type: a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN and infinities
    are refused."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be a number in {bracket}{low:g}, {high:g}], got {text}")
        return value

    return parse


def add_device_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--device``: checked when parsed (a device this machine does not have is a one-line usage error)."""
    parser.add_argument(
        "--device", type=device_name, default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)"
    )


def device_name(text: str) -> str:
    """argparse type: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: no CUDA GPU is available (torch.cuda.is_available() is false)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: the MPS backend (Apple GPU) is not available")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text}: mmgen runs on cpu, cuda or mps")
    return text


def add_strict_paths_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--strict-paths``: refuse image paths of a caption file that lead outside its images folder."""
    parser.add_argument(
        "--strict-paths",
        action="store_true",
        help="refuse image paths of a caption file that lead outside its images folder (absolute, or through ..); "
        "by default COCO and Karpathy files read them from there, with a warning",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N``: the CPU threads torch computes with (see :func:`apply_threads`)."""
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads torch uses (torch.set_num_threads; default: torch's own, one per core or OMP_NUM_THREADS)",
    )


def apply_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (nothing when it was not given)."""
    from mmgen.runtime import set_threads

    set_threads(getattr(args, "threads", None))


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


def model_line(captioner, source) -> str:
    """Which model answers, in one line: its name, where it came from and what it was trained on (its card)."""
    from mmgen.model_card import card_facts

    facts = card_facts(captioner.model.card, name="")
    name = facts["name"] or Path(str(source)).name
    where = "" if name == str(source) else f" ({source})"
    return f"model {name}{where}, trained on {facts['trained_on']}"


def stderr_is_tty() -> bool:
    """Whether stderr is a terminal (a progress bar goes there only then)."""
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value
