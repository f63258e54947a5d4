"""Dataset statistics: words in any script, images without captions counted apart, the stats command."""

from __future__ import annotations

import json

from mmgen.commands.cli import main
from mmgen.data.records import Record
from mmgen.data.stats import caption_words, dataset_stats, format_stats, stats_dict


def test_words_are_counted_in_every_script():
    assert caption_words("A dog's ball, well-known; 3.5 m!") == ["a", "dog's", "ball", "well", "known", "3", "5", "m"]
    assert caption_words("Un café près de l'église") == ["un", "café", "près", "de", "l'église"]
    assert caption_words("رجل يركب دراجة في الشارع") == ["رجل", "يركب", "دراجة", "في", "الشارع"]  # 5 words
    assert caption_words("एक कुत्ता घास पर दौड़ रहा है") == ["एक", "कुत्ता", "घास", "पर", "दौड़", "रहा", "है"]  # signs stay
    assert caption_words("一只狗在草地上跑。") == list("一只狗在草地上跑")  # no spaces: one word per character
    assert caption_words("犬が走る") == ["犬", "が", "走", "る"]
    assert caption_words("สุนัขวิ่ง") == ["สุ", "นั", "ข", "วิ่", "ง"]  # vowel and tone marks stay with their letter
    assert caption_words("개가 공원에서 뛴다") == ["개가", "공원에서", "뛴다"]  # Korean is written with spaces
    assert caption_words("a dog 🐶 runs!") == ["a", "dog", "runs"]


def test_images_without_captions_are_counted_apart():
    recs = [
        Record("a.png", ["一只狗", "a dog runs"], image_id=1),
        Record("b.png", ["a cat"], image_id=2),
        Record("c.png", [], image_id=3),
    ]
    st = dataset_stats(recs, decode=False)
    assert (st.images, st.images_without_captions, st.captions) == (3, 1, 3)
    assert dict(st.captions_per_image) == {2: 1, 1: 1}  # the uncaptioned image is not a '0' in the distribution
    assert dict(st.lengths) == {3: 2, 2: 1}
    text = format_stats(st)
    assert "images: 3 (2 with captions, 1 without)" in text
    assert "captions: 3 (1.50 per image with captions)" in text
    assert "images without captions: 1 (not trained on" in text
    d = stats_dict(st)
    assert (d["images"], d["images_with_captions"], d["images_without_captions"]) == (3, 2, 1)


def test_stats_command_counts_coco_images_without_captions(tmp_path, capsys):
    images = [{"id": i, "file_name": f"{i}.png"} for i in (1, 2, 3)]
    anns = [{"id": 1, "image_id": 1, "caption": "一只狗在跑"}, {"id": 2, "image_id": 2, "caption": " "}]
    (tmp_path / "c.json").write_text(json.dumps({"images": images, "annotations": anns}))
    assert main(["data", "stats", "--data", str(tmp_path / "c.json"), "--no-decode", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["images"], d["images_with_captions"], d["images_without_captions"], d["captions"]) == (3, 1, 2, 1)
    assert d["caption_lengths"] == {"5": 1}
