"""mmgen evaluate on a tiny saved model: every output written, failed images listed, report names every image."""

import json
import re
from html.parser import HTMLParser

import pytest

from mmgen.commands.cli import main
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.scenes.accuracy import load_scenes, scene_accuracy
from mmgen.scenes.writer import make_scenes
from mmgen.tokenizer import train_caption_tokenizer


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text = []

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_scenes(root / "data", 6, seed=1, image_size=32)
    ann = json.loads((root / "data" / "captions_train.json").read_text())
    tok = train_caption_tokenizer([a["caption"] for a in ann["annotations"]], "wordlevel", 100)
    CaptionModel(tiny_model_config(), tok).save_pretrained(root / "model")
    return root


def test_evaluate_writes_all_outputs_and_lists_failed_images(saved, capsys):
    ann_path = saved / "data" / "captions_train.json"
    ann = json.loads(ann_path.read_text())
    broken = saved / "data" / ann["images"][2]["file_name"]
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 3])  # truncated PNG
    try:
        code = main(
            [
                "evaluate",
                "--model",
                str(saved / "model"),
                "--data",
                str(ann_path),
                "--out",
                str(saved / "out"),
                "--beams",
                "2",
                "--max-new-tokens",
                "8",
                "--workers",
                "0",
                "--tokenizer",
                "python",
                "--metrics",
                "Bleu",
                "ROUGE_L",
                "CIDEr",
                "--device",
                "cpu",
            ]
        )
    finally:
        broken.write_bytes(good)
    out = capsys.readouterr().out
    assert code == 1  # one image failed
    assert "1 images failed to decode" in out and str(ann["images"][2]["id"]) in out
    scores = json.loads((saved / "out" / "scores.json").read_text())
    assert set(scores["scores"]) >= {"Bleu_4", "CIDEr", "ROUGE_L"}
    assert scores["images"] == 5 and scores["failed_images"] == 1
    assert scores["failed"][0]["image_id"] == ann["images"][2]["id"]
    results = json.loads((saved / "out" / "results.json").read_text())
    acc = json.loads((saved / "out" / "scene_accuracy.json").read_text())  # scenes carry their truth
    assert acc == scene_accuracy({r["image_id"]: r["caption"] for r in results}, load_scenes(ann_path))
    assert acc["images"] == 5 and "scene attributes: exact" in out
    assert sorted(r["image_id"] for r in results) == sorted(i["id"] for i in ann["images"] if i is not ann["images"][2])
    parser = _Text()
    parser.feed((saved / "out" / "report.html").read_text())
    text = " ".join(parser.text)
    for image in ann["images"]:
        assert str(image["id"]) in text
    assert "Scene attributes" in text and "shape_small" in text  # the report shows what the captions get wrong
    rows = (saved / "out" / "per_image.tsv").read_text().splitlines()
    assert len(rows) == 1 + 6
    html = (saved / "out" / "report.html").read_text()
    summary = {k: int(v) for k, v in re.findall(r"<tr><td>([a-z ]+)</td><td class='num'>(\d+)</td></tr>", html)}
    # the report's counts are scores.json's: a failed image is not an empty caption
    assert summary == {"images": 5, "failed images": 1, "empty captions": scores["empty_captions"]}


def test_bad_arguments_are_one_line_and_exit_code_2(saved, tmp_path, capsys):
    """A typo in --data, a missing images folder or model, --batch-size 0: one line each, exit code 2."""
    ann = str(saved / "data" / "captions_train.json")
    base = ["evaluate", "--model", str(saved / "model"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    cases = [
        (["--data", ann.replace("train", "trian")], f"mmgen evaluate: --data {ann.replace('train', 'trian')}: no such"),
        (["--data", ann, "--images", str(tmp_path / "imgs")], f"mmgen evaluate: --images {tmp_path / 'imgs'}: no such"),
        (["--data", ann, "--batch-size", "0"], "mmgen evaluate: error: argument --batch-size: must be >= 1, got 0"),
        (["--data", ann, "--workers", "-1"], "mmgen evaluate: error: argument --workers: must be >= 0, got -1"),
        (["--data", ann, "--model", str(tmp_path / "none")], f"mmgen evaluate: --model {tmp_path / 'none'}: no such"),
    ]
    for extra, start in cases:
        assert main([*base, *extra]) == 2, extra
        out, err = capsys.readouterr()
        assert len(err.splitlines()) == 1 and err.startswith(start), err
        assert out == ""
    assert not (tmp_path / "out").exists()
    (tmp_path / "bad.json").write_text("{not json")
    assert main([*base, "--data", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("mmgen evaluate: cannot read --data") and "bad.json" in err


def test_dotted_generation_overrides_reach_the_captions(saved, tmp_path, capsys):
    """``generation.KEY=VALUE`` after --data (the overrides of mmgen train) captions as a direct call with them."""
    from mmgen.captioner import Captioner

    ann_path = saved / "data" / "captions_train.json"
    dotted = ["generation.num_beams=1", "generation.max_new_tokens=3", "generation.no_repeat_ngram_size=1"]
    argv = ["evaluate", "--model", str(saved / "model"), "--data", str(ann_path), *dotted, "--beams", "4"]
    argv += ["--out", str(tmp_path / "out"), "--workers", "0", "--tokenizer", "python", "--metrics", "Bleu"]
    assert main([*argv, "--device", "cpu"]) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    ann = json.loads(ann_path.read_text())
    captioner = Captioner.from_pretrained(saved / "model", device="cpu")
    files = [saved / "data" / image["file_name"] for image in ann["images"]]
    expected = captioner.caption(files, num_beams=1, max_new_tokens=3, no_repeat_ngram_size=1)  # dotted beat --beams
    by_id = {r["image_id"]: r["caption"] for r in results}
    assert [by_id[image["id"]] for image in ann["images"]] == expected
