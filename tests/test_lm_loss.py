"""train.loss_impl: the LM head's loss without the full logits equals the plain loss, and its gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmgen.config import ConfigError
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.models.lm_loss import chunk_rows, importable, linear_cross_entropy
from mmgen.tokenizer import train_caption_tokenizer
from mmgen.training.levers import resolve_loss_impl
from mmgen.transformers_glue import base_model

CAPTIONS = ["a red circle to the left of a blue square", "two yellow stars above a purple circle"]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS, "wordlevel", 200)


def _reference(hidden, weight, bias, labels):
    """The plain path written out: every logit, then PyTorch's mean cross-entropy over the labelled rows."""
    logits = hidden @ weight.t() + (0 if bias is None else bias)
    return F.cross_entropy(logits.float(), labels, ignore_index=-100)


def _grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("chunk", [1, 8, 37, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_loss_and_gradients_equal_the_full_logits_in_fp32(chunk, with_bias):
    gen = torch.Generator().manual_seed(0)
    n, d, v = 37, 16, 50  # 37 rows: chunks of 8 leave a last chunk of 5
    hidden = torch.randn(n, d, generator=gen, requires_grad=True)
    weight = torch.randn(v, d, generator=gen, requires_grad=True)
    bias = torch.randn(v, generator=gen, requires_grad=True) if with_bias else None
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::3] = -100  # ignored positions, the first one among them
    ref = _reference(hidden, weight, bias, labels)
    got = linear_cross_entropy(hidden, weight, bias, labels, "chunked", chunk=chunk)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(_grads(got, hidden, weight, bias), _grads(ref, hidden, weight, bias)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_chunked_loss_follows_autocast_like_the_plain_head():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 9, 32, generator=gen, requires_grad=True)
    weight = torch.randn(70, 32, generator=gen, requires_grad=True)
    labels = torch.randint(0, 70, (2, 9), generator=gen)
    labels[1, 4:] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(hidden, weight).float().reshape(-1, 70), labels.reshape(-1), ignore_index=-100)
        got = linear_cross_entropy(hidden, weight, None, labels, "chunked", chunk=5)
    torch.testing.assert_close(got, ref, rtol=1e-2, atol=1e-2)  # both from bf16 logits
    gh, gw = _grads(got, hidden, weight)
    rh, rw = _grads(ref, hidden, weight)
    assert gh.dtype == hidden.dtype and gw.dtype == weight.dtype  # the fp32 leaves get fp32 gradients
    torch.testing.assert_close(gh, rh, rtol=5e-2, atol=2e-3)
    torch.testing.assert_close(gw, rw, rtol=5e-2, atol=2e-3)


def test_nothing_labelled_gives_nan_like_the_plain_mean_and_no_grad_mode_computes_no_gradient():
    hidden, weight = torch.randn(4, 8), torch.randn(10, 8)
    labels = torch.full((4,), -100)
    assert torch.isnan(linear_cross_entropy(hidden, weight, None, labels, "chunked"))
    assert torch.isnan(_reference(hidden, weight, None, labels))
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, None, torch.tensor([1, 2, -100, 3]), "chunked", chunk=3)
    torch.testing.assert_close(loss, _reference(hidden, weight, None, torch.tensor([1, 2, -100, 3])))


def test_chunk_rows_bound_the_logits_of_one_chunk():
    assert chunk_rows(50257) == 1280 and 1280 * 50257 <= 1 << 26
    assert chunk_rows(10**9) == 64 and chunk_rows(500) % 64 == 0


def _batch(tokenizer, rows: int, t: int = 9, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, len(tokenizer), (rows, t), generator=gen)
    labels = ids.clone()
    labels[:, 0] = -100  # BOS
    labels[1, 5:] = -100  # padding
    return ids, labels


def _loss_and_grads(model, impl, label_smoothing=0.0, **inputs):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout masks in both runs
    out = model(**inputs, loss_impl=impl, label_smoothing=label_smoothing)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize(
    ("k", "kw"),
    [
        (1, {}),
        (3, {}),  # K captions per image: the shared-prefix pass with a KV cache
        (2, {"decoder_mode": "lora"}),
        (1, {"projector": "pool", "decoder_mode": "frozen"}),  # stage 1: the head's weight gets no gradient
    ],
)
def test_caption_model_chunked_loss_equals_the_plain_loss_and_every_gradient(tokenizer, k, kw):
    model = CaptionModel(tiny_model_config(**kw), tokenizer).train()
    ids, labels = _batch(tokenizer, 3 * k)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain, ref = _loss_and_grads(model, "plain", pixel_values=pixels, input_ids=ids, labels=labels)
    fused, got = _loss_and_grads(model, "chunked", pixel_values=pixels, input_ids=ids, labels=labels)
    assert fused.logits is None and plain.logits.shape == (3 * k, ids.shape[1], len(tokenizer))
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    assert got.keys() == ref.keys() and ref
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    hf = base_model(model.decoder)
    tied = hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    if tied and kw.get("decoder_mode", "full") == "full":  # the shared matrix got the head's share too
        assert any(name.endswith("wte.weight") for name in got)


def llama_config():
    """The tiny preset with a 2-layer Llama decoder (an untied LM head, ``model.model`` as its body)."""
    cfg = tiny_model_config()
    cfg.decoder.name, cfg.decoder.model_type = "tiny-llama", "llama"
    cfg.decoder.config_overrides = {
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 128,
    }  # fmt: skip
    return cfg


@pytest.mark.parametrize("k", [1, 2])
def test_llama_decoder_chunked_loss_equals_the_plain_loss(tokenizer, k):
    model = CaptionModel(llama_config(), tokenizer).train()
    hf = base_model(model.decoder)
    assert hf.get_output_embeddings().weight is not hf.get_input_embeddings().weight
    ids, labels = _batch(tokenizer, 3 * k, seed=4)
    pixels = torch.randn(3, 3, 32, 32)
    plain, ref = _loss_and_grads(model, "plain", pixel_values=pixels, input_ids=ids, labels=labels)
    fused, got = _loss_and_grads(model, "chunked", pixel_values=pixels, input_ids=ids, labels=labels)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    assert got.keys() == ref.keys() and "decoder.lm_head.weight" in got
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpointed_decoder_with_k_captions_gives_the_plain_loss(tokenizer):
    cfg = tiny_model_config()
    cfg.decoder.gradient_checkpointing = True
    model = CaptionModel(cfg, tokenizer).train()
    ids, labels = _batch(tokenizer, 6, seed=3)
    pixels = torch.randn(3, 3, 32, 32)
    plain, ref = _loss_and_grads(model, "plain", pixel_values=pixels, input_ids=ids, labels=labels)
    fused, got = _loss_and_grads(model, "chunked", pixel_values=pixels, input_ids=ids, labels=labels)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_decoder_with_shaped_logits_is_refused_naming_the_key(tokenizer):
    model = CaptionModel(tiny_model_config(), tokenizer)
    base_model(model.decoder).config.final_logit_softcapping = 30.0  # as Gemma-2 sets it
    with pytest.raises(ValueError, match="train.loss_impl=chunked.*final_logit_softcapping.*loss_impl=plain"):
        model.fused_head("chunked")


def test_loss_impl_resolution_and_refusals(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_loss_impl("plain", cpu) == "plain" and resolve_loss_impl("chunked", cpu) == "chunked"
    assert resolve_loss_impl("auto", cpu) == "plain"  # the kernel libraries are GPU-only
    with pytest.raises(ConfigError, match="train.loss_impl=liger: liger-kernel's kernels run on a CUDA GPU.*cpu"):
        resolve_loss_impl("liger", cpu)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a, **k: None)  # nothing installed
    with pytest.raises(ConfigError, match="needs the cut-cross-entropy package: pip install cut-cross-entropy"):
        resolve_loss_impl("cce", cuda)
    with pytest.raises(ConfigError, match="pip install liger-kernel"):
        resolve_loss_impl("liger", cuda)
    assert resolve_loss_impl("auto", cuda) == "plain"


def test_config_refuses_fused_losses_with_scst():
    from mmgen.config import Config, DataConfig, TrainConfig

    with pytest.raises(ConfigError, match="train.loss_impl: scst"):
        Config(data=DataConfig(), train=TrainConfig(objective="scst", loss_impl="chunked"))
    with pytest.raises(ConfigError, match="train.loss_impl: got 'fused'"):
        TrainConfig(loss_impl="fused")


@CUDA
@pytest.mark.parametrize("impl", ["chunked", "liger", "cce"])
def test_cuda_fused_losses_equal_the_plain_path_in_bf16(tokenizer, impl):
    if impl != "chunked" and not importable(impl):
        pytest.skip(f"{impl} is not installed")
    model = CaptionModel(tiny_model_config(width=128), tokenizer).cuda().train()
    ids, labels = _batch(tokenizer, 6)
    inputs = {"pixel_values": torch.randn(6, 3, 32, 32), "input_ids": ids, "labels": labels}
    inputs = {k: v.cuda() for k, v in inputs.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        plain, ref = _loss_and_grads(model, "plain", **inputs)
        fused, got = _loss_and_grads(model, impl, **inputs)
    torch.testing.assert_close(fused.loss.float(), plain.loss.float(), rtol=2e-2, atol=2e-2)
    for name in ref:
        scale = ref[name].abs().max().clamp_min(1e-6)
        assert (got[name] - ref[name]).abs().max() / scale < 5e-2, name  # bf16 logits either way


# -- train.label_smoothing ---------------------------------------------------------------------------------------


def _smoothed_reference(hidden, weight, bias, labels, eps):
    """Label smoothing written out: the cross-entropy against the target distribution (1 - eps) one-hot + eps / V,
    averaged over the labelled rows (no F.cross_entropy smoothing involved)."""
    logits = (hidden @ weight.t() + (0 if bias is None else bias)).float()
    keep = labels != -100
    v = logits.shape[-1]
    target = torch.full_like(logits, eps / v)
    target[keep] += (1 - eps) * F.one_hot(labels[keep], v).float()
    rows = -(target * logits.log_softmax(-1)).sum(-1)
    return rows[keep].mean()


@pytest.mark.parametrize("chunk", [1, 8, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_label_smoothing_equals_the_smoothed_target_distribution_and_its_gradients(chunk, with_bias):
    gen = torch.Generator().manual_seed(5)
    n, d, v, eps = 29, 16, 40, 0.1
    hidden = torch.randn(n, d, generator=gen, requires_grad=True)
    weight = torch.randn(v, d, generator=gen, requires_grad=True)
    bias = torch.randn(v, generator=gen, requires_grad=True) if with_bias else None
    labels = torch.randint(0, v, (n,), generator=gen)
    labels[::4] = -100
    ref = _smoothed_reference(hidden, weight, bias, labels, eps)
    got = linear_cross_entropy(hidden, weight, bias, labels, "chunked", chunk=chunk, label_smoothing=eps)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    for g, r in zip(_grads(got, hidden, weight, bias), _grads(ref, hidden, weight, bias)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    plain = linear_cross_entropy(hidden, weight, bias, labels, "chunked", chunk=chunk)
    assert abs(got.item() - plain.item()) > 1e-2  # smoothing changes the loss: the test above can tell them apart


@pytest.mark.parametrize("k", [1, 3])
def test_caption_model_label_smoothing_plain_and_chunked_agree_with_the_written_out_loss(tokenizer, k):
    model = CaptionModel(tiny_model_config(), tokenizer).train()
    ids, labels = _batch(tokenizer, 3 * k, seed=6)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    inputs = {"pixel_values": pixels, "input_ids": ids, "labels": labels}
    plain, ref = _loss_and_grads(model, "plain", label_smoothing=0.2, **inputs)
    fused, got = _loss_and_grads(model, "chunked", label_smoothing=0.2, **inputs)
    unsmoothed, _ = _loss_and_grads(model, "plain", **inputs)
    logits = unsmoothed.logits[:, :-1].reshape(-1, unsmoothed.logits.shape[-1])
    written = _smoothed_reference(logits, torch.eye(logits.shape[-1]), None, labels[:, 1:].reshape(-1), 0.2)
    torch.testing.assert_close(plain.loss, written, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-6, atol=1e-6)
    assert got.keys() == ref.keys() and ref
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-6, msg=name)
    assert plain.loss.item() != pytest.approx(unsmoothed.loss.item())


def test_label_smoothing_config_refusals_and_resolution():
    from mmgen.config import Config, DataConfig, TrainConfig
    from mmgen.training.levers import check_levers

    for bad in (-0.1, 1.0, "0.1"):
        with pytest.raises(ConfigError, match="train.label_smoothing: must be a number in"):
            TrainConfig(label_smoothing=bad)
    with pytest.raises(ConfigError, match="train.label_smoothing: cut-cross-entropy"):
        TrainConfig(loss_impl="cce", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="train.label_smoothing: scst"):
        Config(data=DataConfig(), train=TrainConfig(objective="scst", label_smoothing=0.1))
    levers = check_levers(TrainConfig(label_smoothing=0.1), torch.device("cpu"))
    assert levers.forward_kwargs == {"label_smoothing": 0.1}
    assert check_levers(TrainConfig(), torch.device("cpu")).forward_kwargs == {}  # the plain call is unchanged


def test_auto_never_picks_cce_with_label_smoothing(monkeypatch):
    monkeypatch.setattr("mmgen.models.lm_loss.importable", lambda impl: impl == "cce")  # only cce installed
    cuda = torch.device("cuda")
    assert resolve_loss_impl("auto", cuda) == "cce"
    assert resolve_loss_impl("auto", cuda, smoothing=True) == "plain"
