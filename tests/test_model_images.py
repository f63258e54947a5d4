"""The model owns the image: uint8 or normalised float pixels in, normalised once with the encoder's data
config; ``CaptionModel.generate`` is the one captioning entry point (Captioner, evaluation, serving)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mmgen.captioner import Captioner
from mmgen.config import GenerationConfig
from mmgen.data.records import Record
from mmgen.evaluation.evaluate import evaluate_model
from mmgen.models import CaptionModel, tiny_model_config
from mmgen.tokenizer import train_caption_tokenizer

CAPTIONS = ["a red circle left of a blue square", "two green stars", "a black dog near a tree"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = CaptionModel(tiny_model_config(), train_caption_tokenizer(CAPTIONS, "wordlevel", 100)).eval()
    model.generation_config = GenerationConfig(num_beams=2, max_new_tokens=6)
    return model


def _pixels(model, b=3, seed=0):
    """uint8 images at the encoder's input size, and the same normalised by hand (timm's float transform)."""
    h, w = model.data_config["input_size"][1:]
    u8 = torch.randint(0, 256, (b, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    mean = torch.tensor(model.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.data_config["std"]).view(1, 3, 1, 1)
    return u8, (u8.float() / 255 - mean) / std


def test_uint8_and_float_pixels_give_the_same_prefix_and_float_is_not_normalised_again(model):
    u8, ref = _pixels(model)
    with torch.no_grad():
        by_hand = model.projector(model.encoder(ref))  # the parts called directly on normalised pixels
        torch.testing.assert_close(model.encode_images(ref), by_hand, rtol=0, atol=0)  # float: taken as is
        torch.testing.assert_close(model.encode_images(u8), by_hand, rtol=1e-5, atol=1e-5)  # uint8: normalised
        assert not torch.allclose(model.encode_images(u8.float()), by_hand, atol=1e-2)  # 0..255 floats are not


def test_the_training_loss_is_the_same_from_uint8_and_from_normalised_pixels(model):
    u8, ref = _pixels(model, b=2, seed=1)
    tok = model.tokenizer
    ids = [[tok.bos_token_id, *tok(c, add_special_tokens=False)["input_ids"], tok.eos_token_id] for c in CAPTIONS[:2]]
    t = max(map(len, ids))
    input_ids = torch.tensor([s + [tok.pad_token_id] * (t - len(s)) for s in ids])
    labels = torch.tensor([[-100] + s[1:] + [-100] * (t - len(s)) for s in ids])
    with torch.no_grad():
        a = model(pixel_values=u8, input_ids=input_ids, labels=labels).loss
        b = model(pixel_values=ref, input_ids=input_ids, labels=labels).loss
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_generate_is_what_the_captioner_and_evaluation_call(model, tmp_path, monkeypatch):
    u8, ref = _pixels(model, b=3, seed=2)
    out = model.generate(u8)
    assert out.texts == model.generate(ref).texts  # uint8 or float, the same captions
    calls = []
    original = CaptionModel.generate

    def spy(self, *args, **kwargs):
        calls.append(args[0].shape[0] if args and args[0] is not None else None)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CaptionModel, "generate", spy)
    files = []
    for i in range(3):
        Image.fromarray(u8[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    captioner = Captioner(model)
    expected = original(model, torch.stack([captioner.preprocess(f) for f in files])).best  # resized, cropped
    captions = captioner.caption(files)
    assert calls == [3] and captions == expected
    records = [Record(image=str(f), captions=["a caption"], image_id=i) for i, f in enumerate(files)]
    options = {"batch_size": 2, "progress": False, "metrics": ["Bleu"], "tokenizer": "python"}
    result = evaluate_model(model, records, model.generation_config, **options)
    assert calls == [3, 2, 1] and [result.captions[i] for i in range(3)] == expected
