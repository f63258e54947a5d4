"""``mmgen demo``: the whole pipeline offline on a CPU in a few minutes.

Synthesise a scenes dataset, train a tiny captioner from scratch (the ``tiny_cpu`` preset sized by a
budget), evaluate it on held-out scenes with beam search next to a trivial baseline (always the most
frequent training caption), caption a few images and write the HTML report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmgen.commands import add_threads_option, apply_threads, positive_int
from mmgen.config import Config, load_preset

EXPECTED_RATIO = 2.0
"""The demo succeeds (exit 0) when the model's CIDEr is at least this many times the baseline's: every budget's
model gets there (``small`` about 2.6x, ``default`` about 5x); below it the model learnt little, which is said."""

BUDGETS = {
    # name: (training scenes, held-out scenes, optimizer steps, image side)
    "small": (1200, 100, 300, 32),
    "default": (4000, 200, 800, 64),
    "large": (12000, 500, 3000, 64),
}


@dataclass
class DemoResult:
    run_dir: Path
    eval_dir: Path
    scores: dict
    baseline: dict
    baseline_caption: str
    samples: list[tuple[str, str]]
    scenes: dict = field(default_factory=dict)
    """Attribute accuracies of the held-out captions (:func:`mmgen.scenes.accuracy.scene_accuracy`)."""
    card: Any = None
    """The model card written into the model folder (:class:`mmgen.model_card.ModelCard`)."""

    @property
    def cider_ratio(self) -> float:
        return self.scores["CIDEr"] / max(self.baseline["CIDEr"], 1e-9)


def demo_config(out: Path, n_train: int, n_val: int, steps: int, image_size: int, seed: int = 0) -> Config:
    """The tiny CPU recipe (the shipped preset ``configs/tiny_cpu.yaml``) sized by the budget."""
    overrides = [
        f"data.synth={{n_train: {n_train}, n_val: {n_val}, seed: {seed}, image_size: {image_size}}}",
        f"model.encoder.img_size={image_size}",
        f"model.encoder.patch_size={image_size // 4}",  # a 4x4 grid of image tokens at every image side
        f"train.out_dir={out / 'run'}",
        f"train.max_steps={steps}",
        f"train.save_every={steps}",
        f"train.seed={seed}",
        f"train.warmup_steps={min(50, steps // 10)}",
        f"eval.every={max(steps // 2, 1)}",
        f"eval.max_images={n_val}",
        "train.log_every=10",
    ]
    return load_preset("tiny_cpu", overrides)


def most_frequent_caption(records) -> str:
    """The trivial baseline: the caption that occurs most often in the training references."""
    counts = Counter(" ".join(c.lower().split()) for r in records for c in r.captions)
    return counts.most_common(1)[0][0]


def run_demo(
    out_dir: str | Path = "mmgen-demo",
    budget: str = "default",
    steps: int | None = None,
    seed: int = 0,
    tokenizer: str = "auto",
    quiet: bool = False,
) -> DemoResult:
    """Run the demo; returns the scores of the model and of the baseline.

    Args:
        out_dir: Where the dataset, the run and the evaluation go.
        budget: 'small' (about a minute), 'default' (a few minutes) or 'large' on 2 CPU cores.
        steps: Override the budget's number of optimizer steps.
        seed: Seed of the data and of the training run.
        tokenizer: PTB tokenizer backend for scoring ('auto', 'java', 'python').
        quiet: Less printing (tests).
    """
    from mmgen.captioner import Captioner
    from mmgen.data import load_records
    from mmgen.evaluation.evaluate import evaluate_model, write_evaluation
    from mmgen.model_card import write_card
    from mmgen.models import CaptionModel
    from mmgen.scenes.accuracy import load_scenes, scene_accuracy
    from mmgen.training.logs import read_metrics
    from mmgen.training.trainer import Trainer

    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    n_train, n_val, n_steps, size = BUDGETS[budget]
    out = Path(out_dir)
    cfg = demo_config(out, n_train, n_val, steps or n_steps, size, seed)
    t0 = time.perf_counter()
    say = (lambda *a: None) if quiet else print
    say(f"[1/4] {n_train} training + {n_val} held-out synthetic scenes ({size}x{size}) -> {out / 'run' / 'data'}")
    trainer = Trainer(cfg, overwrite=True)  # a demo run again into the same --out starts over
    say(
        f"[2/4] training a {trainer.model.parameter_summary()['all']['total'] / 1e6:.1f}M-parameter captioner for "
        f"{cfg.train.max_steps} steps on {trainer.device}"
    )
    trainer.fit()
    run_dir = Path(cfg.train.out_dir)
    model_dir = run_dir / "best" if (run_dir / "best").exists() else run_dir / "final"
    model = CaptionModel.from_pretrained(model_dir)
    val = load_records(str(run_dir / "data" / "captions_val.json"))
    train = load_records(str(run_dir / "data" / "captions_train.json"))
    say(f"[3/4] evaluating on {len(val)} held-out scenes with beam search ({cfg.eval.generation.num_beams} beams)")
    result = evaluate_model(
        model,
        val,
        cfg.eval.generation,
        batch_size=cfg.eval.batch_size,
        num_workers=0,
        progress=not quiet,
        tokenizer=tokenizer,
    )
    scenes = scene_accuracy(result.captions, load_scenes(run_dir / "data" / "captions_val.json"))
    eval_dir = out / "eval"
    baseline_caption = most_frequent_caption(train)
    baseline = score_baseline(val, baseline_caption, tokenizer)
    base = {"name": "the most frequent training caption", "caption": baseline_caption, "scores": baseline}
    title = "mmgen demo: held-out synthetic scenes"
    write_evaluation(eval_dir, result, title, scenes=scenes, curves=read_metrics(run_dir), baseline=base)
    captioner = Captioner(model)
    picks = val[:4] if hasattr(val, "__getitem__") else list(val)[:4]
    samples = [(str(r.image), c) for r, c in zip(picks, captioner.caption([str(r.image) for r in picks]))]
    res = DemoResult(run_dir, eval_dir, result.scores, baseline, baseline_caption, samples, scenes)
    res.card = demo_card(res, model, trainer, len(val), f"mmgen demo --budget {budget} --seed {seed}")
    write_card(model_dir, res.card.render())
    _write_summary(out / "demo_summary.json", res, time.perf_counter() - t0)
    say("[4/4] done\n")
    say(_summary(res, model_dir, time.perf_counter() - t0))
    return res


def score_baseline(val, caption: str, tokenizer: str = "auto") -> dict:
    """BLEU and CIDEr-D of answering ``caption`` for every validation image."""
    from mmgen.evaluation import score_captions

    refs = {r.image_id: list(r.captions) for r in val}
    return score_captions(refs, {i: caption for i in refs}, metrics=["Bleu", "CIDEr"], tokenizer=tokenizer)


def demo_card(res: DemoResult, model, trainer, n_val: int, command: str, name: str = "mmgen-demo"):
    """The model card of the demo's model: its training, and the demo's evaluation beside the baseline."""
    from mmgen.model_card import Evaluation, TrainingBudget, model_card

    st, cfg = trainer.state, trainer.cfg
    budget = TrainingBudget(st.step, st.step * cfg.train.batch_size, st.train_seconds, str(trainer.device))
    beams = cfg.eval.generation.num_beams
    notes = [
        f"The most frequent training caption ('{res.baseline_caption}') for every image scores BLEU-4 "
        f"{res.baseline['Bleu_4']:.3f}, CIDEr {res.baseline['CIDEr']:.3f}: this model's CIDEr is "
        f"{res.cider_ratio:.1f}x that."
    ]
    if res.scenes:
        shown = ("background", "color", "size", "count", "shape", "relation")
        parts = ", ".join(f"{k} {res.scenes[k]:.2f}" for k in shown if isinstance(res.scenes.get(k), float))
        notes.append(f"Its captions read back against each scene's truth (share right): {parts}.")
    evaluation = Evaluation(
        res.scores, f"{n_val} held-out synthetic scenes (beam search, {beams} beams)", command, notes
    )
    return model_card(model, name, data=trainer.card_data, budget=budget, evaluation=evaluation)


def _write_summary(path: Path, res: DemoResult, seconds: float) -> None:
    """demo_summary.json: the scores of the model and of the baseline, scene attributes, samples, time."""
    summary = {
        "model": {k: res.scores[k] for k in ("Bleu_4", "CIDEr")},
        "baseline": res.baseline,
        "baseline_caption": res.baseline_caption,
        "cider_ratio": res.cider_ratio,
        "scene_attributes": res.scenes,
        "samples": res.samples,
        "seconds": seconds,
    }
    path.write_text(json.dumps(summary, indent=2))


def _summary(res: DemoResult, model_dir: Path, seconds: float) -> str:
    from mmgen.scenes.accuracy import format_scene_accuracy

    lines = [
        f"{'':<34}{'BLEU-4':>8}{'CIDEr':>8}",
        f"{'mmgen (beam search)':<34}{res.scores['Bleu_4']:>8.3f}{res.scores['CIDEr']:>8.3f}",
        f"{'baseline (most frequent caption)':<34}{res.baseline['Bleu_4']:>8.3f}{res.baseline['CIDEr']:>8.3f}",
        f"CIDEr is {res.cider_ratio:.1f}x the baseline's (baseline caption: '{res.baseline_caption}')",
        "",
    ]
    if res.scenes:
        lines += [format_scene_accuracy(res.scenes), ""]
    lines += [f"  {Path(p).name}: {c}" for p, c in res.samples]
    lines += [
        "",
        f"model:   {model_dir}",
        f"report:  {res.eval_dir / 'report.html'}",
        f"scores:  {res.eval_dir / 'scores.json'}",
        f"curves:  {res.run_dir / 'curves.png'}",
        f"try:     mmgen caption {Path(res.samples[0][0]).parent} --model {model_dir}",
        f"time:    {seconds:.0f} s",
    ]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole pipeline offline on CPU in a few minutes (synthetic scenes)",
        description="Synthesise a scenes dataset, train a tiny captioner from scratch, evaluate it on held-out "
        "scenes with beam search beside a trivial baseline (the most frequent training caption), caption a few "
        "images and write an HTML report. No network needed.",
    )
    p.add_argument("--out", type=Path, default=Path("mmgen-demo"), help="output directory (default: ./mmgen-demo)")
    p.add_argument(
        "--budget",
        choices=tuple(BUDGETS),
        default="default",
        help="small: ~1 min, default: a few minutes, large: longer and better (2 CPU cores)",
    )
    p.add_argument("--steps", type=positive_int, default=None, help="override the budget's number of training steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", choices=("auto", "java", "python"), default="auto", help="PTB tokenizer backend")
    add_threads_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    res = run_demo(args.out, budget=args.budget, steps=args.steps, seed=args.seed, tokenizer=args.tokenizer)
    if res.cider_ratio >= EXPECTED_RATIO:
        return 0
    print(
        f"mmgen demo: the model's CIDEr is {res.cider_ratio:.1f}x the baseline's, below the {EXPECTED_RATIO:g}x a "
        "demo model reaches: it learnt little; train longer (--budget default or large, or more --steps)",
        file=sys.stderr,
    )
    return 1
