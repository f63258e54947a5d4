"""``mmgen score``: the published COCO table through the command line, in-process."""

from __future__ import annotations

import json

from mmgen.commands import cli
from mmgen.evaluation import _java

JAVA = _java.java_tools_available()


def _run(capsys, *argv):
    code = cli.main(["score", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_score_prints_the_published_table(shared_data, capsys):
    folder = shared_data / "cocoeval-reference"
    table = json.loads((folder / "reference_scores.json").read_text())["full_precision"]
    code, out, err = _run(
        capsys,
        "--refs",
        str(folder / "captions_val2014.json"),
        "--results",
        str(folder / "captions_val2014_fakecap_results.json"),
        "--tokenizer",
        "python",
    )
    assert code == 0, err
    printed = dict(line.split(": ") for line in out.strip().splitlines())
    expected = [k for k in table if k != "METEOR" or JAVA]
    assert list(printed) == expected
    for key in expected:
        assert abs(float(printed[key]) - table[key]) < 1e-6, key
    assert printed["CIDEr"] == repr(float(printed["CIDEr"]))  # full precision, not rounded


def _write(tmp_path, refs, results):
    images = [{"id": i} for i in refs]
    anns = [{"id": n, "image_id": i, "caption": c} for n, (i, caps) in enumerate(refs.items()) for c in caps]
    (tmp_path / "refs.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (tmp_path / "res.json").write_text(json.dumps(results))
    return ["--refs", str(tmp_path / "refs.json"), "--results", str(tmp_path / "res.json")]


def test_score_json_output(tmp_path, capsys):
    refs = {1: ["a cat on a mat", "a cat sits on the mat"], 2: ["a dog in a park"]}
    results = [{"image_id": 1, "caption": "A cat on a mat."}, {"image_id": 2, "caption": ""}]
    code, out, err = _run(capsys, *_write(tmp_path, refs, results), "--metrics", "Bleu", "CIDEr", "--json")
    assert code == 0
    scores = json.loads(out)
    assert list(scores) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"]
    assert scores["Bleu_1"] > 0.0
    assert "1 empty candidate captions" in err


def test_score_reports_bad_inputs(tmp_path, capsys):
    refs = {1: ["a cat"], 2: ["a dog"]}
    code, out, err = _run(
        capsys, *_write(tmp_path, refs, [{"image_id": 1, "caption": "a cat"}, {"image_id": 3, "caption": "x"}])
    )
    assert code == 2 and out == ""
    assert "no result, e.g. 2" in err and "not in the references, e.g. 3" in err
    dup = [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]
    code, _, err = _run(capsys, *_write(tmp_path, refs, dup))
    assert code == 2 and "duplicate results for image_id 1" in err


def test_missing_files_are_usage_errors(tmp_path, capsys):
    args = _write(tmp_path, {1: ["a cat"]}, [{"image_id": 1, "caption": "a cat"}])
    args[1] = str(tmp_path / "refs_typo.json")
    code, out, err = _run(capsys, *args)
    assert code == 2 and out == ""
    assert err == f"mmgen score: --refs {tmp_path / 'refs_typo.json'}: no such file\n"
    code, out, err = _run(capsys, "--refs", args[1])
    assert code == 2 and err.splitlines() == [
        "mmgen score: error: the following arguments are required: --results (see mmgen score --help)"
    ]
