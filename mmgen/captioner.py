"""Captioner: caption images with a saved model.

>>> from mmgen import Captioner
>>> captioner = Captioner.from_pretrained("runs/coco/final")
>>> captioner.caption(["cat.jpg", "dog.png"], num_beams=5)
['a cat sitting on a couch', 'a dog running on the beach']

Images may be paths, http(s) URLs, encoded bytes, PIL images, numpy arrays (HWC uint8 RGB) or tensors already
preprocessed for the encoder; they are decoded safely (RGB, EXIF orientation, pixel limit), preprocessed with
the saved encoder's timm data config and captioned in batches.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from PIL import Image

from mmgen.config import GenerationConfig

if TYPE_CHECKING:
    import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

ImageInput = Union[str, os.PathLike, bytes, Image.Image, "np.ndarray", torch.Tensor]
"""A path or http(s) URL, the bytes of an image file, a PIL image, a numpy array ``(H, W, 3)`` uint8 RGB (``(H, W)``
grey, ``(H, W, 4)`` RGBA; ``(N, H, W, 3)``: N images), or a preprocessed tensor (3, H, W) / batch (B, 3, H, W)."""


@dataclass
class CaptionResult:
    """The captions of one input image.

    Attributes:
        source: The path, or ``<image i>`` for an in-memory image (i: its position in the input).
        captions: ``num_return_sequences`` captions, best first (empty when ``error`` is set).
        scores: Their sequence scores.
        error: Why the image could not be captioned (only with ``skip_errors=True``), else None.
        truncated: Per caption: it stopped at ``max_new_tokens`` without its end-of-sequence token.
    """

    source: str
    captions: list[str]
    scores: list[float]
    error: str | None = None
    truncated: list[bool] = field(default_factory=list)

    @property
    def caption(self) -> str | None:
        """The best caption (None for a failed image)."""
        return self.captions[0] if self.captions else None


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand directories to the image files directly inside them (sorted by name); files are kept as given."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            out.append(p)
    return out


def _flatten(images: ImageInput | Sequence[ImageInput]) -> list[tuple[str, Any]]:
    """(source name, image) per image; a batched tensor or array counts as its B images."""
    array = type(images).__module__ == "numpy" and hasattr(images, "ndim")
    single = isinstance(images, (str, os.PathLike, bytes, bytearray, torch.Tensor, Image.Image)) or array
    items: list[tuple[str, Any]] = []
    for x in [images] if single else list(images):
        batched = isinstance(x, torch.Tensor) or (type(x).__module__ == "numpy" and hasattr(x, "ndim"))
        if batched and x.ndim == 4:
            items += [(f"<image {len(items) + i}>", t) for i, t in enumerate(x)]
        elif isinstance(x, (str, os.PathLike)):
            items.append((str(x), x))
        else:
            items.append((f"<image {len(items)}>", x))
    return items


class Captioner:
    """Captions images with a :class:`~mmgen.models.CaptionModel`.

    Args:
        model: The model (kept in eval mode on its current device).
        generation: Default generation settings (default: those saved with the model).
        quantize: ``"int8"``: quantise the encoder's and decoder's linear layers for CPU inference
            (:mod:`mmgen.quantize`; the model is changed in place); None keeps the weights as they are.
    """

    def __init__(self, model, generation: GenerationConfig | None = None, quantize: str | None = None) -> None:
        from mmgen.data.transforms import build_transform

        if quantize is not None:
            from mmgen.quantize import QUANTIZE_CHOICES, quantize_int8

            if quantize not in QUANTIZE_CHOICES:
                raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES} or None, got {quantize!r}")
            quantize_int8(model)
        self.model = model.eval()
        self.generation = generation or model.generation_config
        self.transform = build_transform(model.data_config, uint8=True)  # the model normalises
        self.url_timeout = 10.0
        """Seconds a URL image's download may wait for its server (to connect, and between reads)."""
        self.max_download_bytes = 20 * 2**20
        """The largest image a URL may bring (20 MiB); larger ones fail as a bad image."""

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        quantize: str | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
    ) -> Captioner:
        """Load a model directory written by ``CaptionModel.save_pretrained`` (or by training), or a Hugging Face
        Hub repo id (``owner/name``) holding one (downloaded through the Hugging Face cache, see :mod:`mmgen.hub`).

        Args:
            path: The model directory, or a Hub repo id.
            device: Where to run (default: CUDA when available, else the CPU).
            dtype: Weights dtype, e.g. ``torch.bfloat16`` or ``"bfloat16"`` (default: as saved).
            quantize: ``"int8"`` for int8 CPU inference (needs ``device="cpu"``; default device then is the CPU).
            revision: The Hub branch, tag or commit (default: ``main``).
            cache_dir: The Hugging Face cache to use (default: ``HF_HUB_CACHE``).
            token: A Hub token for private repos (default: the saved login, or ``HF_TOKEN``).

        Raises:
            mmgen.errors.MissingCheckpointFileError: The directory, a file or the ``tokenizer/`` it needs is
                absent (also a ``FileNotFoundError``); the message names what is missing.
            mmgen.errors.CheckpointError: A file is corrupt, truncated, pickled or does not fit the others; the
                message names the file.
        """
        from mmgen.models import CaptionModel

        if device is None:
            device = "cuda" if torch.cuda.is_available() and quantize is None else "cpu"
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        hub = {"revision": revision, "cache_dir": cache_dir, "token": token}
        return cls(CaptionModel.from_pretrained(path, device=device, dtype=dtype, **hub), quantize=quantize)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Save the model with this captioner's default generation settings (and the model card) into ``path``, as
        ``CaptionModel.save_pretrained`` does; ``Captioner.from_pretrained(path)`` loads it back.

        Raises:
            ValueError: The model is int8-quantised (save the fp32 model; quantise when loading).
        """
        from mmgen.quantize import is_quantized

        if is_quantized(self.model):
            raise ValueError("an int8-quantised model is not saved: save the fp32 one and load it with quantize='int8'")
        self.model.save_pretrained(path, generation=self.generation)

    def push_to_hub(self, repo_id: str, **options: Any) -> str:
        """Upload the model with this captioner's default generation settings to the Hub repo ``repo_id``;
        ``options``: ``private``, ``revision``, ``commit_message``, ``token``, ``create_pr`` (see
        :func:`mmgen.hub.push_model`). Returns the commit's URL."""
        from mmgen.hub import push_model
        from mmgen.quantize import is_quantized

        if is_quantized(self.model):
            raise ValueError("an int8-quantised model is not uploaded: push the fp32 one")
        return push_model(self.model, repo_id, generation=self.generation, **options)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def resolve_generation(self, **overrides: Any) -> GenerationConfig:
        """The default generation settings with ``overrides`` applied (validated)."""
        valid = {f.name for f in dataclasses.fields(GenerationConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown generation setting(s) {unknown}; valid: {sorted(valid)}")
        return dataclasses.replace(self.generation, **overrides)

    def caption(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int = 32,
        prompt: str | None = None,
        **generation: Any,
    ) -> list[str]:
        """The best caption of each image.

        Args:
            images: One image or a list (paths, URLs, bytes, PIL images, numpy arrays, preprocessed tensors: see
                :data:`ImageInput`); a ``(B, 3, H, W)`` tensor or ``(N, H, W, 3)`` array counts as its images.
            batch_size: Images per forward pass.
            prompt: Text the captions continue (``"a photo of"``), in place of the prompt the model was
                trained with (``model.prompt``; ``""``: none); None keeps the model's. Not repeated in
                the captions.
            **generation: ``GenerationConfig`` overrides (``num_beams=5``, ``max_new_tokens=30``,
                ``bad_words=["red"]``, ...).

        Returns:
            One caption per image, in input order.

        Raises:
            mmgen.data.BadImageError: an image could not be decoded (the message names it).
        """
        return [r.caption for r in self.iter_captions(images, batch_size, prompt=prompt, **generation)]

    def caption_with_scores(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int = 32,
        prompt: str | None = None,
        **generation: Any,
    ) -> list[list[tuple[str, float]]]:
        """The ``num_return_sequences`` best ``(caption, score)`` pairs of each image, best first.

        Several samples (``do_sample=True`` with ``num_return_sequences > 1``) are drawn independently
        (``num_beams=1``) whatever ``num_beams`` the model was saved with; pass ``num_beams`` to beam-sample.
        """
        gen = self.resolve_generation(**generation)
        asked = "do_sample" in generation or "num_return_sequences" in generation
        if asked and gen.do_sample and gen.num_return_sequences > 1 and "num_beams" not in generation:
            generation = {**generation, "num_beams": 1}
        results = self.iter_captions(images, batch_size, prompt=prompt, **generation)
        return [list(zip(r.captions, r.scores)) for r in results]

    def iter_captions(
        self,
        images: ImageInput | Sequence[ImageInput],
        batch_size: int = 32,
        skip_errors: bool = False,
        prompt: str | None = None,
        **generation: Any,
    ) -> Iterator[CaptionResult]:
        """Caption images batch by batch, yielding results in input order as they are ready.

        Images are only decoded when their batch is assembled, so a long list of paths is never
        held in memory at once.

        Args:
            images: As for :meth:`caption`.
            batch_size: Images per forward pass.
            skip_errors: Yield a result with ``error`` set for an image that cannot be decoded,
                instead of raising.
            prompt: As for :meth:`caption`.
            **generation: ``GenerationConfig`` overrides.
        """
        from mmgen.data.images import BadImageError

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        gen = self.resolve_generation(**generation)
        self.model.check_generation(gen, prompt)  # captions that cannot fit the decoder fail before any image is read
        rng = None
        if gen.do_sample and gen.seed is not None:  # one stream for the whole call
            rng = torch.Generator(device=self.device).manual_seed(gen.seed)
        pending: list[tuple[str, torch.Tensor | str]] = []  # (source, pixels or error), input order

        def flush() -> Iterator[CaptionResult]:
            pixels = [p for _, p in pending if isinstance(p, torch.Tensor)]
            out = None
            if pixels:
                out = self.model.generate(self.batch_pixels(pixels), gen, generator=rng, prompt=prompt)
            done = 0
            for source, p in pending:
                if isinstance(p, str):
                    yield CaptionResult(source, [], [], error=p)
                else:
                    yield CaptionResult(source, out.texts[done], out.scores[done], truncated=out.truncated[done])
                    done += 1
            pending.clear()

        ready = 0
        for source, image in _flatten(images):
            try:
                pending.append((source, self.preprocess(image, source)))
                ready += 1
            except BadImageError as e:
                if not skip_errors:
                    raise
                pending.append((source, e.reason))
            if ready == batch_size:
                yield from flush()
                ready = 0
        if pending:
            yield from flush()

    def preprocess(self, image: Any, source: str | None = None) -> torch.Tensor:
        """One image as the encoder's ``(3, H, W)`` input, still in 0..255 (the model normalises it).

        Paths, http(s) URLs (downloaded within :attr:`url_timeout` and :attr:`max_download_bytes`), bytes, PIL
        images and numpy arrays (uint8 RGB, see :data:`ImageInput`) are decoded (RGB, EXIF orientation, the same
        pixel limit) and resized / cropped with the model's data config into a uint8 tensor. A uint8 tensor
        ``(3, H, W)`` at the input size is taken as it is (the model normalises it with its data config's mean
        and std, see :meth:`~mmgen.models.caption_model.CaptionModel.normalize_pixels`); a float tensor is taken
        as already normalised (:func:`~mmgen.data.transforms.encoder_pixels` says which tensors are refused).

        Raises:
            mmgen.data.BadImageError: the image cannot be decoded, or a tensor is not an image of either kind
                (wrong shape, NaN, integers outside 0..255, ...).
        """
        from mmgen.data.downloads import array_to_image, fetch_url, is_url
        from mmgen.data.images import decode_image
        from mmgen.data.transforms import encoder_pixels

        source = source or "<image>"
        if is_url(image):
            image = fetch_url(image, self.url_timeout, self.max_download_bytes)
        elif type(image).__module__ == "numpy":
            image = array_to_image(image, source)
        if not isinstance(image, torch.Tensor):
            return self.transform(decode_image(image, name=source))
        return encoder_pixels(image, self.model.data_config, source)

    def batch_pixels(self, pixels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack :meth:`preprocess` outputs into one ``(B, 3, H, W)`` batch for the model: uint8 when every
        image is (4x less to move to the device), else normalised float (the model's own normalisation)."""
        if all(p.dtype == torch.uint8 for p in pixels) or all(p.is_floating_point() for p in pixels):
            return torch.stack(list(pixels))
        return torch.cat([self.model.normalize_pixels(p[None]) for p in pixels])
