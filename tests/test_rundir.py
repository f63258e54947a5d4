"""Run directories: what a new run may find there, overwrite, and the lock that keeps one trainer per directory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmgen.config import load_config, save_config
from mmgen.errors import RunDirError
from mmgen.training.rundir import RunLock, check_run_dir

ROOT = Path(__file__).resolve().parents[1]


def _cfg(run_dir: Path, *extra: str):
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", [f"train.out_dir={run_dir}", *extra])


def _earlier_run(run_dir: Path, cfg) -> set[str]:
    """The files a finished run leaves (contents do not matter here); returns the top-level names."""
    save_config(cfg, run_dir / "config.yaml")
    for d in ("tokenizer", "checkpoints/step_00000002", "best", "final", "tensorboard", "data/images", "features"):
        (run_dir / d).mkdir(parents=True, exist_ok=True)
    (run_dir / "tokenizer" / "tokenizer.json").write_text("{}")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    (run_dir / "curves.png").write_bytes(b"png")
    (run_dir / "data" / "captions_train.json").write_text("{}")
    (run_dir / ".tmp-best-123").mkdir()  # a save that was killed
    return {p.name for p in run_dir.iterdir()}


def test_a_new_run_refuses_what_an_earlier_run_left(tmp_path):
    cfg = _cfg(tmp_path)
    before = _earlier_run(tmp_path, cfg)
    with pytest.raises(RunDirError) as caught:
        check_run_dir(tmp_path, cfg)
    message = str(caught.value)
    for fragment in ("checkpoints", "metrics.jsonl", f"--resume {tmp_path}", "--overwrite"):
        assert fragment in message, message
    assert {p.name for p in tmp_path.iterdir()} == before  # nothing deleted


def test_overwrite_deletes_the_earlier_run_and_keeps_the_caches(tmp_path):
    cfg = _cfg(tmp_path)
    _earlier_run(tmp_path, cfg)
    removed = check_run_dir(tmp_path, cfg, overwrite=True)
    assert {p.name for p in tmp_path.iterdir()} == {"data", "features"}
    assert (tmp_path / "data" / "captions_train.json").exists()
    assert set(removed) == {
        "config.yaml", "tokenizer", "checkpoints", "best", "final", "tensorboard", "metrics.jsonl", "curves.png",
        ".tmp-best-123",
    }  # fmt: skip
    assert check_run_dir(tmp_path, cfg) == []  # the caches alone do not block a new run


def test_unrelated_files_are_named_and_never_deleted(tmp_path):
    cfg = _cfg(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "metrics.jsonl").write_text("")
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match=r"not a training run's \(notes\.txt\)"):
            check_run_dir(tmp_path, cfg, overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "notes.txt"]
    with pytest.raises(RunDirError, match="is a file"):
        check_run_dir(tmp_path / "notes.txt", cfg)


def test_what_this_run_prepares_before_training_is_accepted(tmp_path):
    cfg = _cfg(tmp_path)
    assert check_run_dir(tmp_path / "absent", cfg) == []
    (tmp_path / "data").mkdir()  # data.synth's scenes
    (tmp_path / "features").mkdir()  # mmgen data features, run before training
    assert check_run_dir(tmp_path, cfg) == []
    other = _cfg(tmp_path, "model.tokenizer.vocab_size=77")
    save_config(other, tmp_path / "config.yaml")  # a run that failed before its tokenizer: rewritten
    assert check_run_dir(tmp_path, cfg) == []
    save_config(cfg, tmp_path / "config.yaml")  # a trainer built with this config and never run
    (tmp_path / "tokenizer").mkdir()
    assert check_run_dir(tmp_path, cfg) == []
    with pytest.raises(RunDirError, match=r"already holds a run \(config\.yaml, tokenizer\).*another config"):
        check_run_dir(tmp_path, other)
    assert check_run_dir(tmp_path, other, overwrite=True) == ["config.yaml", "tokenizer"]


def test_overwrite_refuses_to_delete_what_the_new_run_reads(tmp_path):
    cfg = _cfg(tmp_path, f"train.init_from={tmp_path / 'best'}")
    _earlier_run(tmp_path, cfg)
    with pytest.raises(RunDirError, match="train.init_from"):
        check_run_dir(tmp_path, cfg, overwrite=True)
    assert (tmp_path / "best").is_dir() and (tmp_path / "checkpoints").is_dir()


HOLDER = """
import sys, time
from pathlib import Path
from mmgen.training.rundir import RunLock
RunLock.acquire(Path(sys.argv[1]))
open(sys.argv[2], "w").close()
time.sleep(120)
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_the_lock_keeps_a_second_trainer_out_and_a_dead_ones_lock_is_taken_over(tmp_path):
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(RunDirError, match=f"another trainer is running in this run directory: pid {proc.pid}"):
            RunLock.acquire(tmp_path)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lock_file = tmp_path / "train.lock"
    assert json.loads(lock_file.read_text())["pid"] == proc.pid  # a killed trainer leaves its lock
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {proc.pid}.*no longer running"):
        lock = RunLock.acquire(tmp_path)
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()

    lock = RunLock.acquire(tmp_path)  # a lock from another host cannot be checked: refused, with what to do
    data = json.loads(lock_file.read_text())
    lock_file.write_text(json.dumps({**data, "pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(RunDirError, match=r"pid 1 on elsewhere\.example.*delete the file"):
        RunLock.acquire(tmp_path)
    lock_file.write_text("")  # being written by a trainer that is starting
    with pytest.raises(RunDirError, match="cannot be read"):
        RunLock.acquire(tmp_path)


def test_a_lock_of_this_process_is_superseded_and_not_released_by_its_old_holder(tmp_path):
    first = RunLock.acquire(tmp_path)  # e.g. a trainer built and never run
    second = RunLock.acquire(tmp_path)
    first.release()  # the old holder no longer owns the file
    assert (tmp_path / "train.lock").exists()
    second.release()
    second.release()
    assert not (tmp_path / "train.lock").exists()
