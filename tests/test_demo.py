"""The demo end to end (small budget): the trained model must beat the most-frequent-caption baseline widely."""

import json
from importlib import resources
from pathlib import Path

from mmgen.commands.cli import build_parser
from mmgen.commands.demo_command import demo_config, run_demo
from mmgen.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_demo_beats_the_baseline(tmp_path):
    res = run_demo(tmp_path / "demo", budget="small", tokenizer="python", quiet=True)
    # 300 steps on 32-pixel scenes: well above the answer of the most frequent caption
    assert res.scores["CIDEr"] >= 2 * res.baseline["CIDEr"], (res.scores, res.baseline)
    assert res.scores["Bleu_4"] > res.baseline["Bleu_4"]
    for name in (
        "eval/report.html",
        "eval/scores.json",
        "eval/results.json",
        "eval/scene_accuracy.json",
        "demo_summary.json",
        "run/best/model.safetensors",
        "run/curves.png",
    ):
        assert (tmp_path / "demo" / name).exists(), name
    assert len(res.samples) == 4 and all(c for _, c in res.samples)
    # what the captions get right, read back against the scenes' truth: colours far above chance (1/6; this
    # budget learns them first), and the same attributes logged by the in-loop evaluation
    assert res.scenes["images"] == 100 and res.scenes["color"] > 0.35
    rows = [json.loads(line) for line in (tmp_path / "demo" / "run" / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r["eval"] for r in rows if "eval" in r][-1]
    assert {"scene_exact", "scene_color", "scene_shape_small", "scene_relation_stated"} <= set(last_eval)
    # the report carries the baseline the terminal prints, the run's curves and the scene charts
    report = (tmp_path / "demo" / "eval" / "report.html").read_text(encoding="utf-8")
    assert f"<q>{res.baseline_caption}</q>" in report and f"{res.cider_ratio:.1f}x</b> the baseline" in report
    assert report.count("data:image/png;base64,") == 3
    # the model card says what the model is, what it learnt from, how long, and how well (the demo's own numbers)
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "demo" / "run" / "best" / "README.md")
    meta = card.data.to_dict()
    assert meta["library_name"] == "mmgen" and "synthetic-data" in meta["tags"]
    assert meta["mmgen"]["synthetic_data"] is True and meta["mmgen"]["trained_on"].endswith(", 1,200 images")
    cider = next(r.metric_value for r in card.data.eval_results if r.metric_type == "cider")
    assert cider == round(res.scores["CIDEr"], 4)
    assert "knows synthetic shapes only" in card.text and "mmgen demo --budget small --seed 0" in card.text
    assert f"{res.baseline['CIDEr']:.3f}" in card.text and "300 optimizer steps, 9,600 images seen" in card.text
    final = ModelCard.load(tmp_path / "demo" / "run" / "final" / "README.md")  # the trainer's own card
    assert final.data.to_dict()["mmgen"]["parameters"] == sum(p.numel() for p in _model(tmp_path).parameters())


def test_the_demo_trains_configs_tiny_cpu_yaml_shipped_as_package_data(tmp_path):
    shipped = resources.files("mmgen.presets").joinpath("tiny_cpu.yaml")
    assert shipped.read_bytes() == (ROOT / "configs" / "tiny_cpu.yaml").read_bytes()
    assert sorted(p.name for p in resources.files("mmgen.presets").iterdir() if p.name.endswith(".yaml")) == sorted(
        p.name for p in (ROOT / "configs").glob("*.yaml")
    )
    cfg = demo_config(tmp_path, n_train=10, n_val=2, steps=4, image_size=32)
    preset = load_config(
        ROOT / "configs" / "tiny_cpu.yaml", ["model.encoder.img_size=32", "model.encoder.patch_size=8"]
    )
    assert cfg.model == preset.model and cfg.eval.generation == preset.eval.generation
    assert cfg.train.max_steps == 4 and cfg.data.synth == {"n_train": 10, "n_val": 2, "seed": 0, "image_size": 32}


def test_help_lists_every_command(capsys):
    text = build_parser().format_help()
    for name in ("data", "train", "caption", "evaluate", "score", "demo"):
        assert name in text


def test_the_demo_exit_code_says_whether_the_model_learnt_and_why_not(tmp_path, monkeypatch, capsys):
    import mmgen.commands.demo_command as demo
    from mmgen.commands.cli import main

    def result(cider: float) -> demo.DemoResult:
        return demo.DemoResult(tmp_path, tmp_path, {"CIDEr": cider}, {"CIDEr": 1.0}, "a caption", [])

    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: result(2.6))  # what --budget small reaches
    assert main(["demo", "--budget", "small", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: result(1.4))
    assert main(["demo", "--budget", "small", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CIDEr is 1.4x the baseline's, below the 2x" in err and "train longer" in err


def _model(tmp_path):
    from mmgen.models import CaptionModel

    return CaptionModel.from_pretrained(tmp_path / "demo" / "run" / "final")
