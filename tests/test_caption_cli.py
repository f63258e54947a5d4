"""``mmgen caption``: captions image files and folders; reports unreadable images and keeps going."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch
from PIL import Image

from mmgen.captioner import Captioner
from mmgen.commands.cli import main
from mmgen.config import GenerationConfig
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.tokenizer import train_caption_tokenizer


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


def test_dotted_generation_overrides_change_the_search_as_a_direct_call_does(model_dir, image_dir, capsys):
    """``generation.KEY=VALUE`` (the overrides of mmgen train) among the images: the captions of a direct call
    with those settings; a misspelt key is a usage error naming the valid one."""
    files = [str(image_dir / "a.jpg"), str(image_dir / "c.PNG")]
    dotted = ["generation.num_beams=1", "generation.max_new_tokens=2", "generation.bad_words=[red]"]
    assert main(["caption", files[0], *dotted, files[1], "--model", str(model_dir), "--device", "cpu"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [p for p, _ in lines] == files
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    expected = captioner.caption(files, num_beams=1, max_new_tokens=2, bad_words=("red",), num_return_sequences=1)
    assert [c for _, c in lines] == expected
    default = captioner.caption(files)  # the saved settings: 3 beams, up to 12 tokens
    assert all(len(captioner.model.tokenizer(c)["input_ids"]) <= 2 + 2 for c in expected)  # BOS/EOS at most
    assert expected != default or all(len(c.split()) <= 2 for c in default)
    assert main(["caption", files[0], "generation.num_beam=2", "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'generation.num_beam'" in err and "num_beams" in err
    assert main(["caption", files[0], "generation.num_beams=0", "--model", str(model_dir), "--device", "cpu"]) == 2
    assert "generation.num_beams: must be >= 1" in capsys.readouterr().err


def test_missing_file_and_bad_settings(model_dir, image_dir, capsys):
    """A file named on the command line that does not exist is a usage error (2), before any captioning."""
    missing = image_dir / "nope.jpg"
    assert main(["caption", str(missing), str(image_dir / "a.jpg"), "--model", str(model_dir)]) == 2
    out, err = capsys.readouterr()
    assert err == f"mmgen caption: {missing}: no such file or directory\n" and out == ""
    assert main(["caption", str(image_dir), "--model", str(model_dir), "--beams", "0"]) == 2
    assert "num_beams" in capsys.readouterr().err


def test_usage_errors_are_one_line_each_with_exit_code_2(model_dir, image_dir, tmp_path, capsys):
    empty, nested = tmp_path / "empty", tmp_path / "nested"
    empty.mkdir()
    (nested / "x").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(nested / "x" / "img.png")  # only in a subdirectory
    code = main(["caption", str(empty), str(nested), str(nested / "x"), "--model", str(model_dir)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"mmgen caption: {empty}: a directory with no image files (.jpg")
    assert lines[1].startswith(f"mmgen caption: {nested}: a directory with no image files")
    assert "subdirectories are not searched" in lines[1] and "subdirectories" not in lines[0]
    assert main(["caption", str(image_dir / "a.jpg"), "--model", str(model_dir), "--batch-size", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [
        "mmgen caption: error: argument --batch-size: must be >= 1, got 0 (see mmgen caption --help)"
    ]
    assert main(["caption", str(image_dir / "a.jpg"), "--model", str(tmp_path / "no-model")]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and "cannot load the model" in err and out == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("quiet", [False, True])
def test_progress_bar_on_a_terminal_stderr_only(model_dir, image_dir, capsys, monkeypatch, quiet):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["caption", str(image_dir / "a.jpg"), str(image_dir / "c.PNG"), "--model", str(model_dir)]
    assert main(argv + ["--device", "cpu"] + (["--quiet"] if quiet else [])) == 0
    out = capsys.readouterr().out
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(image_dir / "a.jpg"), str(image_dir / "c.PNG")]
    assert ("2/2" in terminal.getvalue()) is not quiet  # the bar: on stderr, only on a terminal, not with --quiet


def test_generation_overrides_and_images_after_the_options_as_the_synopsis_writes_them(model_dir, image_dir, capsys):
    first, second = str(image_dir / "a.jpg"), str(image_dir / "c.PNG")
    argv = ["caption", first, "--model", str(model_dir), "--beams", "3", "generation.num_beams=1"]
    assert main([*argv, "--device", "cpu", second, "generation.max_new_tokens=4"]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    captioner = Captioner.from_pretrained(model_dir, device="cpu")
    expected = captioner.caption([first, second], num_beams=1, max_new_tokens=4, num_return_sequences=1)
    assert lines == [[first, expected[0]], [second, expected[1]]]  # the dotted override wins over --beams


def test_file_names_with_tabs_and_line_breaks_stay_one_line_each(model_dir, image_dir, tmp_path, capsys):
    import codecs
    import shutil

    folder = tmp_path / "odd"
    folder.mkdir()
    names = ["back\\slash.png", "line\nbreak.png", "tab\there.png"]  # sorted as list_images sorts them
    for name in names:
        shutil.copy(image_dir / "b.png", folder / name)
    (folder / "cut\rshort.png").write_bytes(b"not an image")
    assert main(["caption", str(folder), "--model", str(model_dir), "--device", "cpu"]) == 1
    out, err = capsys.readouterr()
    fields = [line.split("\t") for line in out.splitlines()]
    assert [len(f) for f in fields] == [2, 2, 2]  # one line and two fields per image
    assert [codecs.decode(path, "unicode_escape") for path, _ in fields] == [str(folder / n) for n in names]
    assert fields[1][0] == str(folder) + "/line\\nbreak.png" and fields[2][0].endswith("tab\\there.png")
    captions = Captioner.from_pretrained(model_dir, device="cpu").caption([folder / n for n in names])
    assert [c for _, c in fields] == captions
    lines = err.splitlines()
    assert lines[0].startswith("mmgen caption: model ")  # which model answers
    assert lines[1].startswith(f"mmgen caption: {folder}/cut\\rshort.png: not an image")
    assert len(lines) == 3  # the model, the image, then the count
    assert main(["caption", str(folder / names[1]), "--model", str(model_dir), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["image"] == str(folder / names[1])  # JSON keeps the name as it is
