"""``scripts/benchmark.py``: its plumbing on the CPU with the tiny preset (speed itself is never asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def benchmark():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import benchmark

        yield benchmark
    finally:
        sys.path.remove(str(SCRIPTS))


def test_cpu_run_times_mmgen_and_its_peers_and_checks_the_captions(benchmark, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--device", "cpu", "--size", "tiny", "--threads", "1", "--sections", "train", "caption"]
    argv += ["--caption-batches", "3", "--beams", "1", "3", "--repeats", "2", "--out", str(out)]
    argv += ["--caches", "auto", "static", "dynamic"]
    argv += ["--train-batch", "2", "--stage1-batch", "2", "--warmup", "0", "--iters", "1"]
    assert benchmark.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["threads"] == 1
    caption = results["caption"]
    mmgen = [f"mmgen {kind}{cache}" for kind in ("mlp", "pool") for cache in ("", " static", " dynamic")]
    cases = [*mmgen, "generate mlp", "generate pool", "VisionEncoderDecoder"]
    expected = {f"{case} {search} b3" for case in cases for search in ("greedy", "beam 3")}
    assert set(caption) == expected
    for name, r in caption.items():
        assert "error" not in r, (name, r.get("trace"))
        assert r["images_per_s"] > 0 and r["cpu_s_per_image"] > 0 and r["repeats"] == 2 and r["batch"] == 3
        low, high = r["images_per_s_range"]
        assert low <= r["images_per_s"] <= high
        if name.startswith("mmgen"):
            assert r["same_as_generate"] == 1.0, name  # token-identical to transformers' generate on the same model
    train = results["train"]
    assert {"mmgen pool (4 tok)", "VisionEncoderDecoder (cross-attn)", "stock prefix (16 tok)"} <= set(train)
    assert not any("compile" in name for name in train)  # compiled cases are for GPUs
    assert all("error" not in r and r["images_per_s"] > 0 for r in train.values())
    table = capsys.readouterr().out
    assert "| mmgen pool beam 3 b3 |" in table and "| 1.00x | 1.00x |" in table  # VisionEncoderDecoder against itself


def test_gpu_defaults_are_kept(benchmark, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = benchmark.parse_args([])
    assert (args.device, args.size, args.dtype) == ("cuda", "base", "bfloat16")
    assert args.sections == ["train", "caption"] and args.projectors == ["pool"]
    assert args.caption_batches == [64, 256, 512, 768] and args.peer_batches == [64]
    cpu = benchmark.parse_args(["--device", "cpu"])
    assert (cpu.size, cpu.dtype, cpu.sections, cpu.caption_batches) == ("small", "float32", ["caption"], [8, 32])


def test_asking_for_a_missing_gpu_is_an_error(benchmark, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert benchmark.main(["--device", "cuda"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_size_presets_give_the_models_those_sizes(benchmark):
    from benchmark_common import SIZES, ved_model

    small = SIZES["small"]
    assert (small.d_vit, small.n_layer_vit, small.d_lm, small.n_layer_lm, small.vocab) == (384, 12, 384, 6, 50257)
    base = SIZES["base"]
    assert (base.d_vit, base.n_layer_vit, base.d_lm, base.n_layer_lm) == (768, 12, 768, 12)
    tiny = SIZES["tiny"]
    ved = ved_model(tiny)
    assert ved.decoder.config.n_layer == tiny.n_layer_lm and ved.decoder.config.vocab_size == tiny.vocab
    assert ved.encoder.config.hidden_size == tiny.d_vit


def test_lever_rows_run_the_chunked_loss_on_the_cpu_and_say_why_a_gpu_lever_is_skipped(benchmark, tmp_path, capsys):
    out = tmp_path / "levers.json"
    argv = ["--device", "cpu", "--size", "tiny", "--threads", "1", "--sections", "train", "--out", str(out), "--levers"]
    argv += ["--train-batch", "2", "--stage1-batch", "2", "--warmup", "0", "--iters", "1", "--only", "mmgen"]
    assert benchmark.main(argv) == 0
    train = json.loads(out.read_text())["train"]
    assert set(train) == {
        "mmgen pool (4 tok)",
        "mmgen pool (4 tok) + chunked loss",
        "mmgen stage 1 cached features",
        "mmgen stage 1 cached features + chunked loss",
    }  # the GPU-only levers and the compiled rows are not offered on the CPU
    assert all("error" not in r and r["images_per_s"] > 0 for r in train.values())
    assert "mmgen pool (4 tok) + chunked loss" in capsys.readouterr().out
    on_gpu = [name for name, _ in benchmark._lever_rows("mmgen pool (49 tok) + compile", True, False, True)]
    assert on_gpu == [
        "mmgen pool (49 tok) + compile + liger loss",
        "mmgen pool (49 tok) + compile + fp8",
        "mmgen pool (49 tok) + compile reduce-overhead",
        "mmgen pool (49 tok) + compile + chunked loss",
        "mmgen pool (49 tok) + compile + cce loss",
    ]
    stage1 = benchmark._lever_rows("mmgen stage 1 cached features + compile", True, True, True)
    assert not any(lever.get("fp8") for _, lever in stage1)  # nothing to convert there
    chosen = benchmark._lever_rows("x + compile", True, False, True, ["reduce-overhead", "liger"])
    assert [name for name, _ in chosen] == ["x + compile + liger loss", "x + compile reduce-overhead"]
    assert benchmark.parse_args(["--levers", "fp8", "cce"]).levers == ["fp8", "cce"]
    assert benchmark.parse_args(["--levers"]).levers == [] and benchmark.parse_args([]).levers is None
    assert benchmark._base_row("mmgen pool (49 tok) + compile + fp8") == "mmgen pool (49 tok) + compile"
    from benchmark_common import Skip, run_case

    results: dict = {}
    run_case(results, "train", "fp8 here", lambda: benchmark._check_lever({"fp8": True}, torch.device("cpu")))
    assert "compute capability >= 8.9" in results["train"]["fp8 here"]["skipped"]
    with pytest.raises(Skip, match="liger-kernel"):
        benchmark._check_lever({"loss_impl": "liger"}, torch.device("cpu"))
