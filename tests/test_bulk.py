"""Bulk captioning (``mmgen caption --out``): every image exactly once, through kills, reruns and torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmgen.captioner import Captioner
from mmgen.commands.caption.results_file import drop_partial_line, merge_results, read_results
from mmgen.commands.cli import main
from mmgen.scenes.writer import make_scenes

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-scenes-model"
N = 120  # images; the broken one is index BROKEN
BROKEN = 5


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A COCO caption file of N rendered scenes, one of which is not an image."""
    folder = tmp_path_factory.mktemp("scenes")
    make_scenes(folder, N, seed=11)
    data = json.loads((folder / "captions_train.json").read_text())
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] % 7]  # some images have no caption
    (folder / "captions_train.json").write_text(json.dumps(data))
    paths = [folder / im["file_name"] for im in data["images"]]
    paths[BROKEN].write_bytes(b"not a png at all")
    return folder / "captions_train.json", paths


@pytest.fixture(scope="module")
def expected(coco):
    """Captioner.caption of each decodable image, by index (None for the broken one)."""
    _, paths = coco
    good = [p for i, p in enumerate(paths) if i != BROKEN]
    captions = Captioner.from_pretrained(MODEL, device="cpu").caption(good, num_beams=1)
    captions.insert(BROKEN, None)
    return captions


def argv(source: Path, out: Path, *extra: str) -> list[str]:
    return ["caption", "--data", str(source), "--out", str(out), "--model", str(MODEL), "--beams", "1", *extra]


def check_complete(out: Path, expected: list) -> list[dict]:
    """Every index exactly once, in order, with Captioner.caption's caption (or the decoding error)."""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(len(expected)))
    for r, want in zip(rows, expected):
        if want is None:
            assert "caption" not in r and "not an image" in r["error"] and r["image"].endswith("000006.png")
        else:
            assert r["caption"] == want, r
    assert not list(out.parent.glob(f"{out.name}.part*"))
    return rows


def test_one_process_captions_everything_once(coco, expected, tmp_path, capsys):
    source, _ = coco
    out = tmp_path / "results.jsonl"
    assert main(argv(source, out, "--batch-size", "16", "--device", "cpu")) == 1  # one image could not be decoded
    rows = check_complete(out, expected)
    assert rows[0]["image_id"] == 1 and isinstance(rows[0]["score"], float)
    err = capsys.readouterr().err
    assert f"{N} images ({N} captioned now, 0 done before, 1 could not be decoded)" in err
    before = out.read_bytes()
    assert main(argv(source, out, "--device", "cpu")) == 1  # a finished run: nothing left to do, one image failed
    err = capsys.readouterr().err
    assert f"{N} images (0 captioned now, {N} done before, 1 could not be decoded in an earlier run)" in err
    assert out.read_bytes() == before


def test_sigkill_then_rerun_gives_each_image_exactly_once(coco, expected, tmp_path):
    source, _ = coco
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mmgen", *argv(source, out, "--batch-size", "1", "--device", "cpu")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    finally:
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
    killed_at = out.read_bytes().count(b"\n")
    assert 5 <= killed_at < N  # the kill really landed mid-run
    assert json.loads(out.with_name("results.jsonl.lock").read_text())["pid"] == proc.pid  # the killed run's lock
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {proc.pid}.*no longer running"):
        assert main(argv(source, out, "--batch-size", "8", "--device", "cpu")) == 1
    check_complete(out, expected)
    assert not out.with_name("results.jsonl.lock").exists()


def test_half_lines_and_parts_of_an_earlier_run_are_taken_over(coco, expected, tmp_path):
    """A 2-rank run killed mid-way: its parts count as done (not recomputed), half lines are redone."""
    source, paths = coco
    out = tmp_path / "results.jsonl"
    assert main(argv(source, out, "--device", "cpu", "--max-new-tokens", "24")) == 1  # writes the settings
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + '{"index": 2, "image": "x", "capt')
    kept = {**rows[3], "caption": "kept from rank 1"}
    part1 = out.with_name(out.name + ".part1")
    part1.write_text(json.dumps(kept) + "\n" + json.dumps(rows[5])[:20])
    assert main(argv(source, out, "--device", "cpu", "--max-new-tokens", "24")) == 1
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in got] == list(range(N)) and not part1.exists()
    assert got[3]["caption"] == "kept from rank 1"
    assert [r.get("caption") for i, r in enumerate(got) if i != 3] == [c for i, c in enumerate(expected) if i != 3]


def test_torchrun_two_processes_equal_one(coco, expected, tmp_path):
    source, _ = coco
    out = tmp_path / "results.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd = [*launcher, "-m", "mmgen", *argv(source, out, "--batch-size", "16", "--device", "cpu")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "could not be decoded" in done.stderr  # exit 1 on both ranks
    assert f'File "{ROOT / "mmgen"}' not in done.stderr, done.stderr  # torchrun reports the exit code, no crash
    check_complete(out, expected)


def test_other_settings_or_other_data_are_refused(coco, tmp_path, capsys):
    source, _ = coco
    out = tmp_path / "results.jsonl"
    out.write_text('{"index": 0, "image": "elsewhere.png", "caption": "x"}\n')
    assert main(argv(source, out, "--device", "cpu")) == 2
    assert "not written by a bulk run" in capsys.readouterr().err
    out.unlink()
    sub = json.loads(source.read_text())
    sub["images"] = sub["images"][:3]
    small = tmp_path / "small.json"
    small.write_text(json.dumps({**sub, "annotations": []}))
    args = ["--images-dir", str(source.parent), "--device", "cpu"]
    assert main(argv(small, out, *args)) == 0
    assert main(argv(small, out, *args, "--bad-words", "red")) == 2
    err = capsys.readouterr().err
    assert "other settings (generation.bad_words: [] then, ['red'] now)" in err and "--overwrite" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    rows[1]["image"] = "another.png"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    assert main(argv(small, out, *args)) == 2
    assert "index 1 was captioned as 'another.png'" in capsys.readouterr().err
    assert main(argv(small, out, *args, "--overwrite")) == 0
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1, 2]


def test_the_model_is_its_files_not_its_path_and_one_run_at_a_time_writes_the_file(coco, tmp_path, capsys):
    import shutil
    import socket

    from safetensors.torch import load_file, save_file

    source, _ = coco
    sub = json.loads(source.read_text())
    small = tmp_path / "small.json"
    small.write_text(json.dumps({**sub, "images": sub["images"][:3], "annotations": []}))
    model = tmp_path / "model"
    shutil.copytree(MODEL, model)
    out = tmp_path / "results.jsonl"

    def run(model_dir: Path, *extra: str) -> int:
        argv = ["caption", "--data", str(small), "--images-dir", str(source.parent), "--out", str(out)]
        return main([*argv, "--model", str(model_dir), "--beams", "1", "--device", "cpu", *extra])

    assert run(model) == 0
    first = out.read_text()
    out.write_text(first.split("\n", 1)[0] + "\n")  # as if killed after one image
    moved = tmp_path / "moved"
    shutil.copytree(model, moved)  # the same files elsewhere: the same model
    assert run(moved) == 0 and out.read_text() == first
    assert "3 images (2 captioned now, 1 done before)" in capsys.readouterr().err
    out.write_text(first.split("\n", 1)[0] + "\n")
    weights = load_file(str(model / "model.safetensors"))
    name = next(k for k in sorted(weights) if weights[k].is_floating_point())
    weights[name] = weights[name] + 1e-3  # new weights at the same path
    save_file(weights, str(model / "model.safetensors"), metadata={"format": "pt"})
    assert run(model) == 2
    err = capsys.readouterr().err
    assert "the model's weights differ (another model, or new files at its path)" in err and err.count("\n") == 1
    assert out.read_text() == first.split("\n", 1)[0] + "\n"  # nothing mixed in

    lock = out.with_name("results.jsonl.lock")
    held = {"pid": os.getppid(), "host": socket.gethostname(), "started": "now", "token": "t"}
    lock.write_text(json.dumps(held))  # a live run on this host holds the file
    assert run(moved) == 2
    err = capsys.readouterr().err
    assert f"another bulk captioning run is writing {out}: pid {os.getppid()}" in err and err.count("\n") == 1
    assert out.read_text() == first.split("\n", 1)[0] + "\n" and lock.exists()
    lock.unlink()

    meta = out.with_name("results.jsonl.meta.json")
    settings = json.loads(meta.read_text())
    meta.write_text('{"model": ')  # damaged
    assert run(moved) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mmgen caption: {meta}: damaged, not the JSON settings of the earlier run")
    meta.write_text(json.dumps({k: v for k, v in settings.items() if k != "model_files"}))  # an earlier mmgen's
    assert run(moved) == 2
    assert "the model's files were not recorded (an earlier mmgen recorded only its path)" in capsys.readouterr().err
    assert run(moved, "--overwrite") == 0 and out.read_text() == first


def test_image_files_with_out_are_resumable_too(coco, expected, tmp_path):
    _, paths = coco
    out = tmp_path / "files.jsonl"
    files = [str(p) for i, p in enumerate(paths[:8]) if i != BROKEN]
    cmd = ["caption", *files, "--out", str(out), "--model", str(MODEL), "--beams", "1", "--device", "cpu"]
    assert main(cmd) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in rows] == files
    assert [r["caption"] for r in rows] == [c for i, c in enumerate(expected[:8]) if i != BROKEN]


def test_usage_errors(coco, tmp_path, capsys):
    source, paths = coco
    assert main(["caption", "--data", str(source), "--model", str(MODEL)]) == 2
    assert "--data needs --out FILE" in capsys.readouterr().err
    assert main(["caption", str(paths[0]), "--data", str(source), "--out", "x", "--model", str(MODEL)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(argv(tmp_path / "missing.json", tmp_path / "r.jsonl")) == 2
    assert "missing.json" in capsys.readouterr().err


def test_low_level_file_helpers(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"index": 1}\n{"index": 0}\n{"index": 1, "dup": 1}\n{"ind')
    assert drop_partial_line(f) == len('{"ind') and f.read_text().endswith("}\n")
    assert [r["index"] for r in read_results(f)] == [1, 0, 1]
    assert merge_results(f) == (2, 0) and f.read_text() == '{"index": 0}\n{"index": 1}\n'
    f.write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"r.jsonl:2: not a JSON line"):
        list(read_results(f))


def test_parquet_shards_stream_and_split_between_ranks(coco, expected, tmp_path, capsys):
    """A streamed HF source (2 parquet shards), captioned as rank 0 and rank 1 of 2, then merged."""
    datasets = pytest.importorskip("datasets")
    from mmgen.commands.caption.bulk import caption_to_file
    from mmgen.commands.caption.results_file import finish
    from mmgen.data.sources import load_records

    _, paths = coco
    n = 10
    feats = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    rows = [{"image": {"bytes": p.read_bytes(), "path": None}, "caption": "x"} for p in paths[:n]]
    ds = datasets.Dataset.from_list(rows, features=feats)
    for k in range(2):
        ds.shard(2, k, contiguous=True).to_parquet(str(tmp_path / f"part-{k}.parquet"))
    shards = str(tmp_path / "*.parquet")
    out = tmp_path / "r.jsonl"
    assert main(argv(Path(shards), out, "--device", "cpu")) == 1
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("caption") for r in got] == expected[:n]
    assert got[0]["image_id"] == "row/0"
    captioner = Captioner.from_pretrained(MODEL, device="cpu")
    split = tmp_path / "split.jsonl"
    for rank in (1, 0):  # each rank reads the stream through and keeps every other image
        stream = load_records(shards, streaming=True)
        summary = caption_to_file(captioner, stream, split, rank=rank, world_size=2, num_beams=1)
        assert summary.captioned == n // 2
    assert finish(split) == (n, 1)  # lines, and the images that could not be decoded (index BROKEN)
    assert [json.loads(line).get("caption") for line in split.read_text().splitlines()] == expected[:n]


def test_a_run_recorded_before_the_decoding_settings_existed_resumes_with_their_defaults(tmp_path):
    from mmgen.commands.caption.results_file import ADDED_SETTINGS, ResumeError, check_settings
    from mmgen.config import GenerationConfig

    default = GenerationConfig()
    assert ADDED_SETTINGS == {f"generation.{k}": getattr(default, k) for k in ("padded_head", "decode_sdpa")}
    out = tmp_path / "results.jsonl"
    out.write_text('{"index": 0, "image": "a.png", "caption": "x"}\n')
    old = {"model": "m", "generation.num_beams": 3}  # what an earlier run recorded
    out.with_name("results.jsonl.meta.json").write_text(json.dumps(old))
    check_settings(out, {**old, **ADDED_SETTINGS})  # the same captions: resumes
    with pytest.raises(ResumeError, match=r"generation.decode_sdpa: 'efficient,math' then, 'math' now"):
        check_settings(out, {**old, **ADDED_SETTINGS, "generation.decode_sdpa": "math"})
