"""PTB tokenizer: the pure-Python port against the Stanford jar and the official tokenised files."""

from __future__ import annotations

import json

import pytest

from mmgen.evaluation import ScorerUnavailableError, _java, load_coco_references, load_coco_results, ptb_tokenize
from mmgen.evaluation.ptb import resolve_backend

needs_java = pytest.mark.skipif(not _java.java_tools_available(), reason="needs java and pycocoevalcap")

# Expected outputs produced by pycocoevalcap's stanford-corenlp-3.4.1.jar (PTBTokenizer -preserveLines
# -lowerCase) followed by pycocoevalcap's punctuation removal.
EDGE_CASES = [
    ("A man can't ride (or won't ride) the horse.", "a man ca n't ride -lrb- or wo n't ride -rrb- the horse"),
    ("I don't think it's the dogs' bowl; they'll share.", "i do n't think it 's the dogs bowl they 'll share"),
    ("The \"big\" dog said 'hello' & `ran`…", "the big dog said hello & ran"),
    ("He cannot go, gonna stay, wanna play.", "he can not go gon na stay wan na play"),
    ("'Tis the season, 'twas fun.", "'t is the season 't was fun"),
    (
        "A [red] {blue} <green> sign -- and a - dash — too.",
        "a -lsb- red -rsb- -lcb- blue -rcb- <green> sign and a dash too",
    ),
    ("It costs $5.00, £3 or €4; 50% off!", "it costs $ 5.00 # 3 or $ 4 50 % off"),
    (
        "1 1/2 cups at 3:30 p.m. on 12/25/2014, about 1,000.50 ml.",
        "1\xa01/2 cups at 3:30 p.m. on 12/25/2014 about 1,000.50 ml",
    ),
    ("Call (555) 555-1234 or 555.555.5555.", "call -lrb-555-rrb-\xa0555-1234 or 555.555.5555"),
    ("½ ¼ ¾ ⅓ ⅔ x² 10³", "1/2 1/4 3/4 1/3 2/3 x ² 10 ³"),
    (
        "Mr. Smith met Dr. Jones at St. Paul's in the U.S. He left.",
        "mr. smith met dr. jones at st. paul 's in the u.s. he left",
    ),
    ("They sell apples, pears, etc. A lot of fruit.", "they sell apples pears etc. a lot of fruit"),
    ("Fig. 3 shows no. 5 vs. the rest.", "fig. 3 shows no. 5 vs. the rest"),
    (
        "Visit http://www.example.com/path or www.foo.com and mail foo@bar.com.",
        "visit http://www.example.com/path or www.foo.com and mail foo@bar.com",
    ),
    ("A café with naïve résumé crème brûlée.", "a café with naïve résumé crème brûlée"),
    ("Ελλάδα ΑΣ and Москва.", "ελλάδα ας and москва"),
    ("well-known e-mail x-ray co-op mid-1990s 4x4 3d b2b", "well-known e-mail x-ray co-op mid-1990s 4x4 3d b2b"),
    ("AT&T and S&P-500 and R&D.", "at&t and s&p-500 and r&d"),
    ("Wow!!! Really?! Yes... no.... maybe. . .", "wow !!! really ?! yes no maybe"),
    (":) :-) ;) ^_^ (^_^) :D", ":-rrb- :--rrb- ;-rrb- ^_^ -lrb-^_^-rrb- :d"),
    ('<b>bold</b> <a href="x">link</a>', '<b> bold </b> <a\xa0href="x"> link </a>'),
    ("-LRB- stays -lrb- and -RRB-", "-lrb- stays -lrb- and -rrb-"),
    ("rock'n'roll y'all o'clock ma'am 'em 'cause '90s", "rock 'n' roll y' all o'clock ma'am 'em 'cause '90s"),
    ("soft\u00adhyphen and non\u00a0breaking space", "softhyphen and non breaking space"),
    ("emoji 😀 and 𝐀 are dropped", "emoji and are dropped"),
    ("", ""),
    ("...", ""),
    ("  leading and trailing spaces  ", "leading and trailing spaces"),
    ("line\rbreak and\u2028separator", "line break and separator"),
    ("c++ and c# and f# code", "c++ and c# and f# code"),
    ("and/or w/ n/a 24/7 km/h", "and/or w / n/a 24/7 km/h"),
    ("#hashtag @user", "#hashtag @user"),
    ("I. M. Pei and J.R.R. Tolkien", "i. m. pei and j.r.r. tolkien"),
    ("It's 5 o'clock; 10:30am, 3rd, 1st.", "it 's 5 o'clock 10:30 am 3rd 1st"),
    ("the dog., then", "the dog. then"),
    ("He said ''hi'' and ``bye''", "he said hi and bye"),
    ("Ltd. Co. Inc. Corp. Jr.", "ltd. co. inc. corp. jr."),
    ("photo.jpg and 0.txt, file.pdf", "photo.jpg and 0.txt file.pdf"),
    # The lexer reads across captions: "x." keeps its period unless a sentence starts next.
    ("a shirt with letter x.", "a shirt with letter x"),
    ("The man", "the man"),
    ("a shirt with letter x.", "a shirt with letter x."),
    ("the man", "the man"),
]


def test_python_backend_reproduces_the_jar_on_edge_cases():
    captions = [c for c, _ in EDGE_CASES]
    assert ptb_tokenize(captions, backend="python") == [e for _, e in EDGE_CASES]


@needs_java
def test_java_backend_on_edge_cases():
    captions = [c for c, _ in EDGE_CASES]
    assert ptb_tokenize(captions, backend="java") == [e for _, e in EDGE_CASES]


def _reference_captions(folder):
    refs = load_coco_references(folder / "captions_val2014.json")
    cands = load_coco_results(folder / "captions_val2014_fakecap_results.json")
    return refs, cands


def test_python_backend_matches_official_tokenization_files(shared_data):
    folder = shared_data / "cocoeval-reference"
    refs, cands = _reference_captions(folder)
    flat = ptb_tokenize([c for caps in refs.values() for c in caps], backend="python")
    expected_refs = json.loads((folder / "captions_val2014_references_after_tokenization.json").read_text())
    it = iter(flat)
    for image_id, caps in refs.items():
        assert [next(it) for _ in caps] == expected_refs[str(image_id)], image_id
    ids = list(refs)
    tokenized = ptb_tokenize([cands[i] for i in ids], backend="python")
    expected_res = json.loads((folder / "captions_val2014_results_after_tokenization.json").read_text())
    assert len(expected_res) == len(ids) == 1000
    assert all(expected_res[str(i)] == [t] for i, t in zip(ids, tokenized))


@needs_java
def test_python_backend_equals_java_on_coco_val2017(shared_data):
    data = json.loads((shared_data / "coco-captions-val2017" / "captions_val2017.json").read_text())
    captions = [a["caption"] for a in data["annotations"]]
    assert len(captions) == 25014
    python, java = ptb_tokenize(captions, backend="python"), ptb_tokenize(captions, backend="java")
    mismatches = [(c, p, j) for c, p, j in zip(captions, python, java) if p != j]
    assert not mismatches, mismatches[:5]


def test_auto_falls_back_to_python_without_java(monkeypatch):
    monkeypatch.setattr(_java, "java_path", lambda: None)
    assert resolve_backend("auto") == "python"
    assert ptb_tokenize(["A dog."], backend="auto") == ["a dog"]
    with pytest.raises(ScorerUnavailableError, match="'java' program"):
        ptb_tokenize(["A dog."], backend="java")


def test_java_backend_names_missing_pycocoevalcap(monkeypatch):
    monkeypatch.setattr(_java, "pycocoevalcap_dir", lambda: None)
    assert resolve_backend("auto") == "python"
    with pytest.raises(ScorerUnavailableError, match="pycocoevalcap"):
        ptb_tokenize(["A dog."], backend="java")


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        ptb_tokenize(["a"], backend="perl")
    with pytest.raises(TypeError, match="caption 1"):
        ptb_tokenize(["a", 3], backend="python")  # type: ignore[list-item]
    assert ptb_tokenize([], backend="python") == []
