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
with ``O_EXCL`` and removes it when training ends (:mod:`mmgen.lock_files`). A lock left by a dead process of
this host is taken over with a warning; a live one, or one from another host, refuses the start and says which.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from mmgen.config import Config, ConfigError, load_config, save_config, to_dict
from mmgen.errors import RunDirError
from mmgen.lock_files import LockFile
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


class RunLock(LockFile):
    """``run_dir/train.lock``, held by one trainer (see :mod:`mmgen.lock_files`)."""

    @classmethod
    def acquire(cls, run_dir: Path) -> LockFile:
        """Take the lock of ``run_dir``; a stale one of a dead trainer on this host is taken over with a warning.

        Raises:
            RunDirError: Another live trainer (or one on another host) holds the directory.
        """
        return cls.take(run_dir / LOCK_NAME, "trainer", "this run directory", RunDirError)


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


def save_run_config(run_dir: Path, cfg: Config, is_main: bool) -> None:
    """Write the run's ``config.yaml`` (rank 0; every rank waits for it)."""
    from mmgen import distributed as D

    if is_main:
        save_config(cfg, run_dir / "config.yaml")
    D.barrier()


RESUME_MAY_CHANGE = (
    "model.encoder.gradient_checkpointing",
    "model.decoder.gradient_checkpointing",
    "model.decoder.attn_implementation",
)
"""The keys of the ``model`` section an override may change when a run is resumed: how the same weights compute."""


def check_resume(run_dir: Path, cfg: Config) -> None:
    """Refuse overrides a resumed run cannot honour, before anything is read or written: the run's model (the
    checkpoints hold its weights; only :data:`RESUME_MAY_CHANGE` may change), its objective, and whether it keeps
    a weight average (``train.ema_decay`` 0 or not: the checkpoints hold one or none).

    Raises:
        ConfigError: One line per key, naming the run's value and the new one.
    """
    saved = load_config(run_dir / "config.yaml")
    before, now = _flat(to_dict(saved)), _flat(to_dict(cfg))
    keys = [k for k in sorted(set(before) | set(now)) if k.startswith("model.") and k not in RESUME_MAY_CHANGE]
    errors = [
        f"{k}: {before.get(k)!r} in the run, {now.get(k)!r} now: a resumed run keeps its model (a new run "
        f"starts from its weights with train.init_from={run_dir}/best)"
        for k in keys
        if before.get(k) != now.get(k)
    ]
    if saved.train.objective != cfg.train.objective:
        errors.append(f"train.objective: {saved.train.objective!r} in the run, {cfg.train.objective!r} now")
    if bool(saved.train.ema_decay) != bool(cfg.train.ema_decay):
        had, asked = ("with", "without") if saved.train.ema_decay else ("without", "with")
        errors.append(
            f"train.ema_decay: the run was trained {had} a weight average and is resumed {asked} one "
            f"({saved.train.ema_decay} in the run, {cfg.train.ema_decay} now): resume with the run's own decay"
        )
    if errors:
        raise ConfigError.listing([f"--resume {run_dir}: {e}" for e in errors])


def _flat(d: dict, prefix: str = "") -> dict:
    """A nested dict as ``{"a.b.c": value}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
