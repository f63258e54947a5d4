"""``train.report_to``: MLflow (a local file store) and W&B (offline) really run beside TensorBoard, and get the config,
every metrics.jsonl row, the curves and the final model card; read back with MLflow's client and W&B's own record
format, and compared with metrics.jsonl."""

from __future__ import annotations

import contextlib
import io
import json
import struct
import sys
import warnings
from pathlib import Path

import pytest

from mmgen.commands.cli import main
from mmgen.config import ConfigError, load_config
from mmgen.config.run import TRACKER_NAMES
from mmgen.scenes.writer import make_scenes
from mmgen.training.logs import read_metrics
from mmgen.training.trackers import TRACKERS
from mmgen.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.encoder.img_size=32",
    "model.encoder.embed_dim=32",
    "model.encoder.depth=1",
    "model.encoder.num_heads=2",
    "model.decoder.config_overrides={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}",
    "data.synth=null",
    "data.num_workers=0",
    "data.captions_per_image=1",
    "train.batch_size=8",
    "train.log_every=1",
    "train.warmup_steps=1",
    "train.save_every=1000",
    "eval.every=2",
    "eval.generation={num_beams: 1, max_new_tokens: 8}",
]


def test_the_config_names_every_tracker_and_only_those():
    assert set(TRACKER_NAMES) == set(TRACKERS)
    with pytest.raises(ConfigError, match="train.report_to"):
        load_config(None, ["train.report_to=[tensorboard, neptune]"])
    assert load_config(None).train.trackers == ["tensorboard"]  # the default: as before
    assert load_config(None, ["train.tensorboard=false"]).train.trackers == []
    assert load_config(None, ["train.report_to=[mlflow]"]).train.trackers == ["mlflow"]


def wandb_records(run_dir: Path) -> list:
    """The records of W&B's offline run files (one per session of the run): a header, then LevelDB-log blocks of 32
    KiB whose records (a 7-byte header: CRC, length, type) hold protobuf ``Record`` messages (``wandb.proto``)."""
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return [record for f in files for record in _records(f.read_bytes())]


def _records(data: bytes) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    assert data[:4] == b":W&B"
    records, pieces, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += block - pos % block
            continue
        pieces += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def show_as_python_does(message, category, filename, lineno, file=None, line=None):
    """Python's own way of showing a warning (pytest records them instead): its formatwarning, on stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run reporting to MLflow, W&B and TensorBoard, started with ``mmgen train`` (its stdout / stderr redirected,
    as to a log file), then resumed for two more steps; an untrained model (lr 1e-6): its captions collapse."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    tmp = tmp_path_factory.mktemp("tracked")
    make_scenes(tmp / "scenes", 32, seed=0, image_size=32)
    scenes, run = tmp / "scenes" / "captions_train.json", tmp / "run"
    common = [*TINY, f"data.train={scenes}", f"data.val={scenes}", "data.allow_overlap=true", f"train.out_dir={run}"]
    common += ["train.report_to=[mlflow, wandb, tensorboard]", "train.lr=1e-6"]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        warnings.simplefilter("always")
        mp.setattr(warnings, "showwarning", show_as_python_does)
        first = [*common, "train.max_steps=2", "train.warmup_steps=5", "train.precision=bf16"]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main(["train", "--config", str(ROOT / "configs" / "tiny_cpu.yaml"), *first]) == 0
        Trainer(load_config(ROOT / "configs" / "tiny_cpu.yaml", [*common, "train.max_steps=4"]), resume=run).fit()
    return run, out.getvalue(), err.getvalue()


def test_a_redirected_train_log_is_whole_lines(run):
    """Off a terminal: progress lines, not tqdm's carriage returns; warnings in one line; caption collapse on its own
    line; settings meant for a GPU named before the run."""
    run, out, err = run
    assert "\r" not in err and "\r" not in out
    assert "train: 1/2 (50%) loss=" in err and "train: 2/2 (100%) loss=" in err
    warned = [line for line in err.splitlines() if "warning" in line]
    assert "mmgen train: warning: train.max_steps (2) <= train.warmup_steps (5)" in warned[0]
    assert all(line.startswith("mmgen train: warning: ") for line in warned)  # one line each, no source line
    assert "warnings.warn(" not in err and "UserWarning" not in err
    assert out.splitlines()[0].startswith("note: this run is on the CPU, with settings meant for a GPU")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"] for r in rows if "eval" in r][0]["collapse_most_common_share"] == 1.0  # the precondition
    assert "step 2: warning: caption collapse: 100% of the 32 captions are the same caption" in out


def test_mlflow_and_wandb_get_the_config_metrics_curves_and_card(run):
    import mlflow

    run = run[0]
    rows = read_metrics(run)
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    ciders = {r["step"]: r["eval"]["CIDEr"] for r in rows if "eval" in r}
    assert sorted(losses) == [1, 2, 3, 4] and sorted(ciders) == [2, 4]
    ids = json.loads((run / "tracking.json").read_text())

    client = mlflow.MlflowClient((run / "mlruns").as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "mmgen"]
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [ids["mlflow"]]  # resumed
    mrun = client.get_run(ids["mlflow"])
    assert mrun.data.params["train.lr"] == "1e-06" and mrun.data.params["model.encoder.embed_dim"] == "32"
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "train/loss")} == losses
    assert {m.step: m.value for m in client.get_metric_history(ids["mlflow"], "eval/CIDEr")} == ciders
    assert {a.path for a in client.list_artifacts(ids["mlflow"])} >= {"curves.png", "README.md"}

    records = wandb_records(run)
    assert {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"} == {ids["wandb"]}
    config = {i.key: json.loads(i.value_json) for r in records if r.HasField("config") for i in r.config.update}
    assert config["train"]["lr"] == 1e-06 and config["model"]["encoder"]["embed_dim"] == 32
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item} for r in records]
    logged = {h["_step"]: h for h in history if "_step" in h}
    assert {s: logged[s]["train/loss"] for s in losses} == losses
    assert {s: logged[s]["eval/CIDEr"] for s in ciders} == ciders
    saved = {f.path for r in records if r.HasField("files") for f in r.files.files}
    assert {"curves.png", "final/README.md"} <= saved
    wandb_files = sorted((run / "wandb").glob("offline-run-*/files"))[-1]  # the last session's
    assert (wandb_files / "final" / "README.md").read_text() == (run / "final" / "README.md").read_text()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
