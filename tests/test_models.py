"""CaptionModel: building, freezing, loss masking, save/load."""

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F

from mmgen.config import DecoderConfig, EncoderConfig, load_config
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.models.decoder import build_decoder
from mmgen.models.encoder import Encoder
from mmgen.tokenizer import train_caption_tokenizer
from mmgen.training.schedule import param_groups

CAPTIONS = [
    "a red circle to the left of a blue square",
    "a small green triangle on a striped background",
    "two yellow stars above a purple circle",
    "a photo of a big orange square",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_caption_tokenizer(CAPTIONS, "wordlevel", 200)


def _batch(tok, prompt="", pad_equals_eos=False):
    """A right-padded batch with BOS + prompt + caption + EOS, labels -100 on BOS/prompt/padding."""
    start = [tok.bos_token_id] + (tok(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
    seqs = [start + tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for c in CAPTIONS[:3]]
    t = max(map(len, seqs))
    pad = tok.eos_token_id if pad_equals_eos else tok.pad_token_id
    ids = torch.full((3, t), pad)
    mask = torch.zeros(3, t, dtype=torch.long)
    labels = torch.full((3, t), -100)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, len(start) : len(s)] = torch.tensor(s[len(start) :])
    return ids, mask, labels, len(start)


def test_tiny_builds_and_loss_is_finite(tokenizer):
    model = CaptionModel(tiny_model_config(), tokenizer)
    ids, mask, labels, _ = _batch(tokenizer)
    out = model(torch.randn(3, 3, 32, 32), ids, mask, labels)
    assert torch.isfinite(out.loss)
    assert out.logits.shape == (3, ids.shape[1], len(tokenizer))
    assert model.decoder.config.vocab_size == len(tokenizer)  # decoder sized to the trained tokenizer


@pytest.mark.parametrize(
    "projector, tokens", [("linear", 16), ("mlp", 16), ("pool", 4), ("pixel_shuffle", 4), ("mapper", 4)]
)
def test_projectors_shapes(tokenizer, projector, tokens):
    model = CaptionModel(tiny_model_config(projector=projector), tokenizer)
    prefix = model.encode_images(torch.randn(2, 3, 32, 32))
    assert prefix.shape == (2, tokens, 64) and model.num_prefix_tokens == tokens


def test_every_projector_kind_the_config_accepts_is_built():
    from mmgen.config import PROJECTOR_KINDS
    from mmgen.models.projector import PROJECTORS

    assert tuple(PROJECTORS) == PROJECTOR_KINDS


def test_grid_projectors_refuse_prefix_tokens(tokenizer):
    cfg = tiny_model_config(projector="pool")
    cfg.encoder.keep_prefix_tokens = True
    with pytest.raises(ValueError, match="needs the patch grid: set model.encoder.keep_prefix_tokens: false"):
        CaptionModel(cfg, tokenizer)


def test_pool_projector_is_average_of_2x2_patches(tokenizer):
    model = CaptionModel(tiny_model_config(projector="pool"), tokenizer)
    feats = torch.randn(1, 16, 64)  # 4x4 grid
    grid = feats.reshape(1, 4, 4, 64)
    manual = torch.stack(
        [grid[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean((0, 1)) for i in range(2) for j in range(2)]
    )
    torch.testing.assert_close(model.projector(feats), model.projector.mlp(manual[None]))


def test_pixel_shuffle_with_a_linear_head_is_one_map_of_each_2x2_neighbourhood(tokenizer):
    cfg = tiny_model_config(projector="pixel_shuffle")
    cfg.projector.head = "linear"
    model = CaptionModel(cfg, tokenizer)
    feats = torch.randn(2, 16, 64)  # 4x4 grid
    grid = feats.reshape(2, 4, 4, 64)
    lin = model.projector.mlp.proj
    assert isinstance(lin, torch.nn.Linear) and lin.in_features == 4 * 64
    # token (i, j) of the 2x2 grid: the row-major 2x2 neighbourhood's features, concatenated, through one linear map
    manual = torch.stack(
        [torch.cat([grid[:, 2 * i + a, 2 * j + b] for a in range(2) for b in range(2)], dim=-1)
         for i in range(2) for j in range(2)],
        dim=1,
    )  # fmt: skip
    torch.testing.assert_close(model.projector(feats), manual @ lin.weight.T + lin.bias)


def test_an_unknown_projector_head_is_a_config_error_naming_the_key():
    from mmgen.config import ConfigError, ProjectorConfig

    with pytest.raises(ConfigError, match=r"model\.projector\.head.*'relu'"):
        ProjectorConfig(kind="pixel_shuffle", head="relu")


def _trained_parts(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    parts = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        parts.setdefault(part, []).append((name, p.grad is not None and p.grad.abs().sum() > 0, p.requires_grad))
    return parts


@pytest.mark.parametrize(
    "kw, expect",
    [
        ({}, {"encoder": True, "projector": True, "decoder": True}),
        ({"decoder_mode": "frozen"}, {"encoder": True, "projector": True, "decoder": False}),
        ({"encoder_freeze": "all"}, {"encoder": False, "projector": True, "decoder": True}),
        ({"encoder_freeze": "all", "decoder_mode": "frozen"}, {"encoder": False, "projector": True, "decoder": False}),
    ],
)
def test_gradients_reach_exactly_the_trainable_parts(tokenizer, kw, expect):
    model = CaptionModel(tiny_model_config(**kw), tokenizer).train()
    ids, mask, labels, _ = _batch(tokenizer)
    parts = _trained_parts(model, model(torch.randn(3, 3, 32, 32), ids, mask, labels).loss)
    for part, trains in expect.items():
        got = [g for _, g, _ in parts[part]]
        assert all(got) if trains else not any(got), part
        assert all(rg == trains for _, _, rg in parts[part])
    # frozen parts stay in eval mode while the model trains
    if not expect["decoder"]:
        assert not model.decoder.training
    if not expect["encoder"]:
        assert not model.encoder.training


def test_lora_trains_only_adapters(tokenizer):
    cfg = tiny_model_config(decoder_mode="lora")
    cfg.decoder.lora.target_modules = ["c_attn"]
    model = CaptionModel(cfg, tokenizer).train()
    ids, mask, labels, _ = _batch(tokenizer)
    parts = _trained_parts(model, model(torch.randn(3, 3, 32, 32), ids, mask, labels).loss)
    dec = parts["decoder"]
    assert all(g for n, g, _ in dec if "lora_B" in n)  # B starts at zero, so A's gradient is zero at step 0
    assert not any(g or rg for n, g, rg in dec if "lora_" not in n)
    summary = model.parameter_summary()
    assert 0 < summary["decoder"]["trainable"] < summary["decoder"]["total"] / 10


def test_last_k_blocks(tokenizer):
    cfg = tiny_model_config(depth=2, encoder_freeze="last_k")
    cfg.encoder.unfrozen_blocks = 1
    model = CaptionModel(cfg, tokenizer).train()
    ids, mask, labels, _ = _batch(tokenizer)
    parts = dict(
        (n, g) for n, g, _ in _trained_parts(model, model(torch.randn(3, 3, 32, 32), ids, mask, labels).loss)["encoder"]
    )
    assert all(g for n, g in parts.items() if ".blocks.1." in n or n.startswith("encoder.model.norm"))
    assert not any(g for n, g in parts.items() if ".blocks.0." in n or "patch_embed" in n or "pos_embed" in n)
    groups = param_groups(model, 1e-3, 0.1)
    in_groups = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) not in in_groups for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("prompt, pad_equals_eos", [("", False), ("a photo of", False), ("a photo of", True)])
def test_loss_is_cross_entropy_over_caption_tokens_only(tokenizer, prompt, pad_equals_eos):
    model = CaptionModel(tiny_model_config(prompt=prompt), tokenizer).eval()
    ids, mask, labels, n_start = _batch(tokenizer, prompt, pad_equals_eos)
    out = model(torch.randn(3, 3, 32, 32), ids, mask, labels)
    # manual: logits[:, t] predicts ids[:, t+1]; only caption tokens and EOS (mask==1, t+1 >= n_start)
    total, count = 0.0, 0
    for i in range(3):
        length = int(mask[i].sum())
        for t in range(n_start - 1, length - 1):
            total = total + F.cross_entropy(out.logits[i, t][None], ids[i, t + 1][None], reduction="sum")
            count += 1
    torch.testing.assert_close(out.loss, total / count)
    assert count == int((labels != -100).sum())
    assert int((labels[:, :n_start] != -100).sum()) == 0  # BOS and prompt carry no label


def test_save_and_load_give_identical_logits(tokenizer, tmp_path):
    cfg = tiny_model_config(projector="mapper", prompt="a photo of")
    model = CaptionModel(cfg, tokenizer).eval()
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.relative_to(tmp_path / "m").as_posix() for p in (tmp_path / "m").rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) or f.startswith("tokenizer/") for f in files if f != "README.md")
    assert "README.md" in files  # the model card
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl", ".tmp")) for f in files)
    loaded = CaptionModel.from_pretrained(tmp_path / "m")
    ids, mask, labels, _ = _batch(tokenizer, "a photo of")
    px = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(px, ids, mask).logits, loaded(px, ids, mask).logits)
    assert loaded.config == cfg and torch.equal(loaded.start_ids, model.start_ids)


def test_decoder_checkpointing_recomputes_every_block_without_deprecation_warning(tokenizer):
    """Each block's attention runs twice per step (forward + recompute in backward); no deprecated call."""
    cfg = tiny_model_config()
    cfg.decoder.gradient_checkpointing = True
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*checkpointing.*", category=FutureWarning)
        decoder = build_decoder(cfg.decoder, len(tokenizer), special)
    blocks = decoder.transformer.h
    calls = []
    for b in blocks:
        b.attn.register_forward_hook(lambda *_: calls.append(1))
    decoder.train()
    ids = torch.randint(0, len(tokenizer), (2, 6))
    decoder(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 2 * len(blocks) > 0


def test_vit_b16_gpt2_config_has_hub_sizes_offline():
    cfg = load_config(
        __import__("pathlib").Path(__file__).resolve().parents[1] / "configs" / "vit_b16_gpt2.yaml",
        ["model.encoder.pretrained=false", "model.decoder.pretrained=false"],
    )
    enc = Encoder(cfg.model.encoder)
    n_enc = sum(p.numel() for p in enc.parameters())
    assert 85e6 < n_enc < 87e6 and enc.grid_size == (14, 14) and enc.embed_dim == 768
    dec = build_decoder(cfg.model.decoder, 50257, {"bos_token_id": 50256, "eos_token_id": 50256})
    n_dec = sum(p.numel() for p in {id(p): p for p in dec.parameters()}.values())
    assert 124e6 < n_dec < 125e6
    assert enc.data_config["input_size"] == (3, 224, 224)


def test_too_few_decoder_positions_is_a_clear_error(tokenizer):
    cfg = tiny_model_config()
    cfg.decoder.config_overrides["n_positions"] = 20  # 16 prefix + 1 BOS + 32 caption tokens do not fit
    with pytest.raises(ValueError, match=r"20 positions but a caption needs 49.*n_positions"):
        CaptionModel(cfg, tokenizer)


def test_init_from_a_saved_model_loads_every_matching_tensor(tokenizer, tmp_path):
    from mmgen.models.files import load_matching_weights

    src = CaptionModel(tiny_model_config(), tokenizer)
    src.save_pretrained(tmp_path / "stage1")
    cfg = tiny_model_config(decoder_mode="lora")
    cfg.decoder.lora.target_modules = ["c_attn"]
    torch.manual_seed(123)
    dst = CaptionModel(cfg, tokenizer)
    missing = load_matching_weights(dst, tmp_path / "stage1")
    assert missing and all("lora_" in name for name in missing)  # only the new adapters keep their init
    base = dst.decoder.get_base_model()
    assert torch.equal(base.transformer.wte.weight, src.decoder.transformer.wte.weight)
    assert torch.equal(dst.projector.fc1.weight, src.projector.fc1.weight)


@pytest.mark.parametrize(
    "name, kwargs, prefix",
    [
        ("vit_tiny_patch16_224", dict(depth=1), 1),
        ("deit_tiny_distilled_patch16_224", dict(depth=1), 2),  # class + distillation token
        ("beit_base_patch16_224", dict(depth=1, embed_dim=32, num_heads=2), 1),
        ("eva02_tiny_patch14_224", dict(depth=1, patch_size=8), 1),
        ("vit_medium_patch16_reg4_gap_256", dict(depth=1, embed_dim=32, num_heads=2), 4),  # 4 register tokens
    ],
)
def test_vit_family_encoders_give_patch_grid_tokens(name, kwargs, prefix):
    enc = Encoder(EncoderConfig(name=name, img_size=32, patch_size=kwargs.pop("patch_size", 8), **kwargs))
    assert enc.grid_size == (4, 4) and enc.num_prefix_tokens == prefix
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 16, enc.embed_dim)


def test_encoders_without_a_patch_grid_are_refused_at_build_time(monkeypatch):
    # pretrained: the refusal comes from the architecture on the meta device, before any download
    swin = EncoderConfig(name="swin_tiny_patch4_window7_224", embed_dim=24, pretrained=True)
    with pytest.raises(ValueError, match=r"swin_tiny_patch4_window7_224: not a ViT-style encoder.*\(1, 7, 7, 192\)"):
        Encoder(swin)
    import mmgen.models.encoder as encoder

    monkeypatch.setattr(encoder, "_meta_token_layout", lambda *a: None)  # the check on the real model
    with pytest.raises(ValueError, match=r"4-D feature map.*Encoders that work: ViT"):
        Encoder(dataclasses.replace(swin, pretrained=False))
    with pytest.raises(ValueError, match=r"pit_ti_224.*\(1, 1, 256\).*1 tokens, not its 27x27 patch grid"):
        Encoder(EncoderConfig(name="pit_ti_224"))
    assert Encoder(EncoderConfig(name="vit_tiny_patch16_224", depth=1, img_size=32)).grid_size == (2, 2)


GEMMA2 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1)


def _special(tok):
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def test_unsupported_attention_falls_back_to_eager_with_a_message(tokenizer):
    cfg = DecoderConfig(name="gemma2", model_type="gemma2", config_overrides={**GEMMA2, "head_dim": 16})
    assert cfg.attn_implementation == "sdpa"  # the default, which Gemma-2 does not support
    with pytest.warns(UserWarning, match=r"model.decoder.attn_implementation='sdpa': Gemma2ForCausalLM .* 'eager'"):
        decoder = build_decoder(cfg, len(tokenizer), _special(tokenizer))
    assert decoder.config._attn_implementation == "eager"
    ids = torch.randint(0, len(tokenizer), (2, 5))
    assert torch.isfinite(decoder(input_ids=ids, labels=ids).loss)
    phi3 = DecoderConfig(name="phi3", model_type="phi3", config_overrides=GEMMA2)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*attn_implementation.*")
        assert build_decoder(phi3, len(tokenizer), _special(tokenizer)).config._attn_implementation == "mmgen_sdpa"


def test_lora_without_a_peft_default_targets_the_attention_projections(tokenizer, monkeypatch):
    cfg = DecoderConfig(name="phi3", model_type="phi3", config_overrides=GEMMA2, mode="lora")
    with pytest.warns(UserWarning, match=r"no default for 'phi3': using the attention projections"):
        decoder = build_decoder(cfg, len(tokenizer), _special(tokenizer))
    adapted = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in decoder.named_parameters() if ".lora_A" in n}
    assert adapted == {"qkv_proj", "o_proj"}
    ids = torch.randint(0, len(tokenizer), (2, 5))
    decoder(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in decoder.named_parameters() if p.requires_grad)

    import mmgen.models.decoder as decoder_module

    monkeypatch.setattr(decoder_module, "attention_projections", lambda model: [])
    with pytest.raises(ValueError, match=r"set model.decoder.lora.target_modules, e.g. to some of \[.*'qkv_proj'"):
        build_decoder(cfg, len(tokenizer), _special(tokenizer))
    with warnings.catch_warnings():  # peft's own default (GPT-2: c_attn) is left alone
        warnings.filterwarnings("error", message=".*target_modules.*")
        build_decoder(tiny_model_config(decoder_mode="lora").decoder, len(tokenizer), _special(tokenizer))


class _Payload:
    """What a hostile pickle holds: unpickling it would call ``print``."""

    def __reduce__(self):
        return (print, ("unpickled",))


def test_pickled_encoder_and_decoder_weights_are_refused_in_one_line_naming_the_file(tmp_path, capsys):
    from mmgen.errors import CheckpointError

    torch.save({"w": _Payload()}, tmp_path / "vit.pth")
    torch.save({"w": _Payload()}, tmp_path / "vit.safetensors")  # a pickle wearing the safetensors name
    small = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    for name in ("vit.pth", "vit.safetensors"):
        cfg = EncoderConfig(name="vit_base_patch16_224", weights=str(tmp_path / name), **small)
        with pytest.raises(CheckpointError, match=f"{tmp_path / name}") as caught:
            Encoder(cfg)
        assert "\n" not in str(caught.value)
    decoder = tmp_path / "gpt2"
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=32, vocab_size=40).save_pretrained(decoder)
    torch.save({"w": _Payload()}, decoder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=rf"model.decoder.name={decoder}: cannot be loaded") as caught:
        build_decoder(DecoderConfig(name=str(decoder), pretrained=True), 40, {})
    assert "\n" not in str(caught.value) and "\x1b" not in str(caught.value)  # one line, no terminal colours
    assert "unpickled" not in capsys.readouterr().out  # nothing was ever unpickled


def test_misspelt_or_mistyped_decoder_overrides_name_the_key_before_any_model_is_built():
    from mmgen.config import ConfigError
    from mmgen.models.decoder import check_decoder_config

    for overrides, message in (
        ({"n_layr": 2}, "model.decoder.config_overrides.n_layr: not a field of GPT2Config; did you mean n_layer?"),
        ({"n_layer": "two"}, "model.decoder.config_overrides.n_layer: expected an integer (like its default 12)"),
        ({"resid_pdrop": "none"}, "model.decoder.config_overrides.resid_pdrop: expected a number"),
        ({"scale_attn_weights": 1}, "model.decoder.config_overrides.scale_attn_weights: expected true/false"),
    ):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_decoder_config(DecoderConfig(config_overrides=overrides))
    check_decoder_config(DecoderConfig(config_overrides={"n_layer": 2, "resid_pdrop": 0}))  # an int for a float
    with pytest.raises(ConfigError, match="model.decoder.config_overrides: shapes a random-init decoder"):
        DecoderConfig(pretrained=True, config_overrides={"n_layer": 2})  # would be ignored silently
