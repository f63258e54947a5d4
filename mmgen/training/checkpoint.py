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
unpickled: tensors live in safetensors files and everything else in JSON.

A run directory has one writer at a time (rank 0 of the job): stale ``.tmp-*`` directories are removed
on the assumption that no other process is still writing them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from mmgen.training.state_codec import decode_tree, encode_tree, json_scalar, unshare

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
# Hidden work directories: .tmp- (being written), .old- (the previous copy of a step being replaced),
# .trash- (being deleted). The pid keeps two attempts of the same step apart.
_WORK_RE = re.compile(r"\.(tmp|old|trash)-(best|step_\d+)-\d+")


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

    Returns:
        The checkpoint directory.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / f"step_{step:08d}"
    if not _is_main(is_main):
        return final
    target = _unwrap(model)
    root.mkdir(parents=True, exist_ok=True)
    _clean_work_dirs(root)
    newer = [s for s, _ in _step_dirs(root) if s > step]
    if newer:
        warnings.warn(
            f"saving step {step} while {root} holds step {max(newer)}: latest_checkpoint() picks the highest step",
            stacklevel=2,
        )
    tmp = _fresh_work_dir(root, "tmp", final.name)
    _save_model(target, tmp, generation)
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
) -> Path:
    """Write ``run_dir/best/`` (model files and ``metrics.json``) atomically, replacing the previous one.

    Args:
        run_dir: The run directory.
        model: The model, or its DDP / ``torch.compile`` wrapper.
        metrics: JSON-able scores (and the step) that made this model the best.
        generation: Generation settings saved with the model.
        is_main: Whether this process writes; by default rank 0 (or the only process) does.

    Returns:
        The ``best`` directory.
    """
    run_dir = Path(run_dir)
    final = run_dir / BEST
    if not _is_main(is_main):
        return final
    target = _unwrap(model)
    run_dir.mkdir(parents=True, exist_ok=True)
    _clean_work_dirs(run_dir)
    tmp = _fresh_work_dir(run_dir, "tmp", BEST)
    _save_model(target, tmp, generation)
    (tmp / METRICS).write_text(json.dumps(dict(metrics), indent=2, default=json_scalar))
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
        FileNotFoundError: The directory is not a complete checkpoint, or holds no training state while
            an optimizer or scheduler was given.
        ValueError: A file's size differs from the one recorded when it was written.
    """
    from mmgen.training.distributed import is_sharded, load_full_states

    ckpt = Path(ckpt_dir)
    _verify(ckpt)
    has_state = (ckpt / STATE_JSON).exists()
    if not has_state and (optimizer is not None or scheduler is not None):
        raise FileNotFoundError(f"{ckpt}: model-only directory, no optimizer / scheduler state to load")
    meta = json.loads((ckpt / STATE_JSON).read_text()) if has_state else {}
    tensors = load_file(str(ckpt / STATE_TENSORS)) if has_state else {}
    states = {}
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler")):
        if obj is None:
            continue
        if meta.get(key) is None:
            raise ValueError(f"{ckpt}: saved without a {key}, cannot restore one")
        states[key] = decode_tree(meta[key], tensors)
    target = _unwrap(model)
    if is_sharded(target):  # every rank reads the whole tensors and keeps its shard
        load_full_states(target, optimizer, load_file(str(ckpt / WEIGHTS_NAME)), states.get("optimizer"))
    else:
        load_model(target, str(ckpt / WEIGHTS_NAME), strict=True)
        if optimizer is not None:
            optimizer.load_state_dict(states["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(states["scheduler"])
    if not has_state:
        return {}
    if restore_rng:
        _restore_rng(decode_tree(meta["rng"], tensors), ckpt)
    return decode_tree(meta["state"], tensors)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The complete ``step_*`` checkpoint with the highest step in ``run_dir/checkpoints``, or None.

    Work directories (``.tmp-*`` and the like) and directories without the completion marker or the
    training state are ignored.
    """
    root = Path(run_dir) / CHECKPOINTS
    done = [(s, p) for s, p in _step_dirs(root) if _is_complete(p)]
    return max(done)[1] if done else None


def rng_state() -> dict:
    """This process's RNG states: python ``random``, numpy's global generator, torch CPU and CUDA."""
    snap: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        snap["cuda"] = torch.cuda.get_rng_state_all()
    return snap


def gather_rng_states() -> list[dict]:
    """Every rank's :func:`rng_state`, in rank order, on every rank (a collective: call it on all ranks).

    Pass the result to :func:`save_checkpoint` so that each rank resumes its own dropout / noise stream.
    Outside a process group it is ``[rng_state()]``. States travel as JSON bytes, never pickled.
    """
    snap = rng_state()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [snap]
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_tree(snap, "rng", tensors)
    payload = json.dumps({"tree": tree, "tensors": {k: v.tolist() for k, v in tensors.items()}}).encode()
    out = []
    for blob in _all_gather_bytes(payload):
        msg = json.loads(blob)
        # RNG states are byte tensors (torch.get_rng_state / torch.cuda.get_rng_state)
        restored = {k: torch.tensor(v, dtype=torch.uint8) for k, v in msg["tensors"].items()}
        out.append(decode_tree(msg["tree"], restored))
    return out


# -- writing --------------------------------------------------------------------------------------
def _save_model(model: nn.Module, path: Path, generation: GenerationConfig | None) -> None:
    if hasattr(model, "save_pretrained"):
        # only CaptionModel takes ``generation``; a transformers model writes model.safetensors too
        model.save_pretrained(path, **({"generation": generation} if generation is not None else {}))
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
    """Seal ``tmp`` with the marker, flush it to disk and rename it to ``final`` (replacing one there)."""
    files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1, default=json_scalar))
    _fsync_tree(tmp)
    old = None
    if final.exists():
        # a non-empty directory cannot be renamed over: move the old copy aside first; if we die in
        # between, the next save renames it back (see _clean_work_dirs)
        old = _fresh_work_dir(final.parent, "old", final.name, create=False)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, keep_last: int, just_written: Path) -> None:
    if keep_last <= 0:
        return
    done = sorted((s, p) for s, p in _step_dirs(root) if _is_complete(p))
    keep = {p for _, p in done[-keep_last:]} | {just_written}
    for _, path in done:
        if path not in keep:
            _remove(path)


def _remove(path: Path) -> None:
    # rename first, so that a kill in the middle of rmtree never leaves a half-deleted step_* behind
    trash = _fresh_work_dir(path.parent, "trash", path.name, create=False)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_work_dirs(parent: Path) -> None:
    """Remove what an interrupted save left in ``parent``; put back a copy that was moved aside."""
    for entry in sorted(parent.iterdir()):
        m = _WORK_RE.fullmatch(entry.name)
        if m is None or not entry.is_dir():
            continue
        original = parent / m.group(2)
        if m.group(1) == "old" and not original.exists():
            os.replace(entry, original)  # the save that replaced it died before its copy was in place
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _fresh_work_dir(parent: Path, kind: str, name: str, create: bool = True) -> Path:
    path = parent / f".{kind}-{name}-{os.getpid()}"
    if path.exists():
        shutil.rmtree(path)
    if create:
        path.mkdir()  # not tempfile.mkdtemp: its 0700 mode would follow the directory into place
    return path


def _fsync_tree(path: Path) -> None:
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        _fsync_dir(d)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        raise FileNotFoundError(f"{path}: not a complete checkpoint (no {MARKER})")
    recorded = json.loads((path / MARKER).read_text())["files"]
    for name, size in recorded.items():
        file = path / name
        if not file.is_file():
            raise FileNotFoundError(f"{path}: {name} is missing")
        if file.stat().st_size != size:
            raise ValueError(f"{path}: {name} has {file.stat().st_size} bytes, {size} were written")


def _restore_rng(states: list[dict], ckpt: Path) -> None:
    rank, world = _rank_world()
    if len(states) != world:
        warnings.warn(
            f"{ckpt} holds the RNG states of {len(states)} process(es) and this job has {world}: ranks without "
            "their own restore rank 0's, so random streams differ from an uninterrupted run "
            "(save with rng_states=gather_rng_states() on every rank)",
            stacklevel=3,
        )
    snap = states[rank] if rank < len(states) else states[0]
    random.setstate(snap["python"])
    np.random.set_state(snap["numpy"])
    torch.set_rng_state(snap["torch"])
    cuda = snap.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        if n != len(cuda) or n != torch.cuda.device_count():
            warnings.warn(f"{ckpt}: CUDA RNG states of {len(cuda)} device(s), {n} restored", stacklevel=3)
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i], i)


# -- processes ------------------------------------------------------------------------------------
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _is_main(is_main: bool | None) -> bool:
    return _rank_world()[0] == 0 if is_main is None else is_main


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


def _all_gather_bytes(data: bytes) -> list[bytes]:
    world = dist.get_world_size()
    # NCCL moves CUDA tensors only; gloo (CPU jobs) takes CPU tensors
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device or "cpu")
    size = torch.tensor([buf.numel()], device=buf.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=buf.device)
    padded[: buf.numel()] = buf
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [bytes(p[: int(s.item())].cpu().numpy()) for p, s in zip(parts, sizes)]
