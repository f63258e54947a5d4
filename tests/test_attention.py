"""The decoder's causal SDPA implementation: is_causal without a mask under torch.compile, same numbers."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from mmgen.models import CaptionModel, tiny_model_config
from mmgen.tokenizer import train_caption_tokenizer
from mmgen.transformers_glue import CAUSAL_SDPA, UNPADDED, base_model

CAPTIONS = ["a red circle above a blue square", "a small green star", "a large yellow diamond on a dotted background"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS, "wordlevel", 100)


def _batch(tok):
    """Right-padded ids, attention mask and labels (-100 on BOS and padding)."""
    seqs = [[tok.bos_token_id] + tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in CAPTIONS]
    t = max(map(len, seqs))
    ids = torch.full((len(seqs), t), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 0] = -100
    return ids, mask, labels


def _sdpa_calls(fn, *args):
    """(has attn_mask, is_causal) of every SDPA call in the graph torch.compile captures for ``fn``."""
    calls = []

    def backend(gm, example_inputs):
        for node in gm.graph.nodes:
            if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target):
                calls.append((node.kwargs.get("attn_mask") is not None, bool(node.kwargs.get("is_causal"))))
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    torch._dynamo.reset()
    return calls


def test_compiled_training_forward_attends_with_is_causal_and_no_mask(tokenizer):
    model = CaptionModel(tiny_model_config(), tokenizer).train()
    dec = base_model(model.decoder)
    assert dec.config._attn_implementation == CAUSAL_SDPA
    ids, _, labels = _batch(tokenizer)
    px = torch.randn(len(ids), 3, 32, 32)
    n_layer = dec.config.n_layer
    calls = _sdpa_calls(lambda p, i, y: model(p, i, labels=y).loss, px, ids, labels)
    assert calls.count((False, True)) == n_layer  # the decoder: causal kernel, no mask
    assert calls.count((True, False)) == 0
    # the reference: transformers' own 'sdpa' materialises a mask under compile (why this implementation exists)
    dec.set_attn_implementation("sdpa")
    model._causal_sdpa = False
    calls = _sdpa_calls(lambda p, i, y: model(p, i, labels=y).loss, px, ids, labels)
    assert calls.count((True, False)) == n_layer


@pytest.mark.parametrize("variant", ["full", "lora", "checkpointing"])
def test_unpadded_loss_and_gradients_equal_eager_attention_with_mask(tokenizer, variant):
    """mmgen's path (no mask, is_causal) against transformers' eager attention given the explicit padding mask."""
    cfg = tiny_model_config(decoder_mode="lora" if variant == "lora" else "full")
    cfg.decoder.lora.target_modules, cfg.decoder.lora.dropout = ["c_attn"], 0.0
    cfg.decoder.gradient_checkpointing = variant == "checkpointing"
    cfg.decoder.config_overrides.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # train mode, same numbers
    torch.manual_seed(0)
    model = CaptionModel(cfg, tokenizer).train()
    ids, mask, labels = _batch(tokenizer)
    px = torch.randn(len(ids), 3, 32, 32)

    def loss_and_grads(**kw):
        model.zero_grad(set_to_none=True)
        loss = model(px, ids, labels=labels, **kw).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert model._causal_sdpa
    loss, grads = loss_and_grads()
    base_model(model.decoder).set_attn_implementation("eager")
    model._causal_sdpa = False
    ref_loss, ref_grads = loss_and_grads(attention_mask=mask)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_llama_decoder_takes_the_keyword(tokenizer):
    cfg = tiny_model_config()
    cfg.decoder.name, cfg.decoder.model_type = "tiny-llama", "llama"
    cfg.decoder.config_overrides = {
        "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "max_position_embeddings": 128,
    }  # fmt: skip
    model = CaptionModel(cfg, tokenizer).eval()
    assert model._causal_sdpa
    ids, mask, labels = _batch(tokenizer)
    px = torch.randn(len(ids), 3, 32, 32)
    calls = _sdpa_calls(lambda p, i: model(p, i).logits, px, ids)
    assert calls.count((False, True)) == 2
    with torch.no_grad():
        logits = model(px, ids).logits
        base_model(model.decoder).set_attn_implementation("eager")
        model._causal_sdpa = False
        ref = model(px, ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(logits[real], ref[real], rtol=1e-5, atol=1e-5)


def test_saved_decoder_loads_in_plain_transformers(tokenizer, tmp_path):
    model = CaptionModel(tiny_model_config(), tokenizer)
    base_model(model.decoder).save_pretrained(tmp_path / "dec")
    assert CAUSAL_SDPA not in (tmp_path / "dec" / "config.json").read_text()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "dec")
    assert plain.config._attn_implementation != CAUSAL_SDPA


def test_keyword_is_only_sent_to_the_causal_implementation(tokenizer):
    cfg = tiny_model_config()
    cfg.decoder.attn_implementation = "eager"
    model = CaptionModel(cfg, tokenizer)
    assert base_model(model.decoder).config._attn_implementation == "eager" and not model._causal_sdpa
    seen = {}
    model.decoder.register_forward_pre_hook(lambda mod, args, kwargs: seen.update(kwargs), with_kwargs=True)
    ids, _, _ = _batch(tokenizer)
    model(torch.randn(len(ids), 3, 32, 32), ids)
    assert UNPADDED not in seen and "inputs_embeds" in seen
