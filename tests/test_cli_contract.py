"""The command line's contract for bad invocations, across every subcommand: exit code 1 or 2, exactly one line on
stderr naming what is wrong (the option, key, file or line), no traceback, nothing on stdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmgen.commands.cli import main
from mmgen.config import load_config, save_config
from mmgen.scenes.writer import make_scenes

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "assets" / "tiny-scenes-model")
TINY = str(ROOT / "configs" / "tiny_cpu.yaml")
STAGE1 = str(ROOT / "configs" / "vit_b16_gpt2_coco_stage1.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The inputs the bad invocations name: a few scenes, damaged caption and results files, a run directory."""
    d = tmp_path_factory.mktemp("contract")
    make_scenes(d / "scenes", 3, seed=0, image_size=16)
    coco = json.loads((d / "scenes" / "captions_train.json").read_text())
    first = coco["images"][0]

    def variant(name: str, **change) -> None:
        (d / name).write_text(json.dumps({**coco, "images": [{**first, **change}, *coco["images"][1:]]}))

    variant("coco_list_id.json", id=[1])
    variant("coco_file_name_5.json", file_name=5)
    variant("coco_outside.json", file_name="../../x.png")
    (d / "latin1.csv").write_bytes("image,caption\na.png,un café\n".encode("latin-1"))
    (d / "results.json").write_text(json.dumps([{"image_id": im["id"], "caption": "a"} for im in coco["images"]]))
    (d / "truncated.json").write_text((d / "results.json").read_text()[:20])
    (d / "list_id.json").write_text(json.dumps([{"image_id": [51], "caption": "a"}]))
    (d / "empty.yaml").write_text("")
    (d / "broken.yaml").write_text("train: [unclosed\n")
    run = d / "run"
    cfg = load_config(TINY, ["data.synth=null", f"data.train={d / 'scenes' / 'captions_train.json'}"])
    save_config(cfg, run / "config.yaml")  # a run killed before it wrote anything else
    return d


def cases(d: Path) -> list[tuple[list[str], int, str]]:
    """``(argv, exit code, what the one line must contain)``."""
    coco, img = str(d / "scenes" / "captions_train.json"), str(d / "scenes" / "images" / "train" / "000001.png")
    long_prompt = " ".join(["a"] * 250)
    return [
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        # score
        (["score", "--refs", str(d / "nope.json"), "--results", str(d / "results.json")], 2, "nope.json: no such file"),
        (["score", "--refs", coco, "--results", str(d / "truncated.json")], 2, "truncated.json:1: not valid JSON"),
        (["score", "--refs", coco, "--results", str(d / "list_id.json")], 2, "result 0: image_id must be an integer"),
        (["score", "--refs", coco, "--results", str(d / "results.json"), "--tokenizer", "perl"], 2, "--tokenizer"),
        # data
        (["data", "synth", str(d / "s"), "--n", "0"], 2, "argument --n: must be >= 1, got 0"),
        (["data", "synth", str(d / "s"), "--n", "5", "--split-val", "9"], 2, "--split-val 9: more than the 5 images"),
        (["data", "synth", str(d / "s"), "--n", "5", "--image-size", "0"], 2, "argument --image-size: must be >= 1"),
        (["data", "stats", "--data", str(d / "latin1.csv")], 2, "latin1.csv: not UTF-8 text"),
        (["data", "stats", "--data", str(d / "coco_list_id.json")], 2, "images[0].id: an image id must be"),
        (["data", "stats", "--data", str(d / "coco_outside.json"), "--strict-paths"], 2, "leads outside the images"),
        (["data", "stats", "--data", str(d / "nope.json")], 2, "nope.json"),
        (["data", "frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["data", "features", "--config", STAGE1, f"data.train={d / 'nope.json'}", f"data.train_images={d}"], 2,
         f"data.train: {d / 'nope.json'}: no such file"),
        # caption
        (["caption", img, "--model", str(d / "no-model")], 2, "no-model: no such model directory"),
        (["caption", img, "--model", MODEL, "--device", "tpu:3"], 2, "argument --device: not a device: 'tpu:3'"),
        (["caption", img, "--model", MODEL, "--prompt", long_prompt], 2,
         "generation.max_new_tokens: 24 new tokens after 16 image tokens and 251 token(s)"),
        (["caption", img, "--model", MODEL, "--beams", "0"], 2, "generation.num_beams: must be >= 1"),
        (["caption", img, "--model", MODEL, "generation.num_beams=five"], 2, "generation.num_beams: expected an int"),
        (["caption", img, "--model", MODEL, "generation.beams=2"], 2, "unknown key 'generation.beams'"),
        (["caption", "--data", coco, "--model", MODEL], 2, "--data needs --out FILE"),
        (["caption", str(d / "nope.png"), "--model", MODEL], 2, "nope.png: no such file or directory"),
        (["caption", img, "--model", MODEL, "--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
        (["caption", img, "--model", MODEL, "--quantize", "int8", "--dtype", "bfloat16"], 2, "drop --dtype bfloat16"),
        # train
        (["train"], 2, "--config is required"),
        (["train", "--config", str(d / "nope.yaml")], 2, "config file not found"),
        (["train", "--config", str(d / "broken.yaml")], 2, "broken.yaml:2:1: invalid YAML: expected ',' or ']'"),
        (["train", "--config", str(d / "empty.yaml")], 2, "data.train: is not set"),
        (["train", "--config", TINY, "data.synth.n_trian=100"], 2, "unknown key 'data.synth.n_trian'; did you mean"),
        (["train", "--config", TINY, "data.synth={n_val: 3}"], 2, "data.synth.n_train: is required"),
        (["train", "--config", TINY, "train.lr=.nan"], 2, "train.lr: expected a finite number, got nan"),
        (["train", "--config", TINY, "model.decoder.config_overrides.n_layr=2", f"train.out_dir={d / 't'}"], 2,
         "model.decoder.config_overrides.n_layr: not a field of GPT2Config; did you mean n_layer?"),
        (["train", "--config", TINY, "model.decoder.config_overrides.n_layer=two", f"train.out_dir={d / 't'}"], 2,
         "model.decoder.config_overrides.n_layer: expected an integer"),
        (["train", "--resume", str(d / "nope")], 2, "no config.yaml there"),
        (["train", "--resume", str(d / "run"), "--overwrite"], 2, "use one of them"),
        (["train", "--resume", str(d / "run"), "model.decoder.config_overrides.n_embd=32"], 2,
         "model.decoder.config_overrides.n_embd: 128 in the run, 32 now: a resumed run keeps its model"),
        (["train", "--config", TINY, "--threads", "0"], 2, "argument --threads: must be >= 1"),
        # evaluate
        (["evaluate", "--model", MODEL, "--data", str(d / "coco_file_name_5.json")], 2,
         "images[0].file_name must be a file name, got 5"),
        (["evaluate", "--model", MODEL, "--data", str(d / "coco_outside.json"), "--strict-paths"], 2,
         "'../../x.png' leads outside the images folder"),
        (["evaluate", "--model", MODEL, "--data", coco, "--workers", "-1"], 2, "argument --workers: must be >= 0"),
        # demo
        (["demo", "--budget", "huge"], 2, "argument --budget: invalid choice: 'huge'"),
        (["demo", "--steps", "0"], 2, "argument --steps: must be >= 1"),
        # serve
        (["serve", "--model", MODEL, "--max-wait-ms", "nan"], 2, "argument --max-wait-ms: must be a number in [0"),
        (["serve", "--model", MODEL, "--max-wait-ms", "inf"], 2, "argument --max-wait-ms: must be a number in [0"),
        (["serve", "--model", MODEL, "--port", "70000"], 2, "argument --port: a port is 0..65535, got 70000"),
        (["serve", "--model", MODEL, "--max-body-mb", "-1"], 2, "argument --max-body-mb: must be a number in (0"),
        (["serve", "--model", MODEL, "--max-body-mb", "0"], 2, "argument --max-body-mb: must be a number in (0"),
        (["serve", "--model", MODEL, "--max-batch", "0"], 2, "argument --max-batch: must be >= 1"),
        (["serve", "--model", MODEL, "--device", "cpu", "generation.max_new_tokens=500"], 2,
         "generation.max_new_tokens: 500 new tokens after 16 image tokens"),
    ]  # fmt: skip


def test_every_bad_invocation_is_one_line_and_exit_1_or_2(files, capfd):
    if torch.cuda.is_available():  # the case of a machine without a GPU, where there is one: a device it lacks
        extra = [(["caption", MODEL, "--model", MODEL, "--device", f"cuda:{torch.cuda.device_count()}"], 2, "has")]
    else:
        extra = [(["caption", MODEL, "--model", MODEL, "--device", "cuda"], 2, "cuda: no CUDA GPU is available")]
    failures = []
    for argv, code, fragment in [*cases(files), *extra]:
        got = main(argv)
        out, err = capfd.readouterr()
        lines = err.splitlines()
        if got != code or len(lines) != 1 or fragment not in err or "Traceback" in err or out:
            failures.append(
                f"{' '.join(argv)[:120]}\n  exit {got} (expected {code}); stdout {out[:80]!r}; stderr {err!r}"
            )
        elif not lines[0].startswith("mmgen" + (f" {argv[0]}" if argv[0] != "frobnicate" else ":")):
            failures.append(f"{' '.join(argv)[:120]}\n  the line does not name the command: {lines[0]!r}")
    assert not failures, "\n".join(failures)
    assert not (files / "t").exists() and sorted(p.name for p in (files / "run").iterdir()) == ["config.yaml"]
