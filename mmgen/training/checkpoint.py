"""Training checkpoints: a model directory plus the state needed to resume a run exactly.

Layout of a run directory::

    run_dir/
      checkpoints/
        step_00000400/          one complete checkpoint (the step, zero-padded, sorts by name)
          config.json decoder_config.json model.safetensors tokenizer/   (CaptionModel.save_pretrained)
          training_state.safetensors   optimizer tensors, torch / CUDA RNG states, tensors in ``state``
          training_state.json          everything else: optimizer hyper-parameters and the layout of its
                                       state, scheduler state, python / numpy RNG states, the trainer's ``state``
          complete.json                written last: the step and the size of every file
        step_00000500/
      best/                     the best model so far (model files + metrics.json + complete.json)

Every checkpoint is written into a hidden sibling (``.tmp-step_00000500-<pid>``), flushed to disk and
renamed into place, so a reader sees a whole checkpoint or none: a process killed mid-write leaves the
previous checkpoints untouched and a ``.tmp-*`` directory that the next save removes. Nothing is ever
unpickled: tensors live in safetensors files and everything else in JSON. Weights holding a NaN or an
infinity are never written (:class:`NonFiniteWeightsError`). A checkpoint damaged afterwards (a file
truncated or altered) is named in a warning by :func:`load_latest_checkpoint`, which resumes from the
previous complete one.

A run directory has one writer at a time (rank 0 of the job, holding the run's lock: see
``mmgen.training.rundir``): stale ``.tmp-*`` directories are removed on the assumption that no other
process is still writing them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file, save_model
from torch import nn

from mmgen.errors import CheckpointError, MissingCheckpointFileError, RunFailed
from mmgen.models.files import load_tensors, load_weights, non_finite_tensors, one_line, read_json
from mmgen.training.atomic_dirs import clean_work_dirs, commit_dir, fresh_work_dir, remove_dir
from mmgen.training.rng import gather_rng_states as gather_rng_states  # re-exported: part of this API
from mmgen.training.rng import rank_world, rng_state
from mmgen.training.rng import restore_rng as restore_rng_states
from mmgen.training.state_codec import decode_tree, encode_tree, json_safe, json_scalar, unshare

if TYPE_CHECKING:
    from mmgen.config import GenerationConfig

WEIGHTS_NAME = "model.safetensors"  # the file CaptionModel.save_pretrained writes
STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
MARKER = "complete.json"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
BEST = "best"
FORMAT_VERSION = 1

_STEP_RE = re.compile(r"step_(\d+)")


class NonFiniteWeightsError(RunFailed):
    """The model to be saved holds NaN or infinite weights (the run diverged); nothing was written."""


# -- public API -----------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: Mapping[str, Any],
    keep_last: int = 2,
    generation: GenerationConfig | None = None,
    rng_states: list[dict] | None = None,
    is_main: bool | None = None,
    optimizer_state: dict | None = None,
    card: str | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step:08d}/`` atomically and prune older checkpoints.

    Call it on the writing process only (``if is_main: save_checkpoint(...)`` followed by a barrier):
    it runs no collective operation, so it cannot hang a job whose other ranks are elsewhere. On a
    non-zero rank of an initialised process group it writes nothing and returns the path.

    Args:
        run_dir: The run directory (``checkpoints/`` is created inside it).
        step: The optimizer step the checkpoint follows.
        model: The model, or its DDP / ``torch.compile`` wrapper. For an FSDP model pass an unsharded copy
            (see ``Trainer.save``) and the gathered ``optimizer_state``.
        optimizer: Its state is saved when given.
        scheduler: Its ``state_dict()`` is saved when given; a ``LambdaLR`` saves no function, so the
            resumed run must rebuild it with the same lambdas before loading.
        state: The trainer's own state (step, epoch, position in the epoch, best metric...): JSON
            values, tuples, dicts and tensors.
        keep_last: How many ``step_*`` checkpoints to keep (the newest by step); 0 keeps every one.
            The checkpoint just written and ``best/`` are never removed.
        generation: Generation settings saved with the model (``CaptionModel.save_pretrained``).
        rng_states: Every rank's RNG states from :func:`gather_rng_states`, so that each rank resumes
            its own random stream; by default only this process's states are saved.
        is_main: Whether this process writes; by default rank 0 (or the only process) does.
        optimizer_state: Written instead of ``optimizer.state_dict()`` (an FSDP run's full optimizer state).
        card: The model card (``README.md``) to write with the model (default: ``save_pretrained``'s).

    Returns:
        The checkpoint directory.

    Raises:
        NonFiniteWeightsError: The model holds NaN or infinite weights; nothing is written.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step_{step:08d}"
    if not _is_main(is_main):
        return final
    target = _unwrap(model)
    check_finite_weights(target, final)
    root.mkdir(parents=True, exist_ok=True)
    clean_work_dirs(root)
    newer = [s for s, _ in _step_dirs(root) if s > step]
    if newer:
        warnings.warn(
            f"saving step {step} while {root} holds step {max(newer)}: latest_checkpoint() picks the highest step",
            stacklevel=2,
        )
    tmp = fresh_work_dir(root, "tmp", final.name)
    _save_model(target, tmp, generation, card)
    if optimizer_state is None and optimizer is not None:
        optimizer_state = optimizer.state_dict()
    _write_training_state(tmp, step, optimizer_state, scheduler, state, rng_states or [rng_state()])
    _commit(tmp, final, step)
    _prune(root, keep_last, final)
    return final


def save_best(
    run_dir: str | os.PathLike,
    model: nn.Module,
    metrics: Mapping[str, Any],
    generation: GenerationConfig | None = None,
    is_main: bool | None = None,
    card: str | None = None,
) -> Path:
    """Write ``run_dir/best/`` (model files and ``metrics.json``) atomically, replacing the previous one.

    Args:
        run_dir: The run directory.
        model: The model, or its DDP / ``torch.compile`` wrapper.
        metrics: JSON-able scores (and the step) that made this model the best.
        generation: Generation settings saved with the model.
        is_main: Whether this process writes; by default rank 0 (or the only process) does.
        card: The model card (``README.md``) to write with the model (default: ``save_pretrained``'s).

    Returns:
        The ``best`` directory.

    Raises:
        NonFiniteWeightsError: The model holds NaN or infinite weights; nothing is written.
    """
    run_dir = Path(run_dir)
    final = run_dir / BEST
    if not _is_main(is_main):
        return final
    target = _unwrap(model)
    check_finite_weights(target, final)
    run_dir.mkdir(parents=True, exist_ok=True)
    clean_work_dirs(run_dir)
    tmp = fresh_work_dir(run_dir, "tmp", BEST)
    _save_model(target, tmp, generation, card)
    metrics = json_safe(dict(metrics))  # strict JSON: a NaN score is written as null
    (tmp / METRICS).write_text(json.dumps(metrics, indent=2, default=json_scalar, allow_nan=False))
    _commit(tmp, final, metrics.get("step"))
    return final


def load_checkpoint(
    ckpt_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    restore_rng: bool = True,
) -> dict:
    """Load a checkpoint into existing objects and return the trainer's ``state``.

    Weights are loaded strictly into ``model`` (every tensor present, no extra one). The optimizer
    gets its state back through ``load_state_dict``, so it must hold the same parameter groups in the
    same order as when saving; tensors move to each parameter's device there. Every rank may call it.

    Args:
        ckpt_dir: A ``step_*`` directory (see :func:`latest_checkpoint`) or ``best/``.
        model: The model to fill, or its DDP / ``torch.compile`` wrapper.
        optimizer: Restored when given.
        scheduler: Restored when given (built with the same lambdas as the saved run).
        restore_rng: Restore the python, numpy, torch and CUDA RNG states (this rank's, when every
            rank's were saved).

    Returns:
        The ``state`` dict passed to :func:`save_checkpoint` (``{}`` for a model-only directory such as
        ``best/``, which holds no training state).

    Raises:
        MissingCheckpointFileError: The directory is not a complete checkpoint, or holds no training state
            while an optimizer or scheduler was given (also a ``FileNotFoundError``).
        CheckpointError: A file is corrupt or truncated (its size differs from the one recorded when it
            was written, or it cannot be parsed), or what it holds does not fit the objects given (a
            ``ValueError``); the message names the file.
    """
    from mmgen.distributed import is_sharded, load_full_states

    ckpt = Path(ckpt_dir)
    _verify(ckpt)
    has_state = (ckpt / STATE_JSON).exists()
    if not has_state and (optimizer is not None or scheduler is not None):
        raise MissingCheckpointFileError(f"{ckpt}: model-only directory, no optimizer / scheduler state to load")
    meta = read_json(ckpt / STATE_JSON, "the training state") if has_state else {}
    tensors = load_tensors(ckpt / STATE_TENSORS) if has_state else {}
    states = {}
    with _inconsistent(ckpt / STATE_JSON, "training state"):  # decoded in full before anything is changed
        for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
            if obj is None:
                continue
            if meta.get(key) is None:
                raise CheckpointError(f"{ckpt}: saved without a {key}, cannot restore one")
            states[key] = decode_tree(meta[key], tensors)
        rng = decode_tree(meta["rng"], tensors) if has_state and restore_rng else None
        state = decode_tree(meta["state"], tensors) if has_state else {}
    target = _unwrap(model)
    if is_sharded(target):  # every rank reads the whole tensors and keeps its shard
        load_full_states(target, optimizer, load_tensors(ckpt / WEIGHTS_NAME), states.get("optimizer"))
    else:
        load_weights(target, ckpt / WEIGHTS_NAME)
        if optimizer is not None:
            with _inconsistent(ckpt / STATE_JSON, "optimizer state"):
                optimizer.load_state_dict(states["optimizer"])
    if scheduler is not None:
        with _inconsistent(ckpt / STATE_JSON, "scheduler state"):
            scheduler.load_state_dict(states["scheduler"])
    if rng is not None:
        with _inconsistent(ckpt / STATE_JSON, "RNG states"):
            restore_rng_states(rng, ckpt)
    return state


def load_latest_checkpoint(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    restore_rng: bool = True,
) -> tuple[Path, dict] | None:
    """:func:`load_checkpoint` of the newest complete checkpoint of a run that loads.

    A checkpoint that cannot be loaded (corrupt, truncated) is named in a warning and the previous
    complete one is tried, so one damaged save does not block a resume.

    Returns:
        (the checkpoint directory, the trainer's ``state``), or None when the run has no complete checkpoint.

    Raises:
        CheckpointError: No complete checkpoint of the run can be loaded (the message names each one and why).
    """
    failed: list[str] = []
    for ckpt in complete_checkpoints(run_dir):
        try:
            state = load_checkpoint(ckpt, model, optimizer, scheduler, restore_rng)
        except CheckpointError as e:
            failed.append(f"{ckpt.name}: {e}")
            warnings.warn(f"{ckpt} cannot be loaded, trying the previous checkpoint: {e}", stacklevel=2)
            continue
        if failed:
            warnings.warn(f"resuming from {ckpt}, not from the newer checkpoint(s) that cannot be loaded", stacklevel=2)
        return ckpt, state
    if failed:
        raise CheckpointError(f"{run_dir}: no checkpoint can be loaded: " + "; ".join(failed))
    return None


def read_training_state(ckpt_dir: str | os.PathLike) -> dict:
    """The trainer's ``state`` saved in a checkpoint, read without loading the model or the optimizer.

    Raises:
        MissingCheckpointFileError: The checkpoint holds no training state.
        CheckpointError: Its training state cannot be read.
    """
    from safetensors import SafetensorError, safe_open

    ckpt = Path(ckpt_dir)
    file = ckpt / STATE_JSON
    meta = read_json(file, "the training state")
    with _inconsistent(file, "training state"):
        tree = meta["state"]
        names = set(_tensor_names(tree))
        tensors = {}
        if names:  # only the tensors the state refers to (the file also holds the optimizer's moments)
            try:
                with safe_open(str(ckpt / STATE_TENSORS), framework="pt") as f:
                    tensors = {k: f.get_tensor(k) for k in names}
            except (SafetensorError, OSError) as e:
                raise CheckpointError(f"{ckpt / STATE_TENSORS}: {one_line(e)}") from e
        return decode_tree(tree, tensors)


def complete_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The complete ``step_*`` checkpoints of a run (marker, training state and weights present), newest first."""
    return [p for _, p in sorted(_step_dirs(Path(run_dir) / CHECKPOINTS), reverse=True) if _is_complete(p)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete ``step_*`` checkpoint with the highest step in ``run_dir/checkpoints``, or None.

    Work directories (``.tmp-*`` and the like) and directories without the completion marker or the
    training state are ignored. Its files are not read: :func:`load_latest_checkpoint` falls back to
    the previous checkpoint when this one turns out to be damaged.
    """
    done = complete_checkpoints(run_dir)
    return done[0] if done else None


def check_finite_weights(model: nn.Module, destination: str | os.PathLike) -> None:
    """Refuse to save a model whose floating-point weights hold a NaN or an infinity.

    Args:
        model: The model (whole tensors: an FSDP model's unsharded copy).
        destination: Where it was to be written, for the message.

    Raises:
        NonFiniteWeightsError: Naming how many tensors are affected and a few of them.
    """
    bad = non_finite_tensors(_unwrap(model))
    if bad:
        raise NonFiniteWeightsError(
            f"refusing to write {destination}: {len(bad)} weight tensor(s) hold NaN or infinite values "
            f"(e.g. {', '.join(bad[:3])}); training diverged: lower train.lr, check the data, or use precision fp32"
        )


def refuse_non_finite_weights(model: nn.Module, step: int, destination: Path, doing: str = "writing") -> None:
    """Stop a run on every rank when a weight holds a NaN or an infinity, before ``destination`` is written.

    A collective under ``torch.distributed`` (one all-reduce): call it on every rank.

    Raises:
        NonFiniteWeightsError: Naming the step, the tensors (this rank's) and ``destination``.
    """
    from mmgen.distributed import all_reduce_sum

    bad = non_finite_tensors(_unwrap(model))  # FSDP: this rank's shards
    device = next(model.parameters()).device
    if all_reduce_sum(torch.tensor([float(len(bad))], device=device)).item():
        where = ", ".join(bad[:3]) or "on another rank"
        raise NonFiniteWeightsError(
            f"step {step}: weights hold NaN or infinite values (e.g. {where}): stopping instead of {doing} "
            f"{destination}; training diverged: lower train.lr, check the data, or use precision fp32"
        )


# -- writing --------------------------------------------------------------------------------------
def _save_model(model: nn.Module, path: Path, generation: GenerationConfig | None, card: str | None = None) -> None:
    if hasattr(model, "save_pretrained"):
        # only CaptionModel takes ``generation`` and ``card``; a transformers model writes model.safetensors too
        extra = {"generation": generation} if generation is not None else {}
        model.save_pretrained(path, **extra, **({"card": card} if card is not None else {}))
    else:
        save_model(model, str(path / WEIGHTS_NAME), metadata={"format": "pt"})


def _write_training_state(
    path: Path,
    step: int,
    optimizer_state: dict | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    state: Mapping[str, Any],
    rng_states: list[dict],
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "optimizer": None if optimizer_state is None else encode_tree(optimizer_state, "optimizer", tensors),
        "scheduler": None if scheduler is None else encode_tree(scheduler.state_dict(), "scheduler", tensors),
        "rng": encode_tree(rng_states, "rng", tensors),
        "state": encode_tree(dict(state), "state", tensors),
    }
    save_file(unshare(tensors), str(path / STATE_TENSORS), metadata={"format": "pt"})
    (path / STATE_JSON).write_text(json.dumps(meta))


def _commit(tmp: Path, final: Path, step: int | None) -> None:
    """Seal ``tmp`` with the marker (the step and every file's size) and move it into place as ``final``."""
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1, default=json_scalar))
    commit_dir(tmp, final)


def _prune(root: Path, keep_last: int, just_written: Path) -> None:
    if keep_last <= 0:
        return
    done = sorted((s, p) for s, p in _step_dirs(root) if _is_complete(p))
    keep = {p for _, p in done[-keep_last:]} | {just_written}
    for _, path in done:
        if path not in keep:
            remove_dir(path)


# -- reading --------------------------------------------------------------------------------------
def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    out = []
    for entry in root.iterdir():
        m = _STEP_RE.fullmatch(entry.name)
        if m is not None and entry.is_dir():
            out.append((int(m.group(1)), entry))
    return out


def _is_complete(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / STATE_JSON).is_file() and (path / WEIGHTS_NAME).is_file()


def _verify(path: Path) -> None:
    if not (path / MARKER).is_file():
        raise MissingCheckpointFileError(f"{path}: not a complete checkpoint (no {MARKER})")
    with _inconsistent(path / MARKER, "completion marker"):
        recorded = dict(read_json(path / MARKER, "the completion marker")["files"])
    for name, size in recorded.items():
        file = path / name
        if not file.is_file():
            raise MissingCheckpointFileError(f"{path}: {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file}: {file.stat().st_size} bytes, {size} were written (truncated or altered)")


@contextlib.contextmanager
def _inconsistent(file: Path, what: str):
    """Turn the errors of decoding or applying what ``file`` holds into a :class:`CheckpointError` naming it."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{file}: the {what} cannot be restored ({type(e).__name__}: {one_line(e)})") from e


def _tensor_names(tree: Any):
    """The tensor names an encoded tree refers to."""
    if isinstance(tree, list):
        for v in tree:
            yield from _tensor_names(v)
    elif isinstance(tree, dict):
        if "__tensor__" in tree:
            yield tree["__tensor__"]
        else:
            for v in tree.values():
                yield from _tensor_names(v)


# -- processes ------------------------------------------------------------------------------------
def _is_main(is_main: bool | None) -> bool:
    return rank_world()[0] == 0 if is_main is None else is_main


def _unwrap(model: nn.Module) -> nn.Module:
    """The module whose ``state_dict`` keys match the checkpoint: without DDP / compile wrappers (FSDP2
    shards a module in place, so an FSDP model is its own target)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model
