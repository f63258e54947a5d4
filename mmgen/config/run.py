"""The sections of a training run beside the model: ``data``, ``train``, ``eval`` (with its generation settings)
and ``scst``, and :class:`Config`, the whole run, with :func:`load_config`.

Every field is validated in ``__post_init__`` so that a bad value fails before any model is built, with an
error naming the dotted key; :meth:`Config.check_paths` checks the local paths a new run names.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from mmgen.config import io
from mmgen.config.generation import SDPA_BACKENDS, GenerationConfig
from mmgen.config.io import (
    check,
    choice,
    collecting,
    from_dict,
    looks_like_local_path,
    path_exists,
    report,
    save_config,
    to_dict,
    unknown_key,
)
from mmgen.config.model import ModelConfig


@dataclass
class DataConfig:
    train: str | None = None
    """Training data: a COCO/Karpathy json, a JSONL/CSV file, a HF dataset dir/name or shards glob."""
    train_images: str | None = None
    """Images directory for COCO-style annotation files."""
    val: str | None = None
    val_images: str | None = None
    train_split: str = "train"
    """Split of ``train`` to train on, wherever the source records splits (a Karpathy json, a ``split``
    column of a JSONL/CSV table or HF dataset, the named splits of a HF dataset); sources without split
    information are taken whole."""
    val_split: str = "val"
    """Split of ``val`` to validate on ('val' also finds 'validation')."""
    restval: bool = True
    """Count 'restval' images (Karpathy json, split columns) as training images."""
    allow_overlap: bool = False
    """Let validation images also be training images (an overfitting check); by default such a run is
    refused, naming the images that are in both (same path, or same image_id)."""
    caption_sampling: str = "random"
    """'random' (one random reference per image per epoch) | 'all' (every image-caption pair)."""
    captions_per_image: int = 1
    """References trained on per image and step (drawn without replacement, cycling when an image has fewer).
    The decoder runs over the image prefix once and its K captions share it, so K captions cost much less
    than K images."""
    synth: dict | None = None
    """Generate a synthetic scenes dataset before training: {n_train, n_val, seed, image_size, image_format,
    difficulty} (``mmgen data synth``'s options; n_train required, n_val 0: no validation)."""
    num_workers: int = 2
    max_pixels: int = 89_478_485
    """Decompression-bomb guard (PIL's default)."""
    max_bad_fraction: float = 0.01
    """Training fails once more than this fraction of images could not be decoded."""
    augment: bool = False
    """Light training augmentation (random resized crop, small colour jitter)."""
    pad_to_max_length: bool | None = None
    """Pad every training batch to the longest possible caption: one tensor shape, so ``train.compile``
    compiles once. None: on when ``train.compile`` is."""
    preload: bool = False
    """Decode the training images once into RAM (uint8 at the encoder's input size) instead of every epoch."""
    streaming: bool = False
    """Stream a Hugging Face training source (each rank reads its own part); other sources are read whole."""
    image_column: str = "image"
    caption_column: str = "caption"
    strict_paths: bool = False
    """Refuse image paths of caption files that lead outside their images folder (absolute, or through ``..``);
    by default COCO and Karpathy files read them from there, with a warning."""

    @collecting
    def __post_init__(self) -> None:
        choice(self.caption_sampling, "data.caption_sampling", ("random", "all"))
        check(self.captions_per_image >= 1, "data.captions_per_image", "must be >= 1")
        check(
            self.captions_per_image == 1 or self.caption_sampling == "random",
            "data.captions_per_image",
            "draws references per image: it needs data.caption_sampling: random",
        )
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        check(self.max_pixels > 0, "data.max_pixels", "must be > 0")
        check(0.0 <= self.max_bad_fraction <= 1.0, "data.max_bad_fraction", "must be in [0, 1]")
        check(not (self.preload and self.augment), "data.preload", "stores fixed images: set data.augment=false")
        check(not (self.preload and self.streaming), "data.preload", "needs an indexable dataset, not streaming")
        if self.synth is not None:
            check_synth(self.synth)


SYNTH_KEYS = {"n_train": int, "n_val": int, "seed": int, "image_size": int, "image_format": str, "difficulty": str}
"""The keys of ``data.synth`` (the arguments of :func:`mmgen.scenes.writer.make_scenes_splits`) and their types."""


def check_synth(synth: Any) -> None:
    """Report what is wrong with a ``data.synth`` mapping (each problem naming its ``data.synth.KEY``)."""
    from mmgen.scenes import GENERATORS

    if not isinstance(synth, dict):
        report(f"data.synth: expected a mapping such as {{n_train: 1000, n_val: 100}} or null, got {synth!r}")
        return
    for key, value in synth.items():
        kind = SYNTH_KEYS.get(key)
        if kind is None:
            report(unknown_key(f"data.synth.{key}", sorted(SYNTH_KEYS)))
        elif isinstance(value, bool) or not isinstance(value, kind):
            report(f"data.synth.{key}: expected {'an integer' if kind is int else 'a string'}, got {value!r}")
    typed = {k: v for k, v in synth.items() if k in SYNTH_KEYS and type(v) is SYNTH_KEYS[k]}
    check("n_train" in synth, "data.synth.n_train", "is required: the number of training scenes")
    check(typed.get("n_train", 1) >= 1, "data.synth.n_train", f"must be >= 1, got {synth.get('n_train')!r}")
    check(
        typed.get("n_val", 0) >= 0, "data.synth.n_val", f"must be >= 0 (0: no validation), got {synth.get('n_val')!r}"
    )
    check(typed.get("image_size", 1) >= 1, "data.synth.image_size", f"must be >= 1, got {synth.get('image_size')!r}")
    if "image_format" in typed:
        choice(typed["image_format"], "data.synth.image_format", ("png", "jpg"))
    if "difficulty" in typed:
        choice(typed["difficulty"], "data.synth.difficulty", tuple(GENERATORS))


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate on the validation split every N optimizer steps (0: only at the end)."""
    max_images: int | None = None
    batch_size: int = 32
    metric: str = "CIDEr"
    """Metric that picks the best checkpoint; 'loss' is the validation loss (token cross-entropy over every
    validation image and reference, logged at each evaluation with the caption metrics), lowest best."""
    early_stop_patience: int = 0
    """Stop after this many evaluations without improvement (0: never)."""
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    @collecting
    def __post_init__(self) -> None:
        check(self.every >= 0, "eval.every", "must be >= 0")
        check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        choice(self.metric, "eval.metric", ("CIDEr", "Bleu_4", "METEOR", "ROUGE_L", "loss"))


TRACKER_NAMES = ("tensorboard", "mlflow", "wandb")
"""What ``train.report_to`` may name: the keys of :data:`mmgen.training.trackers.TRACKERS` (a test holds the two
equal)."""

OBJECTIVES = ("xe", "scst")
"""The training objectives ``train.objective`` names: the keys of :data:`mmgen.training.objectives.TRAINERS` (a test
holds the two equal; the config cannot import the trainers it configures)."""


@dataclass
class TrainConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    batch_size: int = 32
    """Global batch size (per optimizer step, across ranks and accumulation)."""
    grad_accum: int = 1
    max_steps: int = 1000
    max_time: float | None = None
    """Wall-clock budget in seconds; training stops (and saves) when it is spent."""
    schedule: str = "steps"
    """'steps': the cosine ends at ``max_steps``. 'time' (needs ``max_time``): after warmup the cosine
    follows the wall clock and ends when the budget is spent, however fast the steps run (the clock
    starts once the first step, with any compilation and preloading, is done). Not bit-reproducible."""
    lr: float = 1e-4
    encoder_lr: float | None = None
    projector_lr: float | None = None
    decoder_lr: float | None = None
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    precision: str = "auto"
    """'auto' (bf16 autocast on CUDA, fp32 on CPU) | 'fp32' | 'bf16'."""
    compile: bool = False
    compile_mode: str = "default"
    """``torch.compile`` mode with ``compile``: 'default'; 'max-autotune-no-cudagraphs' (benchmarks matrix
    multiply and fused kernels while compiling: a longer compilation, possibly faster steps); 'reduce-overhead'
    (CUDA graphs: one launch replays the step's kernels, for small models whose steps the host cannot feed;
    more GPU memory; plain compilation on the CPU)."""
    loss_impl: str = "plain"
    """How the LM head's loss is computed: 'plain' (logits of every text position, then cross-entropy);
    'chunked' (PyTorch, a chunk of positions at a time: the same loss without the (tokens, vocabulary) logits);
    'liger' / 'cce' (liger-kernel's / cut-cross-entropy's fused CUDA kernels: pip install liger-kernel or
    cut-cross-entropy); 'auto' (liger, else cce, where installed on a GPU; else plain). Cross-entropy only."""
    label_smoothing: float = 0.0
    """Label smoothing of the caption cross-entropy (as ``F.cross_entropy``'s): the target of each token puts
    ``1 - eps`` on the reference token and ``eps`` spread evenly over the vocabulary. 0 (default): none. With
    every ``loss_impl`` but 'cce'; not with ``objective: scst``. Validation loss stays the plain cross-entropy."""
    ema_decay: float = 0.0
    """A moving average of the trained weights (``avg = d * avg + (1 - d) * w`` after each optimizer step, ``d =
    min(ema_decay, (1 + n) / (10 + n))``), evaluated, kept as ``best/`` and written as ``final/``; checkpoints
    hold both. 0 (default): none; typical 0.99-0.9999. Not with ``distributed: fsdp``."""
    fp8: bool = False
    """Float8 training of the linear layers (torchao's ``convert_to_float8_training``; pip install torchao) on a
    CUDA GPU of compute capability >= 8.9: every ``nn.Linear`` with both sides divisible by 16 except the LM head
    and the projector. GPT-2's blocks are ``Conv1D``, not ``nn.Linear``, and stay in bf16. Use with ``compile``."""
    fused_adam: bool | None = None
    """None: fused AdamW on CUDA, plain elsewhere."""
    threads: int | None = None
    """CPU threads torch computes with in this process (``torch.set_num_threads``; ``mmgen train --threads``);
    None leaves torch's default (one per core, or ``OMP_NUM_THREADS``). DataLoader workers come on top."""
    distributed: str = "ddp"
    """'ddp' | 'fsdp' (only used when launched with more than one process). 'fsdp' shards every decoder block
    and the rest with FSDP2; checkpoints hold whole tensors (gathered on rank 0, which also evaluates an
    unsharded copy), so they load with or without FSDP. Cross-entropy training only."""
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    max_bad_steps: int = 5
    """Stop after this many consecutive non-finite losses. With fused AdamW the check runs on the device
    (no per-step host sync) and is read back every ``log_every`` steps, so the stop can come up to
    ``log_every - 1`` steps later."""
    sdpa_backends: list[str] = field(default_factory=lambda: ["flash", "efficient", "math"])
    """Scaled-dot-product attention kernels training may use, in PyTorch's order of preference
    (flash > efficient > cudnn > math). cuDNN attention is left out by default: its per-call host
    cost stalls small models."""
    feature_cache: bool = False
    """Train from precomputed frozen-encoder features (requires model.encoder.freeze=all)."""
    feature_cache_dir: str | None = None
    tensorboard: bool = True
    """TensorBoard events in ``RUN/tensorboard`` when ``report_to`` is not set (the older switch; kept)."""
    report_to: list[str] | None = None
    """Experiment trackers that get the config, the metrics, the curves and the final model card, beside
    ``metrics.jsonl``: any of 'tensorboard', 'mlflow' (``MLFLOW_TRACKING_URI``, else a file store in ``RUN/mlruns``;
    pip install mlflow-skinny), 'wandb' (``WANDB_MODE=offline`` to stay on the machine; pip install wandb); [] for
    none. None: ['tensorboard'] (unless ``tensorboard: false``)."""
    tracking_project: str = "mmgen"
    """The MLflow experiment / W&B project a run reports to (``report_to``)."""
    init_from: str | None = None
    """A saved model directory whose matching weights initialise this run (stage 1 -> stage 2)."""
    objective: str = "xe"
    """'xe' (cross-entropy on the reference captions) | 'scst' (self-critical CIDEr-D, see ``scst``)."""

    @property
    def trackers(self) -> list[str]:
        """The trackers the run reports to: ``report_to``, or TensorBoard when ``tensorboard`` (the default)."""
        if self.report_to is not None:
            return list(dict.fromkeys(self.report_to))
        return ["tensorboard"] if self.tensorboard else []

    @collecting
    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # YAML gives a list
        choice(self.objective, "train.objective", OBJECTIVES)
        choice(self.schedule, "train.schedule", ("steps", "time"))
        choice(self.compile_mode, "train.compile_mode", ("default", "max-autotune-no-cudagraphs", "reduce-overhead"))
        choice(self.loss_impl, "train.loss_impl", ("plain", "auto", "chunked", "liger", "cce"))
        smoothing_ok = isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1
        check(smoothing_ok, "train.label_smoothing", f"must be a number in [0, 1), got {self.label_smoothing!r}")
        check(
            not (self.loss_impl == "cce" and smoothing_ok and self.label_smoothing > 0),
            "train.label_smoothing",
            "cut-cross-entropy (train.loss_impl=cce) has no label smoothing: use liger, chunked or plain",
        )
        ema_ok = isinstance(self.ema_decay, (int, float)) and 0 <= self.ema_decay < 1
        check(ema_ok, "train.ema_decay", f"must be a number in [0, 1) (0: no average), got {self.ema_decay!r}")
        check(self.schedule == "steps" or self.max_time is not None, "train.schedule", "'time' needs train.max_time")
        check(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        threads_ok = self.threads is None or (type(self.threads) is int and self.threads >= 1)
        check(threads_ok, "train.threads", f"must be null or an integer >= 1, got {self.threads!r}")
        check(
            self.grad_accum < 1 or self.batch_size % self.grad_accum == 0,
            "train.batch_size",
            "must be divisible by train.grad_accum",
        )
        check(self.max_steps >= 1, "train.max_steps", "must be >= 1")
        check(math.isfinite(self.lr) and self.lr > 0, "train.lr", f"must be a finite number > 0, got {self.lr}")
        check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        check(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
        choice(self.precision, "train.precision", ("auto", "fp32", "bf16"))
        choice(self.distributed, "train.distributed", ("ddp", "fsdp"))
        check(self.save_every >= 1, "train.save_every", "must be >= 1")
        check(self.keep_last >= 1, "train.keep_last", "must be >= 1")
        check(self.max_bad_steps >= 1, "train.max_bad_steps", "must be >= 1")
        check(len(self.betas) == 2, "train.betas", "must be two numbers")
        for name in self.sdpa_backends:
            choice(name, "train.sdpa_backends", SDPA_BACKENDS)
        check(len(self.sdpa_backends) > 0, "train.sdpa_backends", "must name at least one backend")
        for name in self.report_to or []:
            choice(name, "train.report_to", TRACKER_NAMES)
        if 1 <= self.max_steps <= self.warmup_steps:
            warnings.warn(
                f"train.max_steps ({self.max_steps}) <= train.warmup_steps ({self.warmup_steps}): the learning rate "
                "is still warming up when training stops; lower train.warmup_steps or raise train.max_steps",
                UserWarning,
                stacklevel=1,
            )


@dataclass
class ScstConfig:
    """Self-critical sequence training (``train.objective: scst``): CIDEr-D reward of sampled captions."""

    num_samples: int = 5
    """Captions sampled per image (k)."""
    baseline: str = "mean"
    """'mean' (mean reward of the image's other k-1 samples) | 'greedy' (reward of the greedy caption)."""
    temperature: float = 1.0
    """Sampling temperature; the log-probabilities are those of the tempered distribution."""
    max_new_tokens: int | None = None
    """Longest sampled caption, EOS included (None: ``model.max_caption_tokens``)."""
    logprob_reduction: str = "sum"
    """How a caption's token log-probabilities combine: 'sum' (the sequence log-probability) | 'mean'."""
    reference_tokenizer: str = "auto"
    """PTB tokenizer backend for the training references, run once ('auto' | 'java' | 'python');
    sampled captions always use the python backend, which gives the same tokens."""

    @collecting
    def __post_init__(self) -> None:
        check(self.num_samples >= 1, "scst.num_samples", "must be >= 1")
        choice(self.baseline, "scst.baseline", ("mean", "greedy"))
        check(
            self.baseline != "mean" or self.num_samples >= 2,
            "scst.num_samples",
            "the 'mean' baseline needs at least 2 samples per image",
        )
        check(self.temperature > 0, "scst.temperature", "must be > 0")
        check(self.max_new_tokens is None or self.max_new_tokens >= 1, "scst.max_new_tokens", "must be >= 1")
        choice(self.logprob_reduction, "scst.logprob_reduction", ("sum", "mean"))
        choice(self.reference_tokenizer, "scst.reference_tokenizer", ("auto", "java", "python"))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)

    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "generation": "eval.generation: the one generation config of a run (in-loop evaluation, and the settings "
        "saved with the model that caption/evaluate/serve start from); move the section there",
    }
    """Keys of older configs that are refused with a pointer to where their settings now live."""
    MOVED_DEFAULTS: ClassVar[dict[str, type]] = {"generation": GenerationConfig}
    """Moved sections left out with a warning when they hold only defaults (what every run saved before the move
    wrote), so older run directories still resume."""

    @collecting
    def __post_init__(self) -> None:
        if self.train.feature_cache:
            check(
                self.model.encoder.freeze == "all",
                "train.feature_cache",
                "needs a frozen encoder (model.encoder.freeze: all)",
            )
            check(not self.data.streaming, "train.feature_cache", "needs an indexable dataset, not data.streaming")
        if self.train.objective == "scst":
            check(
                not self.data.streaming,
                "train.objective",
                "scst scores samples against every training reference: data.streaming must be false",
            )
            check(
                self.data.captions_per_image == 1,
                "data.captions_per_image",
                "scst samples its own captions per image: leave data.captions_per_image at 1",
            )
            check(
                self.train.loss_impl in ("plain", "auto"),
                "train.loss_impl",
                "scst weighs the log-probabilities of sampled captions, not a cross-entropy: leave it at plain",
            )
            check(
                self.train.label_smoothing == 0,
                "train.label_smoothing",
                "scst weighs the log-probabilities of sampled captions, not a cross-entropy: leave it at 0",
            )

    def check_paths(self) -> None:
        """Check that the local files and directories the config names exist, before any heavy work.

        Always local (must exist when set): ``model.encoder.weights``, ``model.tokenizer.name`` with kind
        'path', ``train.init_from``, ``data.train_images`` and ``data.val_images``. Hub names or local
        paths (checked when they look like paths, see :func:`~mmgen.config.io.looks_like_local_path`):
        ``model.decoder.name``, ``model.tokenizer.name``, ``data.train`` and ``data.val`` (globs must match
        a file). Data paths are not checked with ``data.synth``, which writes them. Every missing path
        is reported (one ConfigError naming each key) when called inside a validation.
        """
        m, dc = self.model, self.data
        named = [
            ("model.decoder.name", m.decoder.name, looks_like_local_path(m.decoder.name)),
            ("model.encoder.weights", m.encoder.weights, True),
            ("model.tokenizer.name", m.tokenizer.name, m.tokenizer.kind == "path"),
            ("train.init_from", self.train.init_from, True),
        ]
        if not dc.synth:
            named += [(f"data.{k}", getattr(dc, k), True) for k in ("train_images", "val_images")]
            named += [(f"data.{k}", getattr(dc, k), False) for k in ("train", "val")]
            check(
                dc.train is not None,
                "data.train",
                "is not set: name the training data (a COCO or Karpathy json, a JSONL/CSV table, a Hugging Face "
                "dataset), or data.synth to generate scenes",
            )
        for key, value, local in named:
            if value is None or not isinstance(value, str):
                continue
            if local or looks_like_local_path(value, data=key.startswith("data.")):
                hub = "" if local else " (a hub name looks like 'gpt2' or 'namespace/name')"
                check(path_exists(value), key, f"{value}: no such file or directory{hub}")

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        return from_dict(cls, d)

    def save(self, path: str | Path) -> None:
        save_config(self, path)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None, check_paths: bool = False) -> Config:
        return load_config(path, overrides, cls, check_paths=check_paths)


def apply_overrides(d: dict, overrides: list[str] | None, cls: type | None = None) -> dict:
    """Apply ``a.b.c=value`` overrides to a nested dict (a new dict); the schema defaults to :class:`Config`."""
    return io.apply_overrides(d, overrides, cls or Config)


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, cls: type = Config, check_paths: bool = False
) -> Any:
    """Load a YAML (or JSON) config file, apply dotted overrides, validate.

    Every bad key or value is reported in one :class:`ConfigError` that names each dotted key. With
    ``check_paths`` (a run about to start), the paths it names must exist too (:meth:`Config.check_paths`).
    """
    return io.load_config(path, overrides, cls, check=cls.check_paths if check_paths else None)


PRESETS = "mmgen.presets"
"""The package of the YAML presets: the source tree's ``configs/`` folder, shipped as package data (pyproject.toml
maps the one onto the other, in a wheel and in an editable install alike)."""


def load_preset(name: str, overrides: list[str] | None = None) -> Config:
    """A shipped preset (``configs/NAME.yaml``, e.g. ``tiny_cpu``) with dotted overrides, validated as
    :func:`load_config` validates a file."""
    with resources.as_file(resources.files(PRESETS).joinpath(f"{name}.yaml")) as path:
        return load_config(path, overrides)
