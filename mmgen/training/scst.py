"""Self-critical sequence training (SCST): policy-gradient fine-tuning of a captioner on a CIDEr-D reward.

A stage after cross-entropy training (``train.objective: scst``, ``train.init_from: RUN/best``). For
every image of a batch:

1. ``k`` captions are sampled without gradient by the KV-cached :func:`~mmgen.generation.search`;
   the prompt (image prefix, BOS, text prompt) is prefilled once and shared by the image's samples;
2. each sample's reward is its CIDEr-D against the image's training references, with document
   frequencies from all training references, after PTB tokenisation as in the COCO evaluation;
3. the baseline is the mean reward of the image's other ``k - 1`` samples (Luo, "A Better Variant of
   Self-Critical Sequence Training", 2020) or the reward of its greedy caption (Rennie et al.,
   "Self-critical Sequence Training for Image Captioning", 2017);
4. one teacher-forced forward pass over ``[prefix ; BOS + prompt ; sampled tokens]`` gives the
   log-probabilities of the sampled tokens with gradient, and the loss is
   ``-mean_samples (reward - baseline) * sum_t log p(token_t)`` (or the mean over t).

The gradient reaches whatever is trainable: projector, LoRA adapters, the full decoder, encoder
blocks. With a frozen encoder (or a feature cache) the encoder runs once per image; a trainable
encoder runs again on each of the ``k`` copies in the teacher-forced pass, so that the pass goes
through the (DDP-wrapped) model's own forward.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmgen import distributed as D
from mmgen.config import Config, GenerationConfig
from mmgen.evaluation.cider import CiderD
from mmgen.evaluation.ptb import ptb_tokenize
from mmgen.generation.captions import decode_sequences
from mmgen.runtime import bf16_autocast
from mmgen.training.ema import averaged
from mmgen.training.logs import plot_curves
from mmgen.training.trainer import Trainer

__all__ = [
    "CiderReward",
    "ScstTrainer",
    "Rollout",
    "policy_gradient_loss",
    "rollout_losses",
    "sampled_token_logprobs",
    "self_critical_advantages",
]

_STAT_KEYS = ("reward", "baseline", "advantage", "entropy", "length")


class CiderReward:
    """CIDEr-D of captions against fixed references, with document frequencies from those references.

    References are PTB-tokenised once, in one pass, image by image (the order pycocoevalcap uses);
    candidates are tokenised at every call, one by one, with the pure-Python backend, which gives the
    Java tokenizer's tokens without starting a JVM.

    Args:
        references: Image id to its raw reference captions (images without any are left out).
        backend: PTB tokenizer for the references: ``"auto"``, ``"java"`` or ``"python"``.
    """

    def __init__(self, references: Mapping[Hashable, Sequence[str]], backend: str = "auto") -> None:
        ids = [i for i, refs in references.items() if len(refs) > 0]
        if not ids:
            raise ValueError("the SCST reward needs at least one image with reference captions")
        flat = ptb_tokenize([c for i in ids for c in references[i]], backend)
        self.references: dict[Hashable, list[str]] = {}
        pos = 0
        for i in ids:
            self.references[i] = flat[pos : pos + len(references[i])]
            pos += len(references[i])
        self.cider = CiderD(self.references)

    @classmethod
    def from_records(cls, records: Iterable[Any], backend: str = "auto") -> CiderReward:
        """Build from training records (``image_id`` and ``captions``); repeated ids pool their captions."""
        refs: dict[Hashable, list[str]] = {}
        for rec in records:
            if rec.image_id is None:
                raise ValueError(f"SCST needs an image id on every training record; {rec!r} has none")
            refs.setdefault(rec.image_id, []).extend(rec.captions)
        return cls(refs, backend)

    @staticmethod
    def tokenize(captions: Sequence[str]) -> list[str]:
        """PTB tokens of candidate captions, as the COCO evaluation produces them (python backend).

        Each caption is tokenised on its own: in one pass the tokenizer looks across caption
        boundaries (``a.`` before a lower-case word stays one token), and a sample's reward must not
        depend on the other captions of its batch.
        """
        return [ptb_tokenize([c], backend="python")[0] for c in captions]

    def score_tokenized(self, image_ids: Sequence[Hashable], tokenized: Sequence[str]) -> np.ndarray:
        """CIDEr-D of already tokenised candidates; float64 array, one score per candidate."""
        return self.cider.score(list(image_ids), list(tokenized))

    def __call__(self, image_ids: Sequence[Hashable], captions: Sequence[str]) -> np.ndarray:
        """CIDEr-D of raw candidate captions (``image_ids`` may repeat: several samples per image)."""
        return self.score_tokenized(image_ids, self.tokenize(captions))


def self_critical_advantages(
    rewards: torch.Tensor, baseline: str = "mean", greedy_rewards: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages ``reward - baseline`` of k samples per image.

    Args:
        rewards: ``(B, K)`` rewards of the samples.
        baseline: ``"mean"``: each sample's baseline is the mean reward of the image's other K-1
            samples; ``"greedy"``: the reward of the image's greedy caption.
        greedy_rewards: ``(B,)`` rewards of the greedy captions (``"greedy"`` only).

    Returns:
        ``(advantages, baselines)``, both ``(B, K)``.
    """
    b, k = rewards.shape
    if baseline == "mean":
        if k < 2:
            raise ValueError("the 'mean' baseline needs at least 2 samples per image")
        base = (rewards.sum(dim=1, keepdim=True) - rewards) / (k - 1)  # (B, K) leave-one-out mean
    elif baseline == "greedy":
        if greedy_rewards is None:
            raise ValueError("the 'greedy' baseline needs the greedy captions' rewards")
        base = greedy_rewards.reshape(b, 1).expand(b, k)  # (B, K)
    else:
        raise ValueError(f"baseline must be 'mean' or 'greedy', got {baseline!r}")
    return rewards - base, base


def sampled_token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, lengths: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities of sampled tokens under the (tempered) model distribution.

    Args:
        logits: ``(N, L, V)``; ``logits[:, t]`` is the prediction for ``tokens[:, t]``.
        tokens: ``(N, L)`` sampled ids, anything after a sequence's end.
        lengths: ``(N,)`` generated tokens of each sequence (its EOS included).
        temperature: The sampling temperature.

    Returns:
        ``token_logprobs`` ``(N, L)`` with gradient (0 after the end), ``mask`` ``(N, L)`` (1.0 on
        generated tokens) and ``entropy`` ``(N, L)`` of the distribution at each step (no gradient).
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (N, L, V)
    mask = (torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]).float()  # (N, L)
    token_logp = logp.gather(-1, tokens[..., None]).squeeze(-1) * mask  # (N, L)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1) * mask  # (N, L)
    return token_logp, mask, entropy


def policy_gradient_loss(
    token_logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, reduction: str = "sum"
) -> torch.Tensor:
    """REINFORCE loss of each sample, ``-advantage * log p(sample)``; average it over samples.

    Args:
        token_logprobs: ``(N, L)`` log-probabilities of the sampled tokens (0 after the end).
        mask: ``(N, L)``, 1.0 on generated tokens.
        advantages: ``(N,)`` reward minus baseline (treated as a constant).
        reduction: ``"sum"`` over a sample's tokens (its log-probability) or their ``"mean"``.

    Returns:
        ``(N,)`` per-sample losses.
    """
    seq = token_logprobs.sum(dim=1)  # (N,)
    if reduction == "mean":
        seq = seq / mask.sum(dim=1).clamp(min=1.0)
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return -(advantages.detach().to(seq.dtype) * seq)


def rollout_losses(
    logits: torch.Tensor, roll: Rollout, num_start_tokens: int, temperature: float = 1.0, reduction: str = "sum"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample policy-gradient losses from the teacher-forced logits of a :class:`Rollout`.

    Args:
        logits: ``(B*K, P+L, V)`` text logits of the model's forward on ``roll.inputs``.
        roll: The samples.
        num_start_tokens: P, the number of BOS + prompt tokens before the sampled ones.
        temperature: The sampling temperature.
        reduction: ``"sum"`` or ``"mean"`` of a sample's token log-probabilities.

    Returns:
        ``losses`` ``(B*K,)`` with gradient, ``mask`` and ``entropy`` ``(B*K, L)``.
    """
    length = roll.tokens.shape[1]
    # logits[:, t] predicts input_ids[:, t + 1]: the first sampled token follows BOS + prompt
    logits = logits[:, num_start_tokens - 1 : num_start_tokens - 1 + length]  # (B*K, L, V)
    logp, mask, entropy = sampled_token_logprobs(logits, roll.tokens, roll.lengths, temperature)
    return policy_gradient_loss(logp, mask, roll.advantages.reshape(-1), reduction), mask, entropy


@dataclass
class Rollout:
    """The samples of one micro-batch and what the loss needs from them (no gradient anywhere).

    Attributes:
        inputs: Teacher-forcing inputs of the model's forward for the ``B * K`` samples.
        tokens: ``(B*K, L)`` sampled ids (padding after each end).
        lengths: ``(B*K,)`` generated tokens, EOS included.
        rewards: ``(B, K)``.
        baselines: ``(B, K)``.
        advantages: ``(B, K)``.
        words: ``(B*K,)`` PTB words per sampled caption.
    """

    inputs: dict[str, torch.Tensor]
    tokens: torch.Tensor
    lengths: torch.Tensor
    rewards: torch.Tensor
    baselines: torch.Tensor
    advantages: torch.Tensor
    words: torch.Tensor


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Sample without dropout; restore the previous mode (CaptionModel keeps frozen parts in eval)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class ScstTrainer(Trainer):
    """:class:`~mmgen.training.trainer.Trainer` whose optimizer step is a self-critical policy-gradient step.

    Everything else (data, checkpoints, resume, evaluation, logging) is the cross-entropy trainer's.
    Logged per window of ``train.log_every`` steps: mean ``reward``, ``baseline``, ``advantage``,
    token ``entropy`` of the sampling distribution and caption ``length`` in PTB words.

    Args:
        cfg: The resolved configuration (``train.objective: scst``, settings in ``cfg.scst``).
        resume: A run directory to continue from its latest checkpoint.
    """

    def __init__(self, cfg: Config, resume: str | Path | None = None, overwrite: bool = False) -> None:
        super().__init__(cfg, resume=resume, overwrite=overwrite)
        if self.finished:  # nothing was built
            return
        sc = cfg.scst
        if cfg.train.init_from is None and resume is None:
            warnings.warn(
                "SCST from randomly initialised weights: set train.init_from to a cross-entropy "
                "checkpoint (e.g. RUN/best)",
                stacklevel=2,
            )
        self.reward = CiderReward.from_records(self.data.train_records, sc.reference_tokenizer)
        max_new = sc.max_new_tokens or cfg.model.max_caption_tokens
        # plain sampling from softmax(logits / T): no penalty or filter, so that the log-probabilities
        # of the teacher-forced pass are those of the distribution the tokens were drawn from
        self.sample_gen = GenerationConfig(
            num_beams=1,
            do_sample=True,
            temperature=sc.temperature,
            num_return_sequences=sc.num_samples,
            max_new_tokens=max_new,
        )
        self.greedy_gen = GenerationConfig(num_beams=1, max_new_tokens=max_new)
        self._stats = torch.zeros(len(_STAT_KEYS) + 2, dtype=torch.float64)  # sums, samples, tokens

    # -- one micro-batch without gradient -------------------------------------------------------
    @torch.no_grad()
    def rollout(self, batch: dict) -> Rollout:
        """Sample ``k`` captions per image of ``batch``, score them and build the teacher-forcing inputs."""
        model, dev, sc = self.model, self.device, self.cfg.scst
        k, tok = sc.num_samples, model.tokenizer
        features = batch.get("features")
        pixels = None  # uint8 from the loader: the model normalises them
        if features is not None:
            features = features.to(dev, non_blocking=True)
        else:
            pixels = batch["pixel_values"].to(dev, non_blocking=True)
        # without autocast's weight-cast cache: decoding steps replayed from CUDA graphs outlive the context
        with _eval_mode(model), bf16_autocast(self.cfg.train.precision, dev, cache=False):
            if features is None and model.encoder.fully_frozen:
                features = model.image_features(pixels)  # (B, N, C): once, for both passes
            prompt = model.prompt_embeds(None if features is not None else pixels, features)  # (B, N'+P, D)
            sampled = model.search(prompt, self.sample_gen)  # (B, K, L)
            greedy = model.search(prompt, self.greedy_gen) if sc.baseline == "greedy" else None
        b = prompt.shape[0]
        tokens = sampled.sequences.reshape(b * k, -1).clone()  # (B*K, L); clone: out of inference mode
        lengths = sampled.lengths.reshape(b * k).clone()  # (B*K,)

        ids = [i for i in batch["image_ids"] for _ in range(k)]
        words = self.reward.tokenize(decode_sequences(tok, tokens, lengths))
        rewards = torch.as_tensor(self.reward.score_tokenized(ids, words), dtype=torch.float32, device=dev)
        greedy_rewards = None
        if greedy is not None:
            g_text = decode_sequences(tok, greedy.sequences[:, 0], greedy.lengths[:, 0])
            g_scores = self.reward(batch["image_ids"], g_text)
            greedy_rewards = torch.as_tensor(g_scores, dtype=torch.float32, device=dev)  # (B,)
        advantages, baselines = self_critical_advantages(rewards.view(b, k), sc.baseline, greedy_rewards)

        n, length = tokens.shape
        start = model.start_ids.expand(n, -1)  # (B*K, P)
        generated = (torch.arange(length, device=dev) < lengths[:, None]).long()  # (B*K, L)
        inputs = {
            "input_ids": torch.cat([start, tokens], dim=1),  # (B*K, P+L)
            "attention_mask": torch.cat([torch.ones_like(start), generated], dim=1),  # (B*K, P+L)
        }
        if features is not None:
            inputs["features"] = features.repeat_interleave(k, dim=0)  # (B*K, N, C)
        else:
            inputs["pixel_values"] = pixels.repeat_interleave(k, dim=0)  # (B*K, 3, H, W)
        n_words = torch.tensor([len(w.split()) for w in words], dtype=torch.float32)
        return Rollout(inputs, tokens, lengths, rewards.view(b, k), baselines, advantages, n_words)

    # -- the optimizer step's loss ----------------------------------------------------------------
    def _micro_losses(self, batches: list[dict]) -> tuple[torch.Tensor, int]:
        """Sample, score and backpropagate the policy-gradient loss; returns (mean loss over samples, images)."""
        dev, sc = self.device, self.cfg.scst
        n_samples = sum(b["input_ids"].shape[0] for b in batches) * sc.num_samples
        total = int(D.all_reduce_sum(torch.tensor([n_samples], dtype=torch.float64)).item())
        scale = self.dist.world_size / max(total, 1)  # DDP averages gradients over ranks
        loss_sum = torch.zeros((), device=dev, dtype=torch.float32)
        images = 0
        for i, b in enumerate(batches):
            ctx = self._grad_sync(last=i == len(batches) - 1)
            roll = self.rollout(b)
            with ctx:
                out = self.forward(roll.inputs)
                losses, mask, entropy = rollout_losses(
                    out.logits, roll, self.model.start_ids.numel(), sc.temperature, sc.logprob_reduction
                )
                part = losses.sum()  # (B*K,) -> summed loss of this micro-batch
                (part * scale).backward()
            loss_sum += part.detach()
            images += b["input_ids"].shape[0]
            self._record(roll, entropy, mask)
        loss_sum = D.all_reduce_sum(loss_sum) / max(total, 1)
        return loss_sum, images

    def _record(self, roll: Rollout, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        sums = [roll.rewards.sum(), roll.baselines.sum(), roll.advantages.sum(), entropy.sum(), roll.words.sum()]
        sums = torch.stack([s.detach().double().cpu() for s in sums])
        counts = torch.tensor([roll.rewards.numel(), mask.sum().item()], dtype=torch.float64)
        self._stats += torch.cat([sums, counts])

    def _log_extras(self) -> dict[str, float]:
        """Means over the samples (entropy: over generated tokens) since the last log line, all ranks."""
        stats = D.all_reduce_sum(self._stats.to(self.device)).cpu().clone()  # every rank logs at the same steps
        self._stats.zero_()
        samples, tokens = float(stats[-2]), float(stats[-1])
        out = {}
        for j, key in enumerate(_STAT_KEYS):
            denom = tokens if key == "entropy" else samples
            out[key] = float(stats[j]) / denom if denom > 0 else float("nan")
        return out

    def save_final(self) -> None:
        if self.dist.is_main:
            with averaged(self.average, self.model):
                self.model.save_pretrained(self.run_dir / "final", generation=self.cfg.eval.generation)
            plot_curves(self.run_dir, ("reward", "baseline"), "training CIDEr-D of samples")
