"""The HTML evaluation report: parses, names every image, shows failures, escapes text."""

from __future__ import annotations

import csv
from html.parser import HTMLParser

from PIL import Image

from mmgen.evaluation import ReportEntry, collapse_stats, write_report


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def test_report(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (640, 480), (200, 30, 30)).save(photo)
    entries = [
        ReportEntry(101, photo, "a red square", ["a red image", "red"], cider=0.9),
        ReportEntry(102, Image.new("L", (50, 300), 128), "<script>alert(1)</script>", ["a & b"], cider=0.1),
        ReportEntry(103, None, "", ["a cat"], cider=None, error="decode failed: truncated <file>"),
        {"image_id": "104", "image": tmp_path / "missing.jpg", "candidate": "x", "references": ["y"], "cider": 0.5},
    ]
    scores = {"Bleu_4": 0.25, "CIDEr": 0.5}
    stats = collapse_stats([e.candidate if isinstance(e, ReportEntry) else e["candidate"] for e in entries])
    path = write_report(tmp_path / "out", entries, scores, stats, title="Val <run>")

    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    text = " ".join(parser.text)
    for image_id in ("101", "102", "103", "104"):
        assert image_id in text
    assert "Val <run>" in text and "<script>alert(1)</script>" in text  # shown as text, not markup
    assert not any(tag == "script" for tag, _ in parser.tags)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 2 and all(a["src"].startswith("data:image/jpeg;base64,") for a in images)
    assert not any("href" in attrs or tag == "link" for tag, attrs in parser.tags)  # nothing external
    assert "decode failed: truncated <file>" in text
    assert "could not load image: file not found" in text  # the safe decoder's reason
    assert "CIDEr" in text and "0.5000" in text and "distinct_fraction" in text
    assert "failed images" in text and "empty captions" in text

    with open(tmp_path / "out" / "per_image.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    # failures first, then worst CIDEr first
    assert [r["image_id"] for r in rows] == ["103", "104", "102", "101"]
    assert rows[2]["candidate"] == "<script>alert(1)</script>" and rows[0]["error"].startswith("decode failed")


def test_thumbnails_use_evaluations_decoder_and_pixel_limit(tmp_path, monkeypatch):
    """An image over max_pixels gets a placeholder (checked on the header), an image evaluation rejected is
    never decoded; the others still get thumbnails."""
    import mmgen.data.images as images

    big, small, rejected = tmp_path / "big.png", tmp_path / "small.png", tmp_path / "rejected.png"
    Image.new("RGB", (120, 100), (0, 90, 200)).save(big)  # 12000 pixels > 5000
    Image.new("RGB", (60, 50), (0, 90, 200)).save(small)  # 3000 pixels
    Image.new("RGB", (60, 50), (0, 90, 200)).save(rejected)
    decoded, loaded = [], []
    real_decode, real_load = images.decode_image, Image.Image.load
    monkeypatch.setattr(images, "decode_image", lambda src, *a, **k: decoded.append(src) or real_decode(src, *a, **k))
    monkeypatch.setattr(Image.Image, "load", lambda im: loaded.append(im.size) or real_load(im))
    entries = [
        ReportEntry(1, big, "a blue image", ["blue"], cider=0.2),
        ReportEntry(2, small, "a blue image", ["blue"], cider=0.3),
        ReportEntry(3, rejected, "", [], error="too many pixels: 13000x13000 = 169000000 > max_pixels 89478485"),
    ]
    path = write_report(tmp_path / "out", entries, {"CIDEr": 0.25}, max_pixels=5000)

    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    text = " ".join(parser.text)
    assert "could not load image: too many pixels: 120x100 = 12000 > max_pixels 5000" in text
    assert "13000x13000" in text  # evaluation's reason shown for the rejected image
    assert len([attrs for tag, attrs in parser.tags if tag == "img"]) == 1  # only the small image
    assert decoded == [big, small]  # the rejected image is not even opened
    assert (120, 100) not in loaded  # the big image's pixels were never decoded


def test_the_collapse_banner_needs_one_caption_said_at_least_twice(tmp_path):
    cases = {("a dog", "a cat"): False, ("a dog", "a dog"): True, ("a dog", "a dog", "a cat"): True, ("x",): False}
    for captions, collapsed in cases.items():
        path = write_report(tmp_path / str(len(captions)), [], {}, collapse_stats(list(captions)))
        assert ("Caption collapse" in path.read_text()) == collapsed, captions


def test_the_report_draws_curves_attributes_confusions_and_the_baseline(tmp_path):
    import base64
    import io

    import numpy as np

    from mmgen.scenes.accuracy import scene_accuracy
    from mmgen.scenes.simple import sample_scene, scene_captions

    rng = np.random.default_rng(0)
    scenes = {i: sample_scene(rng) for i in range(40)}
    captions = {i: scene_captions(s)[0] for i, s in scenes.items()}
    captions[0] = "a small red circle on a striped background"
    acc = scene_accuracy(captions, scenes)
    rows = [{"step": s, "loss": 2.0 / s} for s in range(1, 21)] + [{"step": 20, "eval": {"CIDEr": 1.2, "loss": 0.4}}]
    baseline = {"name": "the most frequent caption", "caption": "a red square", "scores": {"CIDEr": 0.4, "Bleu_4": 0.1}}
    entries = [ReportEntry(i, None, c, list(scene_captions(scenes[i])), cider=1.0) for i, c in captions.items()]
    path = write_report(tmp_path, entries, {"CIDEr": 1.2, "Bleu_4": 0.5}, scenes=acc, curves=rows, baseline=baseline)
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    figures = [a["src"] for t, a in parser.tags if t == "img" and a.get("src", "").startswith("data:image/png")]
    assert len(figures) == 3  # the curves, the attribute bars, the confusion matrices
    sizes = [Image.open(io.BytesIO(base64.b64decode(f.split(",", 1)[1]))).size for f in figures]
    assert all(w > 300 and h > 150 for w, h in sizes)
    text = " ".join(parser.text)
    assert "a red square" in text and "3.0x" in text and "baseline 0.400" in text
    plain = write_report(tmp_path / "plain", entries, {"CIDEr": 1.2})  # no run, no scenes: no figures
    assert "data:image/png" not in plain.read_text(encoding="utf-8")
