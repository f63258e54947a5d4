"""The shipped tiny model answers from the command line, and stays small."""

from pathlib import Path

from mmgen.commands.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def test_shipped_model_is_small_and_safetensors_only():
    files = [f for f in (ASSETS / "tiny-scenes-model").rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 10 * 2**20
    assert all(f.suffix in (".json", ".safetensors") or "tokenizer" in f.parts for f in files)


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
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    for line in lines:
        path, caption = line.split("\t")
        assert path.endswith(".png") and len(caption.split()) >= 4
        assert any(bg in caption for bg in ("striped", "gradient", "dotted", "checkered"))  # the scenes' backgrounds
