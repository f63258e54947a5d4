"""int8 CPU inference: GPT-2's Conv1D becomes an equal Linear, every linear layer is quantised, captions agree."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from mmgen.captioner import Captioner
from mmgen.commands.cli import main
from mmgen.quantize import _conv1d_to_linear, is_quantized, quantize_int8

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "tiny-scenes-model"
IMAGES = sorted((ROOT / "assets" / "images").glob("*.png"))


@pytest.fixture(scope="module")
def fp32():
    return Captioner.from_pretrained(MODEL, device="cpu")


@pytest.fixture(scope="module")
def int8():
    return Captioner.from_pretrained(MODEL, quantize="int8")


def test_conv1d_becomes_an_equal_linear(fp32):
    decoder = copy.deepcopy(fp32.model.decoder)
    ids = torch.randint(0, decoder.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = decoder(input_ids=ids).logits
        assert _conv1d_to_linear(decoder) == 4 * decoder.config.n_layer  # c_attn, c_proj, c_fc, mlp c_proj
        after = decoder(input_ids=ids).logits
    assert not any(isinstance(m, Conv1D) for m in decoder.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_every_encoder_and_decoder_linear_but_the_lm_head_is_int8(int8):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    model = int8.model
    assert is_quantized(model)
    head = model.decoder.get_output_embeddings()
    assert type(head) is nn.Linear  # the next token is chosen from it: kept in fp32
    for part in (model.encoder, model.decoder):
        kinds = [type(m) for m in part.modules() if m is not head]
        assert DynamicLinear in kinds and nn.Linear not in kinds and Conv1D not in kinds
    assert all(type(m) is nn.Linear for m in model.projector.modules() if isinstance(m, nn.Linear))
    linear = model.decoder.transformer.h[0].mlp.c_fc
    assert linear.weight().qscheme() == torch.per_channel_affine  # one scale per output channel


def test_int8_scores_move_a_little_and_captions_agree(fp32, int8):
    a = fp32.caption_with_scores(IMAGES)
    b = int8.caption_with_scores(IMAGES)
    assert [x[0][0] for x in a] == [x[0][0] for x in b]  # the shipped model's captions are unchanged
    deltas = [abs(x[0][1] - y[0][1]) for x, y in zip(a, b)]
    assert 0 < max(deltas) < 0.05  # quantised (scores differ) but close


def test_bad_requests_are_refused_with_a_reason(fp32):
    with pytest.raises(ValueError, match="quantize must be one of"):
        Captioner(copy.deepcopy(fp32.model), quantize="int4")
    with pytest.raises(ValueError, match="starts from fp32 weights; the model is in torch.bfloat16"):
        quantize_int8(copy.deepcopy(fp32.model).to(torch.bfloat16))


def test_cli_quantize_and_prompt_options(fp32, int8, capsys):
    assert main(["caption", *map(str, IMAGES), "--model", str(MODEL), "--quantize", "int8", "--beams", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in lines] == int8.caption(IMAGES, num_beams=1)
    argv = ["caption", str(IMAGES[1]), "--model", str(MODEL), "--prompt", "a picture of a", "--bad-words", "red"]
    assert main([*argv, "--device", "cpu"]) == 0
    caption = capsys.readouterr().out.split("\t")[1].strip()
    assert caption == fp32.caption(IMAGES[1], prompt="a picture of a", bad_words=["red"])[0]
    assert main(["caption", str(IMAGES[0]), "--model", str(MODEL), "--quantize", "int8", "--dtype", "bfloat16"]) == 2
    assert "starts from float32 weights" in capsys.readouterr().err


def test_parts_choose_which_layers_are_quantised(fp32):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    def quantised(module):
        return sum(isinstance(m, DynamicLinear) for m in module.modules())

    encoder_only = quantize_int8(copy.deepcopy(fp32.model), ("encoder",))
    assert quantised(encoder_only.encoder) > 0 and quantised(encoder_only.decoder) == 0
    head_only = quantize_int8(copy.deepcopy(fp32.model), ("lm_head",))
    assert quantised(head_only.decoder) == 1 and quantised(head_only.encoder) == 0
    assert isinstance(head_only.decoder.get_output_embeddings(), DynamicLinear)
    default = quantize_int8(copy.deepcopy(fp32.model))
    assert not isinstance(default.decoder.get_output_embeddings(), DynamicLinear) and quantised(default.decoder) > 0
    with pytest.raises(ValueError, match="unknown parts"):
        quantize_int8(copy.deepcopy(fp32.model), ("projector",))
