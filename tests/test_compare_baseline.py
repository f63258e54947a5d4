"""scripts/compare_baseline.py end to end on a tiny budget: both arms train on the same data and are scored."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_baseline", ROOT / "scripts" / "compare_baseline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


TINY = [
    "--set", "model.encoder.img_size=32", "model.encoder.embed_dim=32", "model.encoder.num_heads=2",
    "model.decoder.config_overrides={n_layer: 1, n_embd: 32, n_head: 2, n_positions: 64}",
    "model.max_caption_tokens=24", "train.warmup_steps=2",
]  # fmt: skip


@pytest.mark.parametrize(
    "budget", [["--steps", "4", "--eval-every", "2"], ["--cpu-seconds", "1.5", "--eval-every", "0"]]
)
def test_both_arms_train_on_the_same_data_and_are_scored(compare, tmp_path, budget):
    out = tmp_path / "out"
    result = compare.main(
        [
            "--data-dir", str(tmp_path / "scenes"), "--difficulty", "hard", "--n-train", "48", "--n-val", "6",
            "--eval-images", "6", "--batch-size", "8", "--beams", "2", *budget,
            "--arm", "k2=data.captions_per_image=2", *TINY, "--out", str(out),
        ]
    )  # fmt: skip
    arms = result["arms"]
    assert set(arms) == {"mmgen", "k2", "VisionEncoderDecoder"}
    mmgen, ved = arms["mmgen"], arms["VisionEncoderDecoder"]
    assert abs(ved["params"] - mmgen["params"]) / mmgen["params"] < 0.1  # the baseline is matched in size
    for a in arms.values():
        final = a["final"]
        assert 0.0 <= final["Bleu_4"] <= 1.0 and final["CIDEr"] >= 0.0 and 0.0 < final["distinct"] <= 1.0
        assert "scene_number" in final and "scene_position" in final or "scene_color" in final
        assert a["images"] == a["steps"] * 8 and a["train_cpu_s"] > 0
        assert [r["step"] for r in a["curve"]] == sorted(r["step"] for r in a["curve"])
    if budget[0] == "--steps":
        assert all(a["steps"] == 4 for a in arms.values())  # equal images
    else:
        assert all(a["train_cpu_s"] >= 1.5 for a in arms.values())  # equal CPU time, whatever the steps
    saved = json.loads((out / "result.json").read_text())
    assert saved["arms"]["k2"]["final"]["CIDEr"] == arms["k2"]["final"]["CIDEr"]
    assert (out / "curves.png").stat().st_size > 1000


def test_the_scores_are_pycocoevalcaps(compare):
    from mmgen.evaluation import score_captions

    refs = {1: ["a red circle on a dotted background", "there is a red circle"], 2: ["two small blue stars"]}
    cands = {1: "a red circle on a striped background", 2: "two blue stars"}
    got = compare.coco_scores(refs, cands)
    want = score_captions(refs, cands, metrics=["Bleu", "CIDEr"], tokenizer="python")
    assert got["Bleu_4"] == pytest.approx(want["Bleu_4"], abs=1e-12) and got["CIDEr"] == pytest.approx(want["CIDEr"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_without_a_gpu_is_refused_before_any_work(compare, tmp_path):
    with pytest.raises(SystemExit, match="--device cuda, but torch sees no CUDA GPU"):
        compare.main(["--data-dir", str(tmp_path / "scenes"), "--device", "cuda", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "scenes").exists()


def test_a_batch_larger_than_the_training_set_is_refused(compare, tmp_path):
    argv = ["--data-dir", str(tmp_path / "scenes"), "--n-train", "8", "--n-val", "2", "--eval-images", "2"]
    with pytest.raises(SystemExit, match="--batch-size 16 is more than the 8 training images"):
        compare.main([*argv, "--batch-size", "16", *TINY, "--out", str(tmp_path / "o")])


def test_the_baseline_alone_with_label_smoothing(compare, tmp_path):
    argv = ["--data-dir", str(tmp_path / "scenes"), "--n-train", "16", "--n-val", "4", "--eval-images", "4"]
    argv += ["--batch-size", "8", "--beams", "1", "--steps", "2", "--eval-every", "0", "--no-default-arm"]
    plain = compare.main([*argv, *TINY, "--out", str(tmp_path / "a")])["arms"]
    smoothed = compare.main([*argv, *TINY, "train.label_smoothing=0.3", "--out", str(tmp_path / "b")])["arms"]
    assert set(plain) == set(smoothed) == {"VisionEncoderDecoder"}  # no mmgen arm: the baseline alone
    a, b = plain["VisionEncoderDecoder"], smoothed["VisionEncoderDecoder"]
    assert a["params"] == b["params"] and a["steps"] == b["steps"] == 2
    assert abs(a["final"]["loss"] - b["final"]["loss"]) > 1e-3  # the smoothed loss is the one it trained on
    with pytest.raises(SystemExit, match="leave nothing to run"):
        compare.main([*argv, "--no-baseline", "--out", str(tmp_path / "c")])


def test_scenes_are_made_once_and_never_rewritten_under_another_run(compare, tmp_path):
    data = tmp_path / "scenes"
    argv = ["--data-dir", str(data), "--n-train", "16", "--n-val", "4", "--eval-images", "4", "--batch-size", "8"]
    argv += ["--beams", "1", "--steps", "1", "--eval-every", "0", "--no-baseline", *TINY]
    compare.main([*argv, "--out", str(tmp_path / "a")])
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    assert len(before) == 16 + 4 + 2 and not list(tmp_path.glob(".scenes.making-*"))  # renamed into place
    compare.main([*argv, "--seed", "1", "--out", str(tmp_path / "b")])  # another init: the same scenes, reused
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before
    with pytest.raises(SystemExit, match=r"holds other scenes: seed 0 \(asked 1\).*another --data-dir"):
        compare.main([*argv, "--data-seed", "1", "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match=r"train 16 \(asked 24\)"):
        compare.main([*argv, "--n-train", "24", "--out", str(tmp_path / "d")])
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before  # nothing rewritten
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "captions_train.json").write_text('{"info": ')  # a damaged scene folder
    with pytest.raises(SystemExit, match=r"cannot read the scenes of --data-dir .*broken.*captions_train.json"):
        compare.main([*argv, "--data-dir", str(broken), "--out", str(tmp_path / "f")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty and holds no scenes"):
        compare.main([*argv, "--data-dir", str(tmp_path / "other"), "--out", str(tmp_path / "e")])


def test_with_a_weight_average_every_arm_evaluates_its_average(compare, tmp_path, monkeypatch):
    seen = {}
    real = compare.caption

    def spy(arm, *args, **kwargs):
        params = dict(arm.model.named_parameters())
        avg = arm.average
        holds = avg is not None and all(torch.equal(params[n], a) for n, a in zip(avg.names, avg.averages))
        seen[arm.name] = (avg and avg.updates, holds, {n: p.detach().clone() for n, p in params.items()})
        return real(arm, *args, **kwargs)

    monkeypatch.setattr(compare, "caption", spy)
    argv = ["--data-dir", str(tmp_path / "scenes"), "--n-train", "16", "--n-val", "4", "--eval-images", "4"]
    argv += ["--batch-size", "8", "--beams", "1", "--steps", "3", "--eval-every", "0", "--out", str(tmp_path / "o")]
    compare.main([*argv, *TINY, "train.ema_decay=0.5"])
    assert set(seen) == {"mmgen", "VisionEncoderDecoder"}
    for name, (updates, holds_average, _) in seen.items():
        assert updates == 3 and holds_average, name  # one update per step; captions come from the average
    # the same run without an average trains the same weights (the average never feeds back), so what it
    # evaluates is the last weights, which differ from the average
    averaged = {k: v[2] for k, v in seen.items()}
    seen.clear()
    compare.main([*argv, *TINY])
    for name, (updates, _, params) in seen.items():
        assert updates is None, name
        assert any(not torch.equal(params[n], averaged[name][n]) for n in params), name


def _suite_module():
    spec = importlib.util.spec_from_file_location("compare_suite", ROOT / "scripts" / "compare_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_suite_summary_is_the_runs_ratios_with_an_interval_around_them(tmp_path):
    """summarise_suite against numbers worked out by hand from two made-up runs of one distribution."""
    suite = _suite_module()
    per_image = {0: ([2.0, 4.0], [1.0, 1.0]), 1: ([3.0, 3.0], [2.0, 4.0])}  # (mmgen, baseline) CIDEr per image
    for seed, (ours, theirs) in per_image.items():
        arms = {}
        for name, scores in (("mmgen", ours), ("VisionEncoderDecoder", theirs)):
            final = {"CIDEr": sum(scores) / 2, "CIDEr_per_image": scores, "scene_color": 0.5 + 0.1 * seed}
            arms[name] = {"final": final, "train_cpu_s": 10.0, "steps": 5}
        (tmp_path / f"hue-flat-s{seed}").mkdir()
        result = {"command": "x", "budget": {"steps": 5}, "arms": arms}
        (tmp_path / f"hue-flat-s{seed}" / "result.json").write_text(json.dumps(result))
    summary = suite.summarise_suite(tmp_path, ["hue-flat"], [0, 1])
    row = summary["distributions"]["hue-flat"]["mmgen"]
    assert row["cider"] == [3.0, 3.0] and row["ratio_per_seed"] == [3.0, 1.0]
    assert row["ratio_mean"] == 2.0 and row["ratio_worst"] == 1.0 and row["ratio_of_means"] == 6.0 / 4.0
    lo, hi = row["ratio_interval"]
    assert lo <= 1.5 <= hi and lo >= 5.0 / 6.0 and hi <= 7.0 / 3.0  # resampled pairs stay within the extremes
    assert row["attributes"]["color"] == pytest.approx(0.55)
    table = suite.format_suite(summary)
    assert "| hue-flat | mmgen | 3.00 / 3.00 | 3.000 | **2.00x** | 1.00x |" in table


def test_the_suite_runs_every_distribution_and_seed_and_reuses_finished_runs(compare, tmp_path):
    argv = ["--suite", "hue-flat", "--seeds", "0", "1", "--jobs", "2", "--data-root", str(tmp_path / "data")]
    argv += ["--n-train", "16", "--n-val", "4", "--eval-images", "4", "--batch-size", "8", "--beams", "1"]
    argv += ["--steps", "2", "--eval-every", "0", "--out", str(tmp_path / "out"), *TINY]
    summary = compare.main(argv)
    runs = {s: json.loads((tmp_path / "out" / f"hue-flat-s{s}" / "result.json").read_text()) for s in (0, 1)}
    row = summary["distributions"]["hue-flat"]["mmgen"]
    assert row["cider"] == [runs[s]["arms"]["mmgen"]["final"]["CIDEr"] for s in (0, 1)]
    assert "--difficulty hue-flat" in runs[1]["command"] and "--seed 1" in runs[1]["command"]
    assert (tmp_path / "out" / "suite.md").read_text().startswith("budget {'steps': 2}")
    before = {s: (tmp_path / "out" / f"hue-flat-s{s}" / "result.json").stat().st_mtime_ns for s in (0, 1)}
    compare.main(argv)  # finished runs are summarised again, not rerun
    assert {s: (tmp_path / "out" / f"hue-flat-s{s}" / "result.json").stat().st_mtime_ns for s in (0, 1)} == before
    with pytest.raises(SystemExit, match="unknown distribution 'nope'"):
        compare.main([*argv[:1], "nope", *argv[2:]])
