"""CaptionModel: timm encoder -> projector -> causal LM over ``[image prefix ; token embeddings]``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from mmgen.atomic_files import atomic_path, atomic_write_text
from mmgen.config import ConfigError, GenerationConfig, ModelConfig, to_dict
from mmgen.distributed import is_sharded
from mmgen.generation import DecodeCache, search
from mmgen.generation.captions import GeneratedCaptions, bad_words_ids, captions_of
from mmgen.models.decoder import build_decoder, checkpointing_enabled
from mmgen.models.encoder import Encoder, normalize_on_device
from mmgen.models.files import (
    CONFIG_NAME,
    DECODER_CONFIG_NAME,
    TOKENIZER_DIR,
    WEIGHTS_NAME,
    jsonable,
    load_saved_tokenizer,
    load_weights,
    read_saved_configs,
    require_finite_weights,
)
from mmgen.models.lm_loss import IGNORE_INDEX, caption_loss, linear_cross_entropy
from mmgen.models.positions import check_generation_length, check_training_length, max_positions
from mmgen.models.projector import build_projector
from mmgen.tokenizer import ensure_special_tokens, load_tokenizer, start_ids
from mmgen.transformers_glue import (
    CAUSAL_SDPA,
    PREFIX,
    UNPADDED,
    base_model,
    cache_argument,
    forward_params,
    returned_cache,
)

_LOGIT_SHAPING = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""transformers config fields of decoders whose logits are more than ``lm_head(hidden)`` (Gemma-2's soft cap,
Cohere's scale, Granite's divisor): a fused loss would compute other numbers, so it refuses them."""


@dataclass
class CaptionOutput:
    """``loss`` (mean cross-entropy over caption tokens, or None) and ``logits`` (B, T, V).

    ``logits[:, t]`` is the prediction for ``input_ids[:, t + 1]`` (transformers convention). ``logits`` is None
    when a fused loss (``loss_impl`` other than 'plain') computed the loss without them.
    """

    loss: torch.Tensor | None
    logits: torch.Tensor | None


class CaptionModel(nn.Module):
    """Image captioner built from its three parts; no hub call happens unless the config asks for one.

    Args:
        config: Model configuration.
        tokenizer: The tokenizer (its length sizes a random-init decoder; special ids come from it).
        load_weights: Load hub / local weights named by the config (false when a checkpoint follows).
        decoder_hf_config: A saved transformers config to rebuild the decoder offline.
    """

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: PreTrainedTokenizerBase,
        load_weights: bool = True,
        decoder_hf_config=None,
    ):
        super().__init__()
        self.config = config
        self.tokenizer = ensure_special_tokens(tokenizer)
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        self.encoder = Encoder(config.encoder, load_weights=load_weights)
        self.decoder = build_decoder(config.decoder, len(tokenizer), special, hf_config=decoder_hf_config)
        d_lm = self.decoder.get_input_embeddings().embedding_dim
        grid = None if config.encoder.keep_prefix_tokens else self.encoder.grid_size  # patch tokens only
        self.projector = build_projector(config.projector, self.encoder.embed_dim, d_lm, grid)
        self.register_buffer("start_ids", torch.tensor(start_ids(tokenizer, config.prompt)), persistent=False)
        self._check_positions()
        self._logits_to_keep = "logits_to_keep" in forward_params(self.decoder)
        self._causal_sdpa = base_model(self.decoder).config._attn_implementation == CAUSAL_SDPA
        if config.prefix_attention == "full" and not self._causal_sdpa:
            raise ConfigError(
                "model.prefix_attention: full needs mmgen's SDPA attention, but the decoder uses "
                f"{base_model(self.decoder).config._attn_implementation!r}: set model.decoder.attn_implementation: sdpa"
            )
        self.generation_config = GenerationConfig()
        self.decode_cache = DecodeCache()  # static-cache sessions and padded LM heads kept between searches
        self.card: str | None = None  # the model card (README.md) it was loaded with, written again when saved

    @property
    def max_positions(self) -> int | None:
        """The decoder's positions (:func:`mmgen.models.positions.max_positions`); None when it names none."""
        return max_positions(base_model(self.decoder).config)

    def _check_positions(self) -> None:
        """Fail at build time when image prefix + BOS/prompt + caption exceed the decoder's positions."""
        prefix, start = self.num_prefix_tokens, len(self.start_ids)
        check_training_length(self.max_positions, prefix, start, self.config.max_caption_tokens)

    # -- properties -----------------------------------------------------------------------------
    @property
    def data_config(self) -> dict:
        """timm preprocessing config of the encoder (input size, mean, std, interpolation, crop)."""
        return self.encoder.data_config

    @property
    def num_prefix_tokens(self) -> int:
        """Image tokens the decoder sees per image (N')."""
        return self.projector.num_tokens(self.encoder.num_tokens)

    @property
    def full_prefix(self) -> int:
        """Leading decoder positions that attend bidirectionally: the image prefix with
        ``model.prefix_attention: full``, else 0."""
        return self.num_prefix_tokens if self.config.prefix_attention == "full" else 0

    @property
    def hidden_size(self) -> int:
        return self.decoder.get_input_embeddings().embedding_dim

    # -- building blocks --------------------------------------------------------------------------
    def normalize_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` as the encoder takes them, on its device and in its dtype: uint8 in 0..255 is
        normalised with the encoder's data config (mean, std); float images are taken as normalised already.
        The one place images are normalised (the loaders hand over uint8, 4x less to copy)."""
        param = next(self.encoder.parameters())
        mean, std = self.data_config["mean"], self.data_config["std"]
        return normalize_on_device(pixel_values.to(param.device), mean, std, dtype=param.dtype)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (B, N, C) of uint8 or normalised float images (see :meth:`normalize_pixels`)."""
        pixels = self.normalize_pixels(pixel_values)
        if self.encoder.fully_frozen:
            with torch.no_grad():
                return self.encoder(pixels)  # (B, N, C)
        return self.encoder(pixels)  # (B, N, C)

    def encode_images(self, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None):
        """Image prefix embeddings (B, N', D) of uint8 or normalised float images; ``features`` (B, N, C) skips
        the encoder (feature cache)."""
        if features is None:
            features = self.image_features(pixel_values)  # (B, N, C)
        return self.projector(features.to(self.projector_dtype))  # (B, N', D)

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Decoder input embeddings of token ids (..., D)."""
        return self.decoder.get_input_embeddings()(ids)

    def start_embeds(self, batch: int) -> torch.Tensor:
        """Embeddings of BOS + prompt, (B, P, D): what follows the image prefix at generation."""
        return self.embed_tokens(self.start_ids).unsqueeze(0).expand(batch, -1, -1)

    # -- generation ---------------------------------------------------------------------------------
    def check_generation(
        self, gen: GenerationConfig | None = None, prompt: str | None = None, key: str = "generation.max_new_tokens"
    ) -> None:
        """Refuse settings ``gen`` (default: :attr:`generation_config`) whose captions after ``prompt`` (None: the
        model's own) cannot fit the decoder's positions (:mod:`mmgen.models.positions`): a ``ConfigError`` naming
        ``key`` (``eval.generation.max_new_tokens`` in a training config), each part's count and the positions."""
        gen = gen or self.generation_config
        start = len(self.start_ids) if prompt is None else len(start_ids(self.tokenizer, prompt))
        check_generation_length(
            self.max_positions, self.num_prefix_tokens, start, gen.max_new_tokens, prompt is not None, key
        )

    def prompt_embeds(
        self, pixel_values: torch.Tensor | None = None, features: torch.Tensor | None = None, prompt: str | None = None
    ) -> torch.Tensor:
        """The decoder's prompt for each image, ``(B, N' + P, D)``: image prefix, then BOS and the text prompt.

        Args:
            pixel_values: Images ``(B, 3, H, W)``, uint8 or normalised float (see :meth:`normalize_pixels`).
            features: Encoder tokens ``(B, N, C)`` instead of images (frozen-encoder feature cache).
            prompt: Text after BOS in place of the model's own ``prompt`` (``""``: none); None keeps it.
        """
        prefix = self.encode_images(pixel_values, features)  # (B, N', D)
        if prompt is None:
            start = self.start_embeds(prefix.shape[0])  # (B, P, D)
        else:
            ids = torch.tensor(start_ids(self.tokenizer, prompt), device=self.start_ids.device)  # (P,)
            start = self.embed_tokens(ids).unsqueeze(0).expand(prefix.shape[0], -1, -1)  # (B, P, D)
        return torch.cat([prefix.to(start.dtype), start], dim=1)  # (B, N'+P, D)

    def search(self, prompt_embeds: torch.Tensor, gen: GenerationConfig | None = None, **options):
        """Token ids continuing ``prompt_embeds`` (:func:`mmgen.generation.search` with this model's decoder,
        special tokens, prefix attention, banned words and :attr:`decode_cache`); ``options``: ``generator``,
        ``static_cache``, ``cuda_graph``. Returns a :class:`~mmgen.generation.SearchOutput`."""
        gen, tok = gen or self.generation_config, self.tokenizer
        banned = bad_words_ids(tok, gen.bad_words) if gen.bad_words else None
        special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
        return search(
            self.decoder, prompt_embeds, gen, **special, full_prefix=self.full_prefix, bad_words_ids=banned,
            cache=self.decode_cache, **options,
        )  # fmt: skip

    @torch.inference_mode()
    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        gen: GenerationConfig | None = None,
        *,
        features: torch.Tensor | None = None,
        prompt: str | None = None,
        **options,
    ) -> GeneratedCaptions:
        """Captions of a batch of images: what the Captioner, evaluation and serving call.

        Args:
            pixel_values: Images ``(B, 3, H, W)``, uint8 or normalised float (see :meth:`normalize_pixels`).
            gen: Generation settings (default: :attr:`generation_config`, the ones saved with the model).
            features: Encoder tokens ``(B, N, C)`` in place of ``pixel_values``.
            prompt: Text the captions continue in place of the model's own prompt (not repeated in them).
            **options: ``generator``, ``static_cache``, ``cuda_graph`` (see :func:`mmgen.generation.search`).

        Returns:
            :class:`~mmgen.generation.GeneratedCaptions`: texts and scores per image, best first.
        """
        self.check_generation(gen, prompt)  # an index error deep in the decoder otherwise (a device assert on CUDA)
        out = self.search(self.prompt_embeds(pixel_values, features, prompt), gen, **options)
        return captions_of(self.tokenizer, out)

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        features: torch.Tensor | None = None,
        loss_impl: str = "plain",
        label_smoothing: float = 0.0,
    ) -> CaptionOutput:
        """Caption loss and logits.

        Args:
            pixel_values: Images (B, 3, H, W) (or ``features`` from the frozen encoder).
            input_ids: (B, T): BOS, prompt, caption, EOS, right padding (``mmgen.data.collate``); or K captions
                per image, (B*K, T), the K of an image in consecutive rows.
            attention_mask: (B, T), 1 on real tokens; None for right-padded batches (the causal mask suffices).
            labels: (B, T), -100 on BOS/prompt/padding; ``labels[:, t]`` is the target at position t.
            features: Precomputed encoder tokens (B, N, C).
            loss_impl: With ``labels``: 'plain' (logits, then cross-entropy) or one of 'chunked', 'liger', 'cce'
                (the LM head and the loss together from the final hidden states, see :mod:`mmgen.models.lm_loss`;
                the same loss, and ``logits`` is None).
            label_smoothing: Epsilon of the loss's label smoothing (``train.label_smoothing``; 0: none).

        Returns:
            ``CaptionOutput``; ``logits`` (B, T, V) cover the text positions only.
        """
        prefix = self.encode_images(pixel_values, features)  # (B, N', D)
        fused = labels is not None and loss_impl != "plain"
        if input_ids.shape[0] != prefix.shape[0]:
            out = self._shared_prefix_pass(prefix, input_ids, attention_mask, fused)  # (B*K, T, V or D)
        else:
            out = self._text_pass(prefix, input_ids, attention_mask, fused)  # (B, T, V or D)
        if fused:
            return CaptionOutput(loss=self.head_loss(out, labels, loss_impl, label_smoothing), logits=None)
        return CaptionOutput(loss=None if labels is None else caption_loss(out, labels, label_smoothing), logits=out)

    def _decoder_call(self, hidden: bool, keep: int | None, **kwargs):
        """One decoder call; its output has ``logits`` of the last ``keep`` positions (all with None), or with
        ``hidden`` the decoder's body runs alone and the output has ``last_hidden_state`` and no logits."""
        if hidden:
            return base_model(self.decoder).base_model(**kwargs)
        keep = {"logits_to_keep": keep} if keep is not None and self._logits_to_keep else {}
        return self.decoder(**kwargs, **keep)

    @staticmethod
    def _text_positions(out, hidden: bool, t: int) -> torch.Tensor:
        """The last ``t`` positions of a call's logits (.., T, V) or final hidden states (.., T, D)."""
        return (out.last_hidden_state if hidden else out.logits)[:, -t:]

    def _text_pass(
        self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, hidden: bool
    ) -> torch.Tensor:
        """Logits (B, T, V), or final hidden states (B, T, D), of ``[prefix ; tokens]`` at the text positions."""
        b, n = prefix.shape[:2]
        t = input_ids.shape[1]
        tokens = self.embed_tokens(input_ids)  # (B, T, D)
        embeds = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)  # (B, N'+T, D)
        kwargs = {}
        mask = None  # no mask: causal attention alone (right padding never precedes a real token)
        if attention_mask is not None:
            mask = torch.cat([attention_mask.new_ones(b, n), attention_mask], dim=1)  # (B, N'+T)
        elif self._causal_sdpa:
            kwargs[UNPADDED] = True  # is_causal SDPA even under torch.compile (see mmgen.transformers_glue)
        if self.full_prefix:
            kwargs[PREFIX] = self.full_prefix  # the image tokens see each other both ways
        out = self._decoder_call(hidden, t, inputs_embeds=embeds, attention_mask=mask, use_cache=False, **kwargs)
        return self._text_positions(out, hidden, t)  # position n+i predicts input_ids[:, i+1]

    def _shared_prefix_pass(
        self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, hidden: bool
    ) -> torch.Tensor:
        """Logits (or final hidden states) of K captions per image that share one pass of the decoder over the
        image prefix.

        The prefix runs once per image and its keys and values are repeated for the image's K captions
        (consecutive rows of ``input_ids``), which then run after it like decoding steps: the same
        attention as K separate ``[prefix ; caption]`` sequences, with the prefix computed once.
        """
        b, n = prefix.shape[:2]
        rows, t = input_ids.shape
        if rows % b:
            raise ValueError(f"{rows} captions for {b} images: input_ids must hold K captions per image")
        k = rows // b
        extra = {PREFIX: self.full_prefix} if self.full_prefix else {}
        tokens = self.embed_tokens(input_ids)  # (B*K, T, D)
        mask = None if attention_mask is None else F.pad(attention_mask, (n, 0), value=1)  # (B*K, N'+T)
        if checkpointing_enabled(base_model(self.decoder)) or is_sharded(self):
            # a checkpointed decoder cannot keep a cache, and FSDP frees the parameters that the second call's
            # backward would need: the K copies of the prefix run with their captions instead (same result)
            embeds = torch.cat([prefix.to(tokens.dtype).repeat_interleave(k, dim=0), tokens], dim=1)
            out = self._decoder_call(hidden, None, inputs_embeds=embeds, attention_mask=mask, use_cache=False, **extra)
            return self._text_positions(out, hidden, t)
        first = self._decoder_call(hidden, 1, inputs_embeds=prefix.to(tokens.dtype), use_cache=True, **extra)
        cache = returned_cache(first)
        cache.reorder_cache(torch.arange(b, device=prefix.device).repeat_interleave(k))  # (B*K) rows
        called = base_model(self.decoder).base_model if hidden else base_model(self.decoder)
        arg = cache_argument(forward_params(called))
        out = self._decoder_call(hidden, t, inputs_embeds=tokens, attention_mask=mask, use_cache=True, **{arg: cache})
        return self._text_positions(out, hidden, t)  # (B*K, T, V or D)

    def head_loss(self, hidden: torch.Tensor, labels: torch.Tensor, impl: str, smoothing: float = 0.0) -> torch.Tensor:
        """The caption loss from the final hidden states (B, T, D) at the text positions: the LM head and the
        cross-entropy together (:func:`mmgen.models.lm_loss.linear_cross_entropy`), the same mean over the
        labelled positions as :func:`caption_loss` of the logits."""
        weight, bias = self.fused_head(impl)
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T): the target of position t
        return linear_cross_entropy(hidden, weight, bias, targets, impl, label_smoothing=smoothing)

    def fused_head(self, impl: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head's weight (V, D) and bias for a fused loss.

        Raises:
            ValueError: The head does more than a linear map (soft-capped or scaled logits, a wrapped or
                quantised head): the message names ``train.loss_impl``.
        """
        hf = base_model(self.decoder)
        head = hf.get_output_embeddings()
        shaping = [k for k in _LOGIT_SHAPING if getattr(hf.config, k, None) not in (None, 1, 1.0)]
        if type(head) is not nn.Linear or shaping:
            what = f"its config sets {', '.join(shaping)}" if shaping else f"its head is a {type(head).__name__}"
            raise ValueError(
                f"train.loss_impl={impl}: the decoder's logits are not a plain linear map of its hidden states "
                f"({what}); use train.loss_impl=plain"
            )
        return head.weight, head.bias

    # -- training helpers -------------------------------------------------------------------------
    def train(self, mode: bool = True) -> CaptionModel:
        """Like ``nn.Module.train``, but modules whose parameters are all frozen stay in eval mode."""
        super().train(mode)
        if mode:
            for m in self.modules():
                params = list(m.parameters())
                if params and not any(p.requires_grad for p in params):
                    m.eval()
        return self

    def parameter_summary(self) -> dict[str, dict[str, int]]:
        """Trainable and total parameters per part (encoder / projector / decoder / all)."""
        out = {}
        for name, part in (("encoder", self.encoder), ("projector", self.projector), ("decoder", self.decoder)):
            ps = {id(p): p for p in part.parameters()}.values()  # tied weights counted once
            out[name] = {
                "trainable": sum(p.numel() for p in ps if p.requires_grad),
                "total": sum(p.numel() for p in ps),
            }
        out["all"] = {k: sum(v[k] for v in out.values()) for k in ("trainable", "total")}
        return out

    # -- persistence -----------------------------------------------------------------------------
    def save_pretrained(
        self, path: str | os.PathLike, generation: GenerationConfig | None = None, card: str | None = None
    ) -> None:
        """Write ``config.json``, ``decoder_config.json``, ``model.safetensors``, ``tokenizer/`` and the model card
        ``README.md``: ``card``, else the card the model was loaded with (:attr:`card`), else one that describes the
        architecture and says the training was not recorded (:mod:`mmgen.model_card`).

        Every file is written under a temporary name and renamed, so a reader never sees half a file.
        """
        from safetensors.torch import save_model

        from mmgen.model_card import model_card, write_card

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": to_dict(self.config),
            "generation": to_dict(generation or self.generation_config),
            "data_config": jsonable(self.data_config),
        }
        atomic_write_text(path / CONFIG_NAME, json.dumps(meta, indent=2))
        atomic_write_text(path / DECODER_CONFIG_NAME, base_model(self.decoder).config.to_json_string())
        with atomic_path(path / WEIGHTS_NAME) as tmp:
            save_model(self, str(tmp), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(str(path / TOKENIZER_DIR))
        write_card(path, card or self.card or model_card(self, name=path.resolve().name).render())

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
    ) -> CaptionModel:
        """Load a directory written by ``save_pretrained``, or a Hub repo id (``owner/name``) holding one, fetched
        through the Hugging Face cache (:func:`mmgen.hub.resolve_model_dir`: ``revision``, ``cache_dir``, ``token``);
        safetensors only, nothing is unpickled. The model card (``README.md``), when there is one, is kept in
        :attr:`card` and written again by :meth:`save_pretrained`.

        Raises:
            mmgen.errors.MissingCheckpointFileError: The directory (or repo), or a file or the ``tokenizer/`` it needs,
                is absent (also a ``FileNotFoundError``).
            mmgen.errors.CheckpointError: A file is corrupt, truncated, pickled or inconsistent; the message
                names it.
        """
        from mmgen.hub import resolve_model_dir
        from mmgen.model_card import read_card

        path = resolve_model_dir(path, revision=revision, cache_dir=cache_dir, token=token)
        config, generation, hf_cfg = read_saved_configs(path)
        tokenizer = load_saved_tokenizer(path)
        model = cls(config, tokenizer, load_weights=False, decoder_hf_config=hf_cfg)
        load_weights(model, path / WEIGHTS_NAME)
        require_finite_weights(model, path / WEIGHTS_NAME)  # NaN weights would caption "" for every image
        if generation is not None:
            model.generation_config = generation
        model.card = read_card(path)
        model.eval()
        if dtype is not None:
            model.to(dtype)
        if device is not None:
            model.to(device)
        return model

    def push_to_hub(self, repo_id: str, **options) -> str:
        """Save the model (:meth:`save_pretrained`, card included) and upload it to the Hub repo ``repo_id`` in one
        commit; ``options``: ``private``, ``revision``, ``commit_message``, ``token``, ``create_pr``, ``generation``
        (:func:`mmgen.hub.push_model`). Returns the commit's URL."""
        from mmgen.hub import push_model

        return push_model(self, repo_id, **options)


def build_model(config: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> CaptionModel:
    """A ``CaptionModel`` from a config; a trained tokenizer (kind wordlevel/bpe) must be passed."""
    if tokenizer is None:
        if config.tokenizer.kind in ("wordlevel", "bpe"):
            raise ValueError(
                f"model.tokenizer.kind={config.tokenizer.kind} is trained on captions: pass the trained tokenizer"
            )
        tokenizer = load_tokenizer(config.tokenizer, config.decoder.name)
    return CaptionModel(config, tokenizer)
