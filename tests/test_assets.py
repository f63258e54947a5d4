"""The shipped tiny model answers from the command line, and stays small."""

import json
from pathlib import Path

from mmgen.commands.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_shipped_model_is_small_and_safetensors_only():
    files = [f for f in (ASSETS / "tiny-scenes-model").rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    assert all(f.suffix in (".json", ".safetensors") or "tokenizer" in f.parts or f.name == "README.md" for f in files)


def test_the_shipped_model_card_says_it_knows_synthetic_shapes_only():
    from huggingface_hub import ModelCard

    card = ModelCard.load(ASSETS / "tiny-scenes-model" / "README.md")
    assert card.data.library_name == "mmgen" and "synthetic-data" in card.data.tags
    assert "It knows synthetic shapes only" in card.text and "never on photos" in card.text
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    metrics = json.loads((ASSETS / "tiny-scenes-model" / "metrics.json").read_text())
    assert scores["cider"] == round(metrics["CIDEr"], 4) and scores["bleu"] == round(metrics["Bleu_4"], 4)


def test_caption_the_shipped_images(capsys):
    code = main(
        [
            "caption",
            str(ASSETS / "images"),
            "--model",
            str(ASSETS / "tiny-scenes-model"),
            "--beams",
            "3",
            "--device",
            "cpu",
        ]
    )
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    # which model answers, on stderr: its name and what it was trained on (its card)
    assert err.splitlines() == [
        f"mmgen caption: model tiny-scenes-model ({ASSETS / 'tiny-scenes-model'}), trained on synthetic scenes "
        "(mmgen data synth: simple, seed 0, 64x64 pixels), 4,000 images"
    ]
    for line in lines:
        path, caption = line.split("\t")
        assert path.endswith(".png") and len(caption.split()) >= 4
        assert any(bg in caption for bg in ("striped", "gradient", "dotted", "checkered"))  # the scenes' backgrounds
