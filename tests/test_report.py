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
    assert "could not load image: FileNotFoundError" in text
    assert "CIDEr" in text and "0.5000" in text and "distinct_fraction" in text
    assert "failed images" in text and "empty captions" in text

    with open(tmp_path / "out" / "per_image.tsv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    # failures first, then worst CIDEr first
    assert [r["image_id"] for r in rows] == ["103", "104", "102", "101"]
    assert rows[2]["candidate"] == "<script>alert(1)</script>" and rows[0]["error"].startswith("decode failed")
