"""Captioner: the same captions from paths, PIL images and tensors; equal to transformers' generate."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmgen.captioner import Captioner, list_images
from mmgen.config import ConfigError, GenerationConfig
from mmgen.data.images import BadImageError, decode_image
from mmgen.data.transforms import build_transform
from mmgen.generation.search import search
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.tokenizer import train_caption_tokenizer

CAPTIONS = [
    "a red circle above a blue square",
    "two green triangles on a white background",
    "a small yellow star next to a big black circle",
    "a blue square left of a red triangle",
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    model = CaptionModel(tiny_model_config(), train_caption_tokenizer(CAPTIONS)).eval()
    model.generation_config = GenerationConfig(num_beams=2, max_new_tokens=8)
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(1)
    for i, (ext, mode) in enumerate([("png", "RGB"), ("jpg", "RGB"), ("png", "L"), ("png", "RGBA")]):
        pixels = torch.randint(0, 256, (40 + 8 * i, 48, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).convert(mode).save(folder / f"img{i}.{ext}")
    return list_images([folder])


@pytest.fixture(scope="module")
def captioner(saved_model):
    return Captioner.from_pretrained(saved_model, device="cpu")


def test_public_import():
    from mmgen import Captioner as Exported

    assert Exported is Captioner


def test_paths_pil_and_tensors_give_the_same_captions(captioner, image_files):
    by_path = captioner.caption(image_files)
    assert len(by_path) == len(image_files) and all(isinstance(c, str) for c in by_path)
    pils = [Image.open(p) for p in image_files]
    transform = build_transform(captioner.model.data_config)
    tensors = [transform(decode_image(p)) for p in image_files]
    assert captioner.caption(pils) == by_path
    assert captioner.caption(tensors) == by_path
    assert captioner.caption(torch.stack(tensors)) == by_path  # one (B, 3, H, W) batch
    assert captioner.caption(image_files, batch_size=3) == by_path  # batching does not matter
    assert captioner.caption(str(image_files[1])) == by_path[1:2]  # a single image


def test_the_model_normalises_uint8_images_like_the_float_transform(captioner, image_files):
    cfg = captioner.model.data_config
    raw = build_transform(cfg, uint8=True)(decode_image(image_files[0]))
    assert raw.dtype == torch.uint8
    assert captioner.preprocess(raw) is raw  # kept in 0..255: the model is the one place that normalises
    assert captioner.preprocess(image_files[0]).dtype == torch.uint8  # paths too (4x less to move)
    expected = build_transform(cfg)(decode_image(image_files[0]))
    torch.testing.assert_close(captioner.model.normalize_pixels(raw[None])[0], expected, atol=1e-5, rtol=1e-5)


def test_a_batch_mixing_uint8_and_float_tensors_is_normalised_once(captioner, image_files):
    cfg = captioner.model.data_config
    raw = [build_transform(cfg, uint8=True)(decode_image(p)) for p in image_files[:3]]
    floats = [build_transform(cfg)(decode_image(p)) for p in image_files[:3]]
    by_path = captioner.caption(image_files[:3])
    assert captioner.caption(raw) == by_path
    mixed = [raw[0], floats[1], raw[2]]
    batch = captioner.batch_pixels(mixed)
    assert batch.is_floating_point()
    torch.testing.assert_close(batch, torch.stack(floats), atol=1e-5, rtol=1e-5)  # not normalised twice
    assert captioner.caption(mixed) == by_path


def hf_captions(model: CaptionModel, pixels: torch.Tensor, gen: GenerationConfig):
    """Reference: transformers' generate on the decoder with the same prompt embeddings."""
    tok = model.tokenizer
    with torch.no_grad():
        embeds = torch.cat([model.encode_images(pixels), model.start_embeds(pixels.shape[0])], dim=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = model.decoder.generate(
                inputs_embeds=embeds,
                attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                do_sample=False,
                num_beams=gen.num_beams,
                max_new_tokens=gen.max_new_tokens,
                num_return_sequences=gen.num_return_sequences,
                length_penalty=gen.length_penalty,
                early_stopping=gen.early_stopping if gen.num_beams > 1 else None,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                return_dict_in_generate=True,
                output_scores=True,
            )
    texts = [t.strip() for t in tok.batch_decode(out.sequences, skip_special_tokens=True)]
    return texts, getattr(out, "sequences_scores", None)


@pytest.mark.parametrize("beams", [1, 3])
def test_equals_transformers_generate(captioner, image_files, beams):
    gen = GenerationConfig(num_beams=beams, max_new_tokens=10)
    transform = build_transform(captioner.model.data_config)
    pixels = torch.stack([transform(decode_image(p)) for p in image_files])
    ref, _ = hf_captions(captioner.model, pixels, gen)
    assert captioner.caption(image_files, num_beams=beams, max_new_tokens=10) == ref
    assert captioner.model.generate(pixels, gen).best == ref


def test_generate_runs_the_encoder_without_autograd(captioner, image_files):
    """The image prefix too is computed in inference mode: no graph is kept for a forward nobody backpropagates."""
    transform = build_transform(captioner.model.data_config)
    pixels = torch.stack([transform(decode_image(p)) for p in image_files])
    seen = []
    hook = captioner.model.encoder.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    try:
        captioner.model.generate(pixels, GenerationConfig(num_beams=1, max_new_tokens=3))
    finally:
        hook.remove()
    assert seen == [True]


def test_n_best_with_scores(captioner, image_files):
    gen = GenerationConfig(num_beams=3, num_return_sequences=2, max_new_tokens=6, length_penalty=0.6)
    pairs = captioner.caption_with_scores(
        image_files, num_beams=3, num_return_sequences=2, max_new_tokens=6, length_penalty=0.6
    )
    transform = build_transform(captioner.model.data_config)
    pixels = torch.stack([transform(decode_image(p)) for p in image_files])
    ref, ref_scores = hf_captions(captioner.model, pixels, gen)
    assert [c for options in pairs for c, _ in options] == ref
    scores = torch.tensor([s for options in pairs for _, s in options])
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    assert all(a[1] >= b[1] for options in pairs for a, b in zip(options, options[1:]))


def test_sampling_with_a_seed_is_reproducible(captioner, image_files):
    kw = dict(do_sample=True, num_beams=1, seed=3, top_p=0.9)
    assert captioner.caption(image_files, **kw) == captioner.caption(image_files, **kw)


def test_bad_image_names_the_file(captioner, image_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(BadImageError, match="broken.jpg"):
        captioner.caption([image_files[0], broken])
    results = list(captioner.iter_captions([image_files[0], broken, image_files[1]], skip_errors=True))
    assert [r.error is None for r in results] == [True, False, True]
    assert results[1].source == str(broken) and results[1].caption is None
    assert [results[0].caption, results[2].caption] == captioner.caption([image_files[0], image_files[1]])


def test_generation_overrides_are_validated(captioner, image_files):
    with pytest.raises(ValueError, match="unknown generation setting"):
        captioner.caption(image_files, beams=3)
    with pytest.raises(ConfigError, match="num_beams"):
        captioner.caption(image_files, num_beams=0)
    with pytest.raises(BadImageError, match="expected"):
        captioner.caption(torch.zeros(3, 7, 7))


def test_several_samples_come_best_first_despite_the_saved_beams(tmp_path, image_files):
    """A model saved with num_beams=3: asking for 6 samples draws 6 (num_beams=1) and sorts them by score."""
    torch.manual_seed(0)
    model = CaptionModel(tiny_model_config(), train_caption_tokenizer(CAPTIONS)).eval()
    model.generation_config = GenerationConfig(num_beams=3, max_new_tokens=8)
    model.save_pretrained(tmp_path / "model")
    captioner = Captioner.from_pretrained(tmp_path / "model", device="cpu")
    kw = dict(do_sample=True, num_return_sequences=6, seed=5, temperature=3.0)
    pairs = captioner.caption_with_scores(image_files[:2], **kw)
    assert [len(options) for options in pairs] == [6, 6]
    for options in pairs:
        scores = [s for _, s in options]
        assert scores == sorted(scores, reverse=True), scores
    # the same draws as plain sampling (num_beams=1), in drawing order before the sort
    transform = build_transform(captioner.model.data_config)
    pixels = torch.stack([transform(decode_image(p)) for p in image_files[:2]])
    gen = GenerationConfig(num_beams=1, max_new_tokens=8, **kw)
    out = search(
        captioner.model.decoder,
        captioner.model.prompt_embeds(pixels),
        gen,
        eos_token_id=captioner.model.tokenizer.eos_token_id,
        pad_token_id=captioner.model.tokenizer.pad_token_id,
    )
    drawn = out.scores.tolist()
    assert drawn[0] != sorted(drawn[0], reverse=True) or drawn[1] != sorted(drawn[1], reverse=True)
    for options, raw in zip(pairs, drawn):
        torch.testing.assert_close(torch.tensor([s for _, s in options]), torch.tensor(sorted(raw, reverse=True)))
    with pytest.raises(ValueError, match="cannot exceed num_beams"):  # beam sampling when asked for
        captioner.caption_with_scores(image_files[:1], num_beams=3, **kw)


def _damaged_copy(saved_model, tmp_path, damage) -> Path:
    model_dir = tmp_path / "model"
    shutil.copytree(saved_model, model_dir)
    damage(model_dir)
    return model_dir


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _pickle_weights(model_dir: Path) -> None:
    torch.save({"w": torch.zeros(2)}, model_dir / "model.safetensors")


def _other_weights(model_dir: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(model_dir / "model.safetensors"))


DAMAGE = {  # what breaks -> (the file the error must name, a fragment of what it must say)
    "truncated weights": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors", "corrupt or truncated"),
    "pickled weights": (_pickle_weights, "model.safetensors", "pickled"),
    "another model's weights": (_other_weights, "model.safetensors", "do not fit"),
    "broken config.json": (lambda d: (d / "config.json").write_text('{"model": '), "config.json", "not valid JSON"),
    "unknown model key": (
        lambda d: (d / "config.json").write_text('{"model": {"layers": 3}}'), "config.json", "layers",
    ),
    "decoder config not an object": (
        lambda d: (d / "decoder_config.json").write_text("[]"), "decoder_config.json", "JSON object",
    ),
    "decoder config without model_type": (
        lambda d: (d / "decoder_config.json").write_text('{"n_embd": 64}'), "decoder_config.json", "model_type",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_model_file_is_named_with_what_is_wrong(saved_model, tmp_path, monkeypatch, case):
    from mmgen.errors import CheckpointError

    damage, name, fragment = DAMAGE[case]
    model_dir = _damaged_copy(saved_model, tmp_path, damage)

    def refuse(*args, **kwargs):
        raise AssertionError("loading a model tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    for load in (CaptionModel.from_pretrained, Captioner.from_pretrained):
        with pytest.raises(CheckpointError) as caught:
            load(model_dir)
        message = str(caught.value)
        assert str(model_dir / name) in message and fragment in message, message
        assert isinstance(caught.value, ValueError) and "\n" not in message


def test_a_model_directory_without_its_tokenizer_names_what_is_missing(saved_model, tmp_path):
    model_dir = _damaged_copy(saved_model, tmp_path, lambda d: shutil.rmtree(d / "tokenizer"))
    for load in (CaptionModel.from_pretrained, Captioner.from_pretrained):
        with pytest.raises(FileNotFoundError) as caught:  # not a hub lookup of the local path as a repo id
            load(model_dir)
        assert str(model_dir / "tokenizer" / "tokenizer.json") in str(caught.value)
    (model_dir / "tokenizer").mkdir()  # there, but empty
    with pytest.raises(FileNotFoundError, match=r"tokenizer: no tokenizer\.json"):
        CaptionModel.from_pretrained(model_dir)


@pytest.mark.parametrize("command", ["caption", "evaluate"])
def test_the_cli_prints_a_load_error_as_one_line(saved_model, tmp_path, image_files, capsys, command):
    from mmgen.commands.cli import main

    truncated = _damaged_copy(saved_model, tmp_path / "a", lambda d: _truncate(d / "model.safetensors"))
    no_tokenizer = _damaged_copy(saved_model, tmp_path / "b", lambda d: shutil.rmtree(d / "tokenizer"))
    refs = {  # a readable --data file, so that the model is what fails to load
        "images": [{"id": 1, "file_name": str(image_files[0])}],
        "annotations": [{"id": 1, "image_id": 1, "caption": "a red circle"}],
    }
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    for model_dir, names in ((truncated, "model.safetensors"), (no_tokenizer, "tokenizer.json")):
        if command == "caption":
            argv = ["caption", str(image_files[0]), "--model", str(model_dir), "--device", "cpu"]
        else:
            argv = ["evaluate", "--model", str(model_dir), "--data", str(tmp_path / "refs.json"), "--device", "cpu"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mmgen {command}: ") and err.count("\n") == 1 and names in err, err


def _nan_weights(model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    name = next(k for k, t in tensors.items() if t.is_floating_point() and "decoder" in k)
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def test_nan_weights_are_refused_at_load_not_captioned_as_empty_strings(saved_model, tmp_path, image_files, capsys):
    from mmgen.commands.cli import main
    from mmgen.errors import CheckpointError

    model_dir = _damaged_copy(saved_model, tmp_path, _nan_weights)
    for load in (CaptionModel.from_pretrained, Captioner.from_pretrained):
        with pytest.raises(CheckpointError, match=r"model.safetensors: 1 weight tensor\(s\) hold NaN or infinite"):
            load(model_dir)
    for extra in ([], ["--quantize", "int8"]):
        assert main(["caption", str(image_files[0]), "--model", str(model_dir), "--device", "cpu", *extra]) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and "hold NaN or infinite values" in err


def test_tensors_that_are_not_images_are_refused_and_integer_pixels_are_pixels(captioner, image_files):
    cfg = captioner.model.data_config
    raw = build_transform(cfg, uint8=True)(decode_image(image_files[0]))  # uint8 (3, H, W)
    expected = captioner.caption(image_files[0])
    for dtype in (torch.int16, torch.int32, torch.int64):  # integer pixels in 0..255: the same image
        assert captioner.caption(raw.to(dtype)) == expected
    normalised = build_transform(cfg)(decode_image(image_files[0]))
    refused = {
        "a torch.bool tensor is not an image": raw > 127,
        r"torch.int64 tensor with values -1..255, outside 0..255": torch.cat(
            [raw[:, :1].long() * 0 - 1, raw[:, 1:]], 1
        ),
        r"torch.int32 tensor with values 0..256": raw.int() + (raw == 255).int(),
        "tensor holds NaN or infinite values": normalised.clone().index_fill_(1, torch.tensor([0]), float("nan")),
        "far outside the normalised range": raw.float(),  # pixels in 0..255 given as float
        r"tensor of shape \(3, 8, 8\)": raw[:, :8, :8],
        "a torch.complex64 tensor": normalised.to(torch.complex64),
    }
    for message, tensor in refused.items():
        with pytest.raises(BadImageError, match=message):
            captioner.caption(tensor)
    results = list(captioner.iter_captions([raw.float(), image_files[0]], skip_errors=True))
    assert results[0].error and "far outside" in results[0].error and results[1].caption == expected[0]


def test_captions_longer_than_the_decoders_positions_are_refused_at_the_exact_limit(captioner, image_files):
    """The limit the check draws is where the decoder itself breaks: one token more and the search, run without the
    check, fails with an index error (the reference); at the limit it runs."""
    model = captioner.model
    room = model.max_positions - model.num_prefix_tokens - len(model.start_ids) + 1  # longest caption that fits
    pixels = captioner.preprocess(image_files[0])[None]
    for n, fits in ((room, True), (room + 1, False)):
        gen = captioner.resolve_generation(num_beams=1, max_new_tokens=n, min_new_tokens=n)
        try:
            model.search(model.prompt_embeds(pixels), gen)  # the decoder alone, without the check
            ran = True
        except IndexError:
            ran = False
        assert ran == fits
        if fits:
            assert len(captioner.caption(image_files[0], num_beams=1, max_new_tokens=n, min_new_tokens=n)) == 1
        else:
            with pytest.raises(ConfigError, match=f"generation.max_new_tokens: {n} new tokens after"):
                captioner.caption(image_files[0], num_beams=1, max_new_tokens=n)
    words = " ".join(["circle"] * room)  # a prompt alone as long as the room
    with pytest.raises(ConfigError, match="the prompt alone is too long"):
        captioner.caption(image_files[0], prompt=words)
