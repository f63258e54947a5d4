"""Rebuild ``assets/``: a few rendered scenes and a tiny trained captioner (a few MB).

    python scripts/make_assets.py                      # trains with the demo's default budget (a few minutes)
    python scripts/make_assets.py --from-demo mmgen-demo   # reuse the model of an earlier `mmgen demo`
    python scripts/make_assets.py --card-only              # rewrite the model card of the shipped model only

The model folder gets its model card (``README.md``): the demo's, renamed, or with ``--card-only`` one written from
what is known of the shipped model (the demo's default budget, the scores in its ``metrics.json``).

Then ``mmgen caption assets/images --model assets/tiny-scenes-model`` answers at once.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render_images(out: Path, n: int = 4, seed: int = 2024, size: int = 64) -> list[Path]:
    """Scenes the model never saw in training (their own seed), copied as assets/images/scene_K.png."""
    from mmgen.scenes.writer import make_scenes

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_scenes(tmp, n, seed=seed, image_size=size)
        files = sorted(Path(tmp, "images").rglob("*.png"))[:n]
        paths = []
        for k, f in enumerate(files, 1):
            dst = out / f"scene_{k}.png"
            shutil.copyfile(f, dst)
            paths.append(dst)
    return paths


NAME = "tiny-scenes-model"
USE = "Trying mmgen out (the README's examples, tests, the upload page): not a captioner of photos."
SHIPPED = {
    # what is known of the model shipped now: `mmgen demo` with the default budget and seed 0 (scripts/make_assets.py)
    "train": 4000,
    "val": 200,
    "steps": 800,
    "batch_size": 32,
    "image_size": 64,
}


def shipped_card(model_dir: Path) -> str:
    """The card of the shipped model, from its files and the demo recipe that trained it (no retraining)."""
    import json

    from mmgen.model_card import Evaluation, TrainingBudget, TrainingData, model_card
    from mmgen.models import CaptionModel
    from mmgen.training.run_card import SCENE_KINDS

    model = CaptionModel.from_pretrained(model_dir)
    metrics = json.loads((model_dir / "metrics.json").read_text())
    side = SHIPPED["image_size"]
    data = TrainingData(
        f"synthetic scenes (mmgen data synth: simple, seed 0, {side}x{side} pixels)",
        SHIPPED["train"],
        SHIPPED["train"] * 5,
        synthetic=True,
        description=SCENE_KINDS["simple"],
    )
    budget = TrainingBudget(metrics["step"], metrics["step"] * SHIPPED["batch_size"], None, "CPU (about two minutes)")
    beams = model.generation_config.num_beams
    evaluation = Evaluation(
        {k: v for k, v in metrics.items() if isinstance(v, float)},
        f"{SHIPPED['val']} held-out synthetic scenes (beam search, {beams} beams, at step {metrics['step']})",
        "mmgen demo --budget default --seed 0",
        ["The scores are the demo's evaluation of this checkpoint (its metrics.json)."],
    )
    limits = ["A tiny model (two CPU minutes of training): it still confuses shapes, sizes and relations."]
    card = model_card(model, NAME, data=data, budget=budget, evaluation=evaluation, limitations=limits)
    card.intended_use = USE
    return card.render()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from-demo", type=Path, help="an existing `mmgen demo --out DIR` directory to take the model from")
    p.add_argument("--budget", default="default", choices=("small", "default", "large"))
    p.add_argument("--assets", type=Path, default=ROOT / "assets")
    p.add_argument("--card-only", action="store_true", help="write the shipped model's card only (no training)")
    args = p.parse_args(argv)
    from mmgen.model_card import write_card

    if args.card_only:
        print(f"card: {write_card(args.assets / NAME, shipped_card(args.assets / NAME))}")
        return 0

    demo_dir, card = args.from_demo, None
    if demo_dir is None:
        from mmgen.commands.demo_command import run_demo

        demo_dir = Path(tempfile.mkdtemp(prefix="mmgen-assets-"))
        card = run_demo(demo_dir, budget=args.budget).card
        card.name = NAME
        card.intended_use = (
            "Trying mmgen out (the README's examples, tests, the upload page): not a captioner of photos."
        )
    src = demo_dir / "run" / "best"
    if not src.exists():
        src = demo_dir / "run" / "final"
    dst = args.assets / NAME
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    if card is not None:  # the demo's card (its evaluation and baseline) under the shipped name
        write_card(dst, card.render())
    images = render_images(args.assets / "images")
    size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
    print(f"model: {dst} ({size / 2**20:.1f} MiB)")
    for path in images:
        print(f"image: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
