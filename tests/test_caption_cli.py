"""``mmgen caption``: captions image files and folders; reports unreadable images and keeps going."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmgen.captioner import Captioner
from mmgen.cli import main
from mmgen.config import GenerationConfig
from mmgen.models import CaptionModel, tiny_model_config, train_caption_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    tok = train_caption_tokenizer(["a red circle on a blue square", "two green stars", "a black dog near a tree"])
    model = CaptionModel(tiny_model_config(), tok).eval()
    model.generation_config = GenerationConfig(num_beams=3, num_return_sequences=2, max_new_tokens=12)
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    g = torch.Generator().manual_seed(0)
    for name in ("b.png", "a.jpg", "c.PNG"):
        pixels = torch.randint(0, 256, (36, 44, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / name, format="JPEG" if name.endswith("jpg") else "PNG")
    (folder / "broken.jpg").write_bytes(b"this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image, ignored")
    return folder


def test_captions_a_folder_and_reports_the_broken_image(model_dir, image_dir, capsys):
    code = main(["caption", str(image_dir), "--model", str(model_dir), "--batch-size", "2", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert code != 0
    assert "broken.jpg" in err and "not an image" in err
    lines = [line.split("\t") for line in out.splitlines()]
    names = ["a.jpg", "b.png", "c.PNG"]  # sorted, the text file skipped, the broken image left out
    assert [p for p, _ in lines] == [str(image_dir / n) for n in names]
    expected = Captioner.from_pretrained(model_dir, device="cpu").caption([image_dir / n for n in names])
    assert [c for _, c in lines] == expected


def test_json_lines_and_settings(model_dir, image_dir, capsys):
    files = [str(image_dir / "a.jpg"), str(image_dir / "c.PNG")]
    args = ["caption", *files, "--model", str(model_dir), "--json", "--beams", "2", "--max-new-tokens", "5"]
    assert main([*args, "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["image"] for r in records] == files
    assert all(isinstance(r["score"], float) and isinstance(r["caption"], str) for r in records)
    expected = Captioner.from_pretrained(model_dir, device="cpu").caption_with_scores(
        files, num_beams=2, max_new_tokens=5, num_return_sequences=1
    )
    assert [r["caption"] for r in records] == [options[0][0] for options in expected]
    assert all(len(r["caption"].split()) <= 5 for r in records)


def test_missing_file_and_bad_settings(model_dir, image_dir, capsys):
    missing = image_dir / "nope.jpg"
    assert main(["caption", str(missing), str(image_dir / "a.jpg"), "--model", str(model_dir)]) == 1
    out, err = capsys.readouterr()
    assert "nope.jpg" in err and "not found" in err
    assert out.startswith(str(image_dir / "a.jpg") + "\t")
    assert main(["caption", str(image_dir), "--model", str(model_dir), "--beams", "0"]) == 2
    assert "num_beams" in capsys.readouterr().err
