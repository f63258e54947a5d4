"""The decoder's positions and what a caption may take of them.

The image tokens come first, then BOS and the prompt, then the caption. A decoder with a table of learnt
positions (GPT-2's ``n_positions``) cannot go past its end: past it, a CPU run fails with an index error deep in
the decoder and a CUDA run with a device-side assert. So the lengths are checked before any work: the training
captions (``model.max_caption_tokens``) when a model is built, and ``max_new_tokens`` with the prompt before any
image is captioned.
"""

from __future__ import annotations

from mmgen.config import ConfigError


def max_positions(hf_config) -> int | None:
    """A transformers config's positions (``max_position_embeddings`` / ``n_positions``); None when it names none."""
    return getattr(hf_config, "max_position_embeddings", None) or getattr(hf_config, "n_positions", None)


def check_training_length(limit: int | None, prefix: int, start: int, max_caption_tokens: int) -> None:
    """Refuse a model whose training sequence (image tokens + BOS/prompt + ``max_caption_tokens``) overruns
    ``limit``.

    Raises:
        ConfigError: Naming the parts and the keys that change them.
    """
    need = prefix + start + max_caption_tokens
    if limit is not None and need > limit:
        raise ConfigError(
            f"model.max_caption_tokens: the decoder has {limit} positions but a caption needs {need} (image prefix "
            f"{prefix} + BOS/prompt {start} + model.max_caption_tokens {max_caption_tokens}): raise "
            "model.decoder.config_overrides.n_positions (or max_position_embeddings), use a token-reducing projector "
            "(model.projector.kind=pool), or lower model.max_caption_tokens"
        )


def check_generation_length(
    limit: int | None, prefix: int, start: int, max_new_tokens: int, prompt: bool, key: str
) -> None:
    """Refuse a search whose captions cannot fit ``limit``: ``prefix`` image tokens, ``start`` tokens of BOS and the
    prompt (``prompt``: a prompt of the caller's, rather than the model's own), then ``max_new_tokens`` (the last
    token is never fed back, so it takes no position).

    Raises:
        ConfigError: Naming ``key``, the count of each part and the decoder's positions.
    """
    need = prefix + start + max_new_tokens - 1
    if limit is None or need <= limit:
        return
    room = limit - need + max_new_tokens
    fix = f"lower max_new_tokens to at most {room}" if room >= 1 else "the prompt alone is too long"
    raise ConfigError(
        f"{key}: {max_new_tokens} new tokens after {prefix} image tokens and {start} token(s) of BOS and "
        f"{'the' if prompt else 'the model' + chr(39) + 's'} prompt need {need} decoder positions, but the decoder "
        f"has {limit}: {fix}" + (", or shorten the prompt" if prompt and room >= 1 else "")
    )
