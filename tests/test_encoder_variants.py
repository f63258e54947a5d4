"""Encoder variants for training from scratch: the convolutional stem and fixed 2-D sin-cos positions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmgen.config import ConfigError, EncoderConfig
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.models.encoder import Encoder
from mmgen.models.stems import ConvStem, HybridStem, sincos_2d
from mmgen.tokenizer import train_caption_tokenizer
from mmgen.training.schedule import param_groups


def _cfg(**kw) -> EncoderConfig:
    base = dict(name="vit_base_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=2)
    return EncoderConfig(**{**base, **kw})


def test_conv_stem_keeps_the_patch_grid_and_is_convolutional():
    enc = Encoder(_cfg(stem="conv"))
    assert isinstance(enc.model.patch_embed, ConvStem) and enc.grid_size == (4, 4)
    convs = [m for m in enc.model.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 + [(1, 1)]  # 8 = 2**3, then a 1x1 projection
    assert [c.out_channels for c in convs] == [16, 32, 64, 64]
    x = torch.randn(2, 3, 32, 32)
    assert enc(x).shape == (2, 16, 64)
    # local: changing one corner of the image leaves the tokens of the far patches' stem output alone
    y = x.clone()
    y[:, :, :8, :8] += 1.0
    stem_x, stem_y = enc.model.patch_embed(x), enc.model.patch_embed(y)  # (B, 16, C), before attention
    changed = (stem_x - stem_y).abs().amax(dim=(0, 2)) > 1e-6
    assert changed[0] and not changed[15]
    with pytest.raises(ValueError, match="power-of-two"):
        Encoder(_cfg(stem="conv", patch_size=6, img_size=36))


def test_stem_width_sets_the_first_convolution_and_doubles_up_to_the_token_width():
    def widths(**kw):
        return [
            m.out_channels
            for m in Encoder(_cfg(stem="conv", **kw)).model.patch_embed.proj
            if isinstance(m, torch.nn.Conv2d)
        ]

    assert widths(stem_width=8) == [8, 16, 32, 64]  # 3 strides, then the 1x1 projection to the token width
    assert widths(stem_width=32) == [32, 64, 64, 64]  # never above the token width
    assert widths(stem_width=96) == [96, 96, 96, 64]  # a first width above it stays
    with pytest.raises(ConfigError, match="model.encoder.stem_width"):
        _cfg(stem="conv", stem_width=0)


def test_hybrid_stem_adds_the_linear_patch_projection_to_the_convolutions():
    enc = Encoder(_cfg(stem="hybrid"))
    stem = enc.model.patch_embed
    assert isinstance(stem, HybridStem) and enc.grid_size == (4, 4)
    linear = stem.proj.linear
    assert linear.kernel_size == (8, 8) and linear.stride == (8, 8) and linear.out_channels == 64
    n_conv = sum(p.numel() for p in Encoder(_cfg(stem="conv")).parameters())
    assert sum(p.numel() for p in enc.parameters()) == n_conv + 8 * 8 * 3 * 64 + 64
    x = torch.randn(2, 3, 32, 32)
    want = (stem.proj.conv(x) + F.conv2d(x, linear.weight, linear.bias, stride=8)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(stem(x), want)  # (B, 16, C): the sum of the two paths, patch by patch
    enc(x).sum().backward()
    assert linear.weight.grad.abs().sum() > 0 and stem.proj.conv[0].weight.grad.abs().sum() > 0


def test_sincos_positions_are_fixed_and_encode_row_and_column():
    table = sincos_2d((3, 4), 16)  # (12, 16)
    rows, cols = table[:, :8].reshape(3, 4, 8), table[:, 8:].reshape(3, 4, 8)
    assert torch.equal(rows[:, 0:1].expand(3, 4, 8), rows) and torch.equal(cols[0:1].expand(3, 4, 8), cols)
    assert table[5, 1].item() == pytest.approx(math.sin(1 * 1 / 10000 ** (1 / 4)), abs=1e-6)  # row 1, 2nd frequency
    assert table[6, 8 + 4].item() == pytest.approx(math.cos(2.0), abs=1e-6)  # column 2, 1st frequency (cos half)
    assert len({tuple(r.tolist()) for r in table}) == 12  # every position is distinct

    tok = train_caption_tokenizer(["a red circle", "two blue stars"], "wordlevel", 50)
    cfg = tiny_model_config()
    cfg.encoder.pos_embed = "sincos"
    model = CaptionModel(cfg, tok)
    pos = model.encoder.model.pos_embed
    assert not pos.requires_grad and torch.equal(pos[0, 1:], sincos_2d((4, 4), 64)) and not pos[0, 0].any()
    assert all(p is not pos for g in param_groups(model, 1e-3, 0.01) for p in g["params"])  # never trained


@pytest.mark.parametrize("key, value", [("stem", "conv"), ("stem", "hybrid"), ("pos_embed", "sincos")])
def test_variants_refuse_pretrained_weights_and_unknown_values(key, value):
    with pytest.raises(ConfigError, match=f"model.encoder.{key}"):
        _cfg(pretrained=True, **{key: value})
    with pytest.raises(ConfigError, match=f"model.encoder.{key}"):
        _cfg(**{key: "nonsense"})


def test_a_saved_model_with_both_variants_loads_back(tmp_path):
    tok = train_caption_tokenizer(["a red circle", "two blue stars"], "wordlevel", 50)
    cfg = tiny_model_config()
    cfg.encoder.stem, cfg.encoder.pos_embed = "conv", "sincos"
    model = CaptionModel(cfg, tok).eval()
    model.save_pretrained(tmp_path)
    again = CaptionModel.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(again.encode_images(x), model.encode_images(x))


@pytest.mark.parametrize("stem", ["conv", "hybrid"])
def test_group_norm_stem_normalises_each_image_on_its_own(stem):
    torch.manual_seed(0)  # the stems' random init
    plain, normed = Encoder(_cfg(stem=stem)), Encoder(_cfg(stem=stem, stem_norm="group"))
    norms = [m for m in normed.model.patch_embed.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert [n.num_channels for n in norms] == [16, 32, 64]  # one after each stride-2 conv (patch 8: 3 of them)
    assert [n.num_groups for n in norms] == [1, 2, 4]  # groups of 16 channels
    assert not [m for m in plain.model.patch_embed.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert normed.grid_size == plain.grid_size == (4, 4)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    normed.eval()
    with torch.no_grad():
        alone = normed.model.patch_embed(x[:1])
        together = normed.model.patch_embed(x)
        brighter = normed.model.patch_embed(torch.cat([x[:1], 5 * x[1:]]))
    torch.testing.assert_close(together[:1], alone)  # no batch statistics: the other images change nothing
    torch.testing.assert_close(brighter[:1], alone)
    red = x[:1].clone()
    red[:, 0, :8, :8] += 2.0  # one corner's colour
    with torch.no_grad():
        changed = (normed.model.patch_embed(red) - alone).abs().amax(dim=2)[0]  # (16,) per token
    # the colour reaches its own token much more than the far corner's (which moves a little: the image's
    # statistics changed); neighbours share receptive field with it (5-17x over 15 random inits)
    assert changed[0] > 3 * changed[15]


def test_weight_standardised_stem_normalises_the_filters_not_the_image():
    from timm.layers import ScaledStdConv2d

    torch.manual_seed(0)  # the stem's random init
    enc = Encoder(_cfg(stem="hybrid", stem_norm="ws")).eval()
    stem = enc.model.patch_embed
    convs = [m for m in stem.modules() if isinstance(m, ScaledStdConv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * 3 and not [
        m for m in stem.modules() if isinstance(m, torch.nn.GroupNorm)
    ]
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone, together = stem(x[:1]), stem(x)
        conv_path = stem.proj.conv(x)  # the convolutions alone, without the linear patch projection
        flat = [
            stem.proj.conv(torch.full((1, 3, 32, 32), 0.0) + torch.tensor(c).view(1, 3, 1, 1))
            for c in ((1.0, -1.0, 0.0), (-1.0, 1.0, 0.0))
        ]
    torch.testing.assert_close(together[:1], alone)  # no batch statistics
    assert 0.2 < conv_path.std().item() < 5.0  # standardised filters keep the activations' scale through the stack
    # a flat image's colour reaches every token: red-ish and green-ish backgrounds differ everywhere
    assert (flat[0] - flat[1]).abs().amax(dim=1).min() > 1e-3


def test_stem_norm_needs_a_convolutional_stem():
    with pytest.raises(ConfigError, match="model.encoder.stem_norm: normalises the convolutional stem"):
        _cfg(stem_norm="group")
    with pytest.raises(ConfigError, match="model.encoder.stem_norm"):
        _cfg(stem="conv", stem_norm="batch")
