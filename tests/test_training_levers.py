"""Training with the speed levers: train.loss_impl, train.compile_mode=reduce-overhead, train.fp8."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from test_lm_loss import llama_config, tokenizer  # noqa: F401 (a fixture)
from test_training import _cfg, _losses
from torch import nn

from mmgen.config import ConfigError
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.scenes.writer import make_scenes
from mmgen.training import levers
from mmgen.training.trainer import Trainer

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
STEPS = ("train.max_steps=3", "train.batch_size=8", "train.save_every=1000")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes_levers")
    make_scenes(out, 48, seed=2, image_size=32)
    return out / "captions_train.json"


def _run(tmp_path, scenes, name, *extra) -> dict[int, float]:
    cfg = _cfg(tmp_path / name, scenes, *STEPS, *extra)
    Trainer(cfg).fit()
    return _losses(cfg.train.out_dir)


@pytest.mark.parametrize("extra", [(), ("data.captions_per_image=2", "train.grad_accum=2")])
def test_chunked_loss_trains_the_same_steps_as_the_plain_loss(tmp_path, scenes, extra):
    plain = _run(tmp_path, scenes, "plain", *extra)
    chunked = _run(tmp_path, scenes, "chunked", "train.loss_impl=chunked", *extra)
    assert list(plain) == list(chunked) == [1, 2, 3]
    for step in plain:  # the weights after steps 1 and 2 are equal too, or steps 2 and 3 would differ
        assert chunked[step] == pytest.approx(plain[step], rel=1e-5, abs=1e-6)


def test_reduce_overhead_bookkeeping_changes_no_number(tmp_path, scenes, monkeypatch):
    """What the trainer does for CUDA graphs (a step mark per micro-batch, gradients accumulated into kept
    buffers) with the compilation itself left out: the losses equal an eager run's exactly."""
    eager = _run(tmp_path, scenes, "eager", "train.grad_accum=2", "data.pad_to_max_length=true")  # as compile pads
    modes, marks = [], []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    cfg = _cfg(tmp_path / "graphs", scenes, *STEPS, "train.grad_accum=2", "train.compile=true")
    cfg.train.compile_mode = "reduce-overhead"
    trainer = Trainer(cfg)
    assert not trainer.levers.grads_to_none
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)  # kept buffers
    kept = {id(p.grad) for p in trainer.model.parameters() if p.requires_grad}
    trainer.fit()
    assert modes == ["reduce-overhead"] and len(marks) == 3 * 2  # one mark per micro-batch
    assert {id(p.grad) for p in trainer.model.parameters() if p.requires_grad} == kept  # zeroed in place
    assert _losses(cfg.train.out_dir) == eager


@pytest.mark.slow
def test_reduce_overhead_compiles_and_trains_like_eager_on_the_cpu(tmp_path, scenes):
    """torch compiles 'reduce-overhead' on the CPU without CUDA graphs: the losses are the eager ones."""
    small = ("model.encoder.depth=1", "model.decoder.config_overrides.n_layer=1", "train.grad_accum=2")
    eager = _run(tmp_path, scenes, "eager", *small)
    graphs = _run(tmp_path, scenes, "graphs", *small, "train.compile=true", "train.compile_mode=reduce-overhead")
    for step in eager:
        assert graphs[step] == pytest.approx(eager[step], rel=1e-4, abs=1e-5)


def test_fp8_on_the_cpu_is_refused_before_any_work(tmp_path, scenes):
    cfg = _cfg(tmp_path, scenes, *STEPS, "train.fp8=true")
    with pytest.raises(ConfigError, match=r"train.fp8: .*compute capability >= 8.9.*this run is on cpu"):
        Trainer(cfg)
    assert not Path(cfg.train.out_dir).exists()


def test_fp8_refusals_name_the_gpu_or_the_package(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ConfigError, match=r"NVIDIA A100-SXM4-80GB is 8\.0"):
        levers.check_fp8(cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(ConfigError, match="train.fp8 needs the torchao package: pip install torchao"):
        levers.check_fp8(cuda)


def _encoder_linears(blocks: int) -> set[str]:
    """timm ViT's linear layers, written out: what float8 training converts in the tiny preset."""
    names = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    return {f"encoder.model.blocks.{i}.{n}" for i in range(blocks) for n in names}


def test_fp8_filter_takes_the_linear_layers_but_the_head_the_projector_and_odd_sizes(tokenizer):  # noqa: F811
    model = CaptionModel(tiny_model_config(projector="pool"), tokenizer)
    model.encoder.add_module("odd", nn.Linear(24, 32))  # 24 is not a multiple of 16
    selected = levers.fp8_module_filter(model)
    names = {name for name, module in model.named_modules() if selected(module, name)}
    assert names == _encoder_linears(2)  # GPT-2's Conv1D layers, its head and the projector keep their precision
    llama = CaptionModel(llama_config(), tokenizer)
    selected = levers.fp8_module_filter(llama)
    names = {name for name, module in llama.named_modules() if selected(module, name)}
    projections = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
    projections += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    decoder = {f"decoder.model.layers.{i}.{p}" for i in range(2) for p in projections}
    assert names == _encoder_linears(2) | decoder  # not decoder.lm_head


def test_fp8_conversion_swaps_the_selected_layers_and_keeps_the_state_dict(tokenizer):  # noqa: F811
    pytest.importorskip("torchao.float8")
    from torchao.float8.float8_linear import Float8Linear

    model = CaptionModel(tiny_model_config(projector="pool"), tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = levers.convert_fp8(model)
    assert set(names) == _encoder_linears(2)
    converted = {name for name, module in model.named_modules() if isinstance(module, Float8Linear)}
    assert converted == _encoder_linears(2)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


@CUDA
def test_cuda_chunked_and_plain_losses_train_alike(tmp_path, scenes):
    plain = _run(tmp_path, scenes, "plain")
    chunked = _run(tmp_path, scenes, "chunked", "train.loss_impl=chunked")
    for step in plain:
        assert chunked[step] == pytest.approx(plain[step], rel=2e-2)  # bf16 logits either way


@CUDA
def test_cuda_graphs_with_accumulation_train_like_eager(tmp_path, scenes):
    common = ("train.grad_accum=2", "train.precision=fp32", "train.max_steps=6")
    eager = _run(tmp_path, scenes, "eager", *common)
    graphs = _run(tmp_path, scenes, "graphs", *common, "train.compile=true", "train.compile_mode=reduce-overhead")
    for step in eager:
        assert graphs[step] == pytest.approx(eager[step], rel=1e-3, abs=1e-4), step


@CUDA
def test_cuda_fp8_loss_curve_follows_bf16(tmp_path, scenes):
    if torch.cuda.get_device_capability() < levers.FP8_CAPABILITY or not importlib.util.find_spec("torchao"):
        pytest.skip("needs compute capability >= 8.9 and torchao")
    common = ("train.max_steps=20", "train.batch_size=16", "model.encoder.embed_dim=128", "train.lr=1e-3")
    bf16 = _run(tmp_path, scenes, "bf16", *common)
    fp8 = _run(tmp_path, scenes, "fp8", *common, "train.fp8=true")
    assert list(bf16) == list(fp8)
    for step in bf16:  # the same curve within float8's rounding
        assert fp8[step] == pytest.approx(bf16[step], rel=0.1), step
    last = [sum(run[s] for s in range(16, 21)) / 5 for run in (bf16, fp8)]
    assert last[1] == pytest.approx(last[0], rel=5e-2) and last[1] < fp8[1]  # it learns, as fast as bf16
