"""Caption metrics against the published COCO tables, pycocoevalcap and independent brute force."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from mmgen.evaluation import (
    CiderD,
    ScorerUnavailableError,
    _java,
    collapse_stats,
    load_coco_references,
    load_coco_results,
    results_to_candidates,
    score_captions,
    score_captions_detailed,
)

JAVA = _java.java_tools_available()
TABLE_KEYS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]


@pytest.fixture(scope="module")
def reference_eval():
    """The official demo's inputs and published table (skips without the shared data)."""
    from conftest import shared_data_dir

    root = shared_data_dir()
    if root is None:
        pytest.skip("shared data folder is absent")
    folder = root / "cocoeval-reference"
    refs = load_coco_references(folder / "captions_val2014.json")
    cands = load_coco_results(folder / "captions_val2014_fakecap_results.json")
    table = json.loads((folder / "reference_scores.json").read_text())["full_precision"]
    return refs, cands, table


def _metrics(java_needed: bool = True) -> list[str]:
    return ["Bleu", "ROUGE_L", "CIDEr"] + (["METEOR"] if JAVA and java_needed else [])


@pytest.fixture(scope="module")
def python_result(reference_eval):
    refs, cands, _ = reference_eval
    return score_captions_detailed(refs, cands, metrics=_metrics(), tokenizer="python")


def _check_table(scores, table):
    for key in TABLE_KEYS:
        if key == "METEOR" and not JAVA:
            continue
        assert abs(scores[key] - table[key]) < 1e-6, (key, scores[key], table[key])


def test_published_table_with_python_tokenizer(reference_eval, python_result):
    _check_table(python_result.overall, reference_eval[2])
    assert list(python_result.overall) == [k for k in TABLE_KEYS if k in python_result.overall]
    assert python_result.tokenizer == "python" and python_result.empty_candidates == []


@pytest.mark.skipif(not JAVA, reason="needs java and pycocoevalcap")
def test_published_table_with_java_tokenizer(reference_eval, python_result):
    refs, cands, table = reference_eval
    result = score_captions_detailed(refs, cands, metrics=_metrics(), tokenizer="java")
    _check_table(result.overall, table)
    assert result.tokenized_candidates == python_result.tokenized_candidates
    assert result.tokenized_references == python_result.tokenized_references


def test_ciderd_equals_pycocoevalcap_per_image(python_result):
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    refs, cands = python_result.tokenized_references, python_result.tokenized_candidates
    mean, expected = cider.Cider().compute_score(refs, {i: [c] for i, c in cands.items()})
    ours = CiderD(refs).score(list(refs), [cands[i] for i in refs])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    per_image = [python_result.per_image[i]["CIDEr"] for i in refs]
    np.testing.assert_allclose(per_image, expected, rtol=0, atol=1e-12)
    assert abs(python_result.overall["CIDEr"] - mean) < 1e-12


def test_clipscore_published_numbers(shared_data):
    folder = shared_data / "clipscore-example"
    refs = json.loads((folder / "refs.json").read_text())
    published = {
        "good": [0.6667, 0.4899, 0.3469, 0.0, 0.3444, 0.4280, 0.5637],
        "bad": [0.4815, 0.2404, 0.1359, 0.0, 0.1861, 0.3121, 0.2790],
    }
    for name, values in published.items():
        cands = json.loads((folder / f"{name}_captions.json").read_text())
        scores = score_captions(refs, cands, metrics=_metrics(), tokenizer="python")
        for key, value in zip(TABLE_KEYS, values):
            if key in scores:
                assert round(scores[key], 4) == pytest.approx(value, abs=1e-9), (name, key, scores[key])


# --------------------------------------------------------------------------------------------------
# Three images, checked against formulas written out independently here.

REFS = {
    1: ["a cat sits on a mat", "the cat is on the mat"],
    2: ["a dog runs in the park", "a brown dog is running"],
    3: ["two people ride bikes", "people riding bicycles down a road"],
}
CANDS = {1: "a cat is on the mat", 2: "a dog is running in a park", 3: "a man rides a horse"}


def _grams(sentence, k):
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for i in range(len(words) - k + 1))


def _brute_bleu(refs, cands, n):
    matches, guesses, cand_len, ref_len = [0] * n, [0] * n, 0, 0
    for i, cand in cands.items():
        for k in range(1, n + 1):
            clip = Counter()
            for r in refs[i]:
                clip |= _grams(r, k)
            matches[k - 1] += sum(min(c, clip[g]) for g, c in _grams(cand, k).items())
            guesses[k - 1] += max(len(cand.split()) - k + 1, 0)
        c = len(cand.split())
        cand_len += c
        ref_len += min((abs(len(r.split()) - c), len(r.split())) for r in refs[i])[1]
    precision = math.prod(m / g for m, g in zip(matches, guesses)) ** (1 / n)
    return precision * (math.exp(1 - ref_len / cand_len) if cand_len < ref_len else 1.0)


def _brute_cider(refs, cands, df_source=None):
    df_source = refs if df_source is None else df_source
    df = Counter(g for rs in df_source.values() for g in {g for r in rs for k in range(1, 5) for g in _grams(r, k)})

    def vec(s, k):
        return {g: c * (math.log(len(df_source)) - math.log(max(1.0, df[g]))) for g, c in _grams(s, k).items()}

    scores = {}
    for i, cand in cands.items():
        total = 0.0
        for r in refs[i]:
            per_order = []
            for k in range(1, 5):
                vc, vr = vec(cand, k), vec(r, k)
                dot = sum(min(w, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, w in vc.items())
                norms = math.sqrt(sum(w * w for w in vc.values())) * math.sqrt(sum(w * w for w in vr.values()))
                delta = max(len(cand.split()) - 1, 0) - max(len(r.split()) - 1, 0)
                per_order.append((dot / norms if norms else 0.0) * math.exp(-(delta**2) / 72.0))
            total += sum(per_order) / 4
        scores[i] = total / len(refs[i]) * 10
    return scores


def test_three_images_against_brute_force():
    result = score_captions_detailed(REFS, CANDS, metrics=["Bleu", "CIDEr"], tokenizer="python")
    # BLEU-1 by hand: clipped unigram matches 6 + 6 + 1 of 6 + 7 + 5 words, no brevity penalty.
    assert result.overall["Bleu_1"] == pytest.approx(13 / 18, rel=1e-9)
    for n in range(1, 5):
        assert result.overall[f"Bleu_{n}"] == pytest.approx(_brute_bleu(REFS, CANDS, n), rel=1e-6, abs=1e-9)
    expected = _brute_cider(REFS, CANDS)
    for i in REFS:
        assert result.per_image[i]["CIDEr"] == pytest.approx(expected[i], rel=1e-12, abs=1e-12)
    assert result.overall["CIDEr"] == pytest.approx(sum(expected.values()) / 3, rel=1e-12)


def test_ciderd_document_frequency_from_another_corpus():
    train = {10: ["a cat on a mat", "a dog in a park"], 11: ["a man rides a horse"], 12: ["people ride bikes"]}
    scorer = CiderD(REFS, df_corpus=train)
    expected = _brute_cider(REFS, CANDS, df_source=train)
    np.testing.assert_allclose(scorer.score(list(CANDS), list(CANDS.values())), list(expected.values()), atol=1e-12)


def test_ciderd_batches_with_repeated_images():
    scorer = CiderD(REFS)
    single = scorer.score([1, 2, 3], [CANDS[1], CANDS[2], CANDS[3]])
    batch = scorer.score([3, 1, 1, 2], [CANDS[3], CANDS[1], "a cat", CANDS[2]])
    assert batch[0] == single[2] and batch[1] == single[0] and batch[3] == single[1]
    assert 0 < batch[2] < batch[1]
    assert scorer.score([1], [""])[0] == 0.0
    with pytest.raises(KeyError, match="99"):
        scorer.score([99], ["a cat"])


# --------------------------------------------------------------------------------------------------
# Input validation


def test_mismatched_ids_are_named():
    with pytest.raises(ValueError, match=r"no result, e\.g\. 3.*not in the references, e\.g\. 7"):
        score_captions(REFS, {1: "a", 2: "b", 7: "c"}, metrics=["Bleu"], tokenizer="python")


def test_duplicate_and_non_string_results():
    with pytest.raises(ValueError, match="duplicate results for image_id 5 .entries 0 and 2"):
        results_to_candidates(
            [{"image_id": 5, "caption": "a"}, {"image_id": 6, "caption": "b"}, {"image_id": 5, "caption": "c"}]
        )
    with pytest.raises(ValueError, match="result 1 .image_id 6. has a caption of type int"):
        results_to_candidates([{"image_id": 5, "caption": "a"}, {"image_id": 6, "caption": 3}])
    with pytest.raises(ValueError, match="image 2: candidate caption is list"):
        score_captions(REFS, {1: "a", 2: ["b"], 3: "c"}, metrics=["Bleu"], tokenizer="python")
    with pytest.raises(ValueError, match="image 1: reference 1 is NoneType"):
        score_captions({1: ["a", None]}, {1: "a"}, metrics=["Bleu"], tokenizer="python")


def test_empty_candidates_are_scored_and_counted():
    result = score_captions_detailed(REFS, {1: "", 2: "  ", 3: CANDS[3]}, metrics=["Bleu", "CIDEr"], tokenizer="python")
    assert result.empty_candidates == [1, 2]
    assert result.per_image[1]["CIDEr"] == 0.0 and result.per_image[1]["Bleu_1"] < 1e-6


def test_metric_selection(monkeypatch):
    with pytest.raises(ValueError, match="unknown metric 'WER'"):
        score_captions(REFS, CANDS, metrics=["WER"], tokenizer="python")
    scores = score_captions(REFS, CANDS, metrics=["cider", "bleu"], tokenizer="python")
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]
    monkeypatch.setattr(_java, "java_path", lambda: None)
    with pytest.raises(ScorerUnavailableError, match="METEOR needs the 'java' program"):
        score_captions(REFS, CANDS, metrics=["METEOR"], tokenizer="python")
    with pytest.warns(RuntimeWarning, match="METEOR left out"):
        scores = score_captions(REFS, CANDS)
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]


def test_coco_reader(tmp_path):
    path = tmp_path / "ann.json"
    images = [{"id": 9}, {"id": 4}, {"id": 5}]
    anns = [{"id": 1, "image_id": 4, "caption": "b"}, {"id": 2, "image_id": 9, "caption": "a"}]
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    assert load_coco_references(path) == {9: ["a"], 4: ["b"]}
    anns.append({"id": 3, "image_id": 4, "caption": 12})
    with pytest.raises(ValueError, match=r"annotation 2 \(id 3, image_id 4\)"):
        load_coco_references({"images": images, "annotations": anns})
    with pytest.raises(ValueError, match="not a COCO results file"):
        load_coco_results({"annotations": []})  # type: ignore[arg-type]


def test_collapse_stats():
    stats = collapse_stats({1: "A dog.", 2: "a dog", 3: "A cat on a mat", 4: ""})
    assert stats["num_captions"] == 4 and stats["num_empty"] == 1
    assert stats["distinct_fraction"] == 0.75
    assert stats["most_common_caption"] == "a dog" and stats["most_common_share"] == 0.5
    assert stats["vocab_size"] == 6  # a, dog., dog, cat, on, mat
    assert stats["mean_length"] == pytest.approx(9 / 4)
    collapsed = collapse_stats(["a man"] * 10)
    assert collapsed["distinct_fraction"] == 0.1 and collapsed["most_common_share"] == 1.0
