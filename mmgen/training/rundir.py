"""The run directory (``train.out_dir``): what a new run may find there, ``--overwrite``, and its lock.

A new run starts in a directory that is absent, empty, or holds only what this run itself prepares
before training and checks when it reuses it: ``data/`` (the scenes of ``data.synth``), ``features/``
(the default feature cache, e.g. built by ``mmgen data features``), ``config.yaml`` (rewritten) and,
when that ``config.yaml`` is this run's config, ``tokenizer/`` (a trainer built before and never run).
Anything an earlier run left (``checkpoints/``, ``best/``, ``final/``, ``metrics.jsonl``, TensorBoard
events, ``curves.png``, or ``tokenizer/`` beside another config) refuses the start: resume that run,
or overwrite it, which deletes those files and keeps the two caches. A directory holding files that
no run writes is never used for a new run nor emptied: the error names them.

One trainer at a time holds a run directory: rank 0 creates ``train.lock`` (pid, host, start time)
with ``O_EXCL`` and removes it when training ends. A lock left by a dead process of this host is taken
over with a warning; a live one, or one from another host, refuses the start and says which.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
import uuid
import warnings
from pathlib import Path

import torch

from mmgen.config import Config, load_config, to_dict
from mmgen.errors import RunDirError
from mmgen.training.atomic_dirs import remove_dir

LOCK_NAME = "train.lock"
RESULTS = ("checkpoints", "best", "final", "metrics.jsonl", "tensorboard", "curves.png")  # what training writes
RESULTS += ("tracking.json", "mlruns", "wandb")  # train.report_to: the trackers' ids, MLflow's file store, W&B's files
PREPARED = ("config.yaml", "tokenizer")  # written before the first step
CACHES = ("data", "features")  # checked by the run that reuses them; kept by overwrite
_WORK = re.compile(r"\.(tmp|old|trash)-.+-\d+|config\.yaml\.tmp|train\.lock\.\d+")  # interrupted writes


def check_run_dir(run_dir: Path, cfg: Config, overwrite: bool = False) -> list[str]:
    """Make sure a new run may start in ``run_dir``; with ``overwrite``, delete what an earlier run left.

    Args:
        run_dir: The run directory (absent or a directory).
        cfg: The new run's config.
        overwrite: Delete an earlier run's files (not ``data/`` and ``features/``).

    Returns:
        The names deleted (empty without ``overwrite``).

    Raises:
        RunDirError: ``run_dir`` holds files no run writes, or (without ``overwrite``) an earlier run's.
    """
    if not run_dir.exists():
        return []
    if not run_dir.is_dir():
        raise RunDirError(f"train.out_dir={run_dir} is a file, not a directory")
    names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    unrelated = [n for n in names if n not in RESULTS + PREPARED + CACHES and not _WORK.fullmatch(n)]
    if unrelated:
        shown = ", ".join(unrelated[:5]) + (f" and {len(unrelated) - 5} more" if len(unrelated) > 5 else "")
        raise RunDirError(
            f"train.out_dir={run_dir} holds files that are not a training run's ({shown}): "
            f"{'refusing to delete them; ' if overwrite else ''}choose another train.out_dir"
        )
    old = [n for n in names if n in RESULTS or _WORK.fullmatch(n)]
    if "tokenizer" in names and not _same_config(run_dir / "config.yaml", cfg):
        old += [n for n in PREPARED if n in names]  # another config's tokenizer would be reused
    if not old:
        return []
    old = sorted(set(old))
    if not overwrite:
        hint = f"continue it with `mmgen train --resume {run_dir}`, " if "checkpoints" in old else ""
        if "tokenizer" in old:
            hint = f"its tokenizer/ belongs to another config than this run's; {hint}"
        raise RunDirError(
            f"train.out_dir={run_dir} already holds a run ({', '.join(old)}): {hint}start over with "
            "`mmgen train --overwrite` (deletes them), or choose another train.out_dir"
        )
    _refuse_reading_what_goes(run_dir, cfg, old)
    removed = sorted(set(old) | {n for n in PREPARED if n in names})
    for name in removed:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            remove_dir(path)
        else:
            path.unlink()
    return removed


def _same_config(saved: Path, cfg: Config) -> bool:
    """Whether ``saved`` (a run's config.yaml) is ``cfg``."""
    try:
        return to_dict(load_config(saved)) == to_dict(cfg)
    except (OSError, ValueError, TypeError):
        return False


def _refuse_reading_what_goes(run_dir: Path, cfg: Config, old: list[str]) -> None:
    """Overwrite must not delete what the new run starts from (``train.init_from``, a tokenizer path)."""
    reads = {"train.init_from": cfg.train.init_from}
    if cfg.model.tokenizer.kind == "path":
        reads["model.tokenizer.name"] = cfg.model.tokenizer.name
    doomed = [(run_dir / n).resolve() for n in old]
    for key, value in reads.items():
        if value and any(d == Path(value).resolve() or d in Path(value).resolve().parents for d in doomed):
            raise RunDirError(f"--overwrite would delete {key}={value}, which this run reads: choose another out_dir")


def claim_run_dir(run_dir: Path, cfg: Config, is_main: bool, resume: bool, overwrite: bool) -> RunLock:
    """Rank 0 locks the run directory and checks (with ``overwrite``: clears) it for a new run; every rank
    learns whether it could (a collective). Returns the lock (a no-op one on other ranks).

    Raises:
        RunDirError: On every rank when rank 0 could not use the directory (rank 0's names the reason).
    """
    from mmgen import distributed as D

    error, lock = None, RunLock(run_dir / LOCK_NAME, None)
    if is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock = RunLock.acquire(run_dir)
            removed = [] if resume else check_run_dir(run_dir, cfg, overwrite)
            if removed:
                print(f"overwrite: deleted {', '.join(removed)} from {run_dir}")
        except (RunDirError, OSError) as e:
            error = e
            lock.release()
    if D.broadcast(torch.tensor([float(error is not None)])).item():
        raise error or RunDirError(f"{run_dir}: rank 0 could not use the run directory (see its error)")
    return lock


class RunLock:
    """``run_dir/train.lock``, held by one trainer; :meth:`release` removes it (only if it is still ours)."""

    def __init__(self, path: Path, token: str | None) -> None:
        self.path, self.token = path, token  # token None: a lock this process does not hold

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Create the lock atomically (``O_EXCL``); take over a stale one of a dead process on this host.

        Raises:
            RunDirError: Another live trainer (or one on another host) holds the directory.
        """
        path = run_dir / LOCK_NAME
        info = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
        info["started"] = time.strftime("%Y-%m-%d %H:%M:%S")
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_lock(path)
                if holder is not None:  # None: it went away meanwhile
                    _take_over_if_stale(path, holder)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            return cls(path, info["token"])
        raise RunDirError(f"{path}: could not take the lock (other trainers are starting in this directory)")

    def release(self) -> None:
        """Remove the lock file if it is still this lock (idempotent)."""
        holder = _read_lock(self.path) if self.token is not None else None
        if holder is not None and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _read_lock(path: Path) -> dict | None:
    """The holder recorded in a lock file; None when the file is gone; {} when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _take_over_if_stale(path: Path, holder: dict) -> None:
    """Move ``path`` aside when its holder is a dead process of this host (or this very process).

    Raises:
        RunDirError: The holder is alive, on another host, or unknown.
    """
    pid, host = holder.get("pid"), holder.get("host")
    who = f"pid {pid} on {host} (since {holder.get('started', '?')})"
    if not isinstance(pid, int) or not host:
        raise RunDirError(
            f"{path} exists but cannot be read: another trainer may be starting in this directory; "
            "if none is, delete the file"
        )
    if host != socket.gethostname():
        raise RunDirError(
            f"another trainer holds this run directory: {who} ({path}); if it is no longer running, delete the file"
        )
    if pid != os.getpid() and _alive(pid):
        raise RunDirError(f"another trainer is running in this run directory: {who} ({path})")
    if pid != os.getpid():  # this process's own earlier trainer is simply superseded
        warnings.warn(f"{path}: taking over the lock of {who}, which is no longer running", stacklevel=4)
    _take_over(path, holder)


def _take_over(path: Path, holder: dict) -> None:
    """Move the stale lock aside; put back a fresh one that another process created in the meantime."""
    aside = path.with_name(f"{LOCK_NAME}.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if _read_lock(aside) != holder:  # not the stale lock we judged: a live trainer's, restore it
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def finished_run(run_dir: Path, cfg: Config) -> str | None:
    """Why resuming ``run_dir`` has nothing to do: its newest readable checkpoint ends a finished run, and
    ``cfg`` (its config with any overrides) does not raise ``train.max_steps`` above the one it finished
    under. None when there is training to do."""
    from mmgen.errors import CheckpointError
    from mmgen.training.checkpoint import complete_checkpoints, read_training_state

    for ckpt in complete_checkpoints(run_dir):
        try:
            state = read_training_state(ckpt)
        except CheckpointError:
            continue  # resuming names it and falls back to the previous checkpoint
        done = state.get("finished_max_steps")
        if done is None or cfg.train.max_steps > done:
            return None
        return (
            f"{run_dir}: the run is finished (step {state.get('step')}, train.max_steps={done}); "
            "nothing to do (raise train.max_steps to train further)"
        )
    return None
