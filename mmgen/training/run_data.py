"""The data of a training run: records, tokenizer, feature cache, loaders, bad-image accounting.

Validation (the in-loop caption scores and loss) is :mod:`mmgen.training.validation`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmgen import distributed as D
from mmgen.config import Config, ConfigError


@dataclass
class RunData:
    """The records of a run (the batches built from them: :class:`TrainBatches`)."""

    train_records: Any
    val_records: Any
    tracker: Any = None
    """The bad-image tracker (:class:`~mmgen.data.images.BadImageTracker`)."""
    streaming: bool = False
    """``train_records`` is this rank's part of a stream (an iterable of unknown length), not a sequence."""
    val_scenes: Any = None
    """The scenes of synthetic validation data (attribute accuracies at evaluation), else None."""


def resolve_data_source(cfg: Config, log: Callable[[str], None] | None = print) -> Config:
    """The config a run trains with: an explicit ``data.train`` wins over ``data.synth``.

    A preset may set ``data.synth`` (synthetic scenes); a user who names a dataset on top of it means
    that dataset. The returned config (saved as the run's ``config.yaml``) then has ``data.synth``
    dropped, so that it says what was trained on; ``log`` gets one line saying so.

    Returns:
        ``cfg`` itself when there is nothing to resolve, else a copy.
    """
    dc = cfg.data
    if not dc.synth or dc.train is None:
        return cfg
    if log is not None:
        log(
            f"data.train={dc.train} is set: training on it, and data.synth (synthetic scenes) is dropped "
            "(data.train=null trains on data.synth)"
            + ("" if dc.val is not None else "; no validation data (set data.val to evaluate)")
        )
    return dataclasses.replace(cfg, data=dataclasses.replace(dc, synth=None))


def prepare(cfg: Config, run_dir: Path, dist: D.DistState) -> RunData:
    """Read (or first synthesise) the training and validation records.

    Every source is read with its split (``data.train_split`` / ``data.val_split``) wherever it records
    splits; a source without split information is taken whole. Images that are both in the training and
    the validation records are refused (unless ``data.allow_overlap``). With ``data.streaming`` and a
    Hugging Face source, the training records are this rank's part of a stream.
    """
    from mmgen.data import load_records
    from mmgen.data.images import BadImageTracker
    from mmgen.data.sources import is_stream

    cfg = resolve_data_source(cfg, print if dist.is_main else None)
    dc = cfg.data
    train, train_images, val, val_images = dc.train, dc.train_images, dc.val, dc.val_images
    if dc.synth:
        from mmgen.scenes.writer import make_scenes_splits

        out = run_dir / "data"
        if dist.is_main:
            make_scenes_splits(out, **dc.synth)
        D.barrier()
        train, train_images = str(out / "captions_train.json"), str(out)
        val, val_images = (str(out / "captions_val.json"), str(out)) if dc.synth.get("n_val", 0) else (None, None)
    if train is None:
        raise ConfigError("data.train: is not set (a dataset path, or data.synth to generate scenes)")
    streaming = dc.streaming and is_stream(train)
    if dc.streaming and not streaming and dist.is_main:
        print(f"data.streaming: {train} is not a Hugging Face dataset source; it is read whole (map-style)")
    cols = {"image_column": dc.image_column, "caption_column": dc.caption_column, "strict_paths": dc.strict_paths}
    part = {"streaming": True, "rank": dist.rank, "world_size": dist.world_size} if streaming else {}
    train_records = load_records(train, train_images, dc.train_split, dc.restval, **cols, **part)
    if streaming and hasattr(train_records, "shuffled"):  # a new order every epoch, drawn from the seed
        train_records = train_records.shuffled(cfg.train.seed)
    val_records, val_scenes = None, None
    if val is not None:
        val_records = load_records(val, val_images, dc.val_split, False, **cols)
        if not streaming:
            check_overlap(cfg, train_records, val_records, (train, val))
        elif dist.is_main:
            print("data.streaming: the training stream is not checked for images that are also in data.val")
        if cfg.eval.max_images is not None:
            val_records = [val_records[i] for i in range(min(cfg.eval.max_images, len(val_records)))]
        if isinstance(val, str):
            from mmgen.scenes.accuracy import load_scenes

            val_scenes = load_scenes(val)  # synthetic scenes: attribute accuracies at evaluation
    # the tracker's epoch size is set from this rank's share of the training items by train_loader
    tracker = BadImageTracker(dc.max_bad_fraction)
    return RunData(train_records, val_records, tracker, streaming=streaming, val_scenes=val_scenes)


def check_overlap(cfg: Config, train_records: Any, val_records: Any, sources: tuple[Any, Any]) -> None:
    """Refuse validation images that are also training images (``data.allow_overlap``: only say so).

    Raises:
        DataFormatError: some images are in both, naming a few of them and the count.
    """
    from mmgen.data.records import DataFormatError
    from mmgen.data.sources import overlapping_images

    dc = cfg.data
    same = overlapping_images(train_records, val_records, same_source=_same_sources(*sources))
    if not same:
        return
    named = "; ".join(same[:5]) + ("; ..." if len(same) > 5 else "")
    what = (
        f"{len(same)} of the {len(val_records)} validation images are also training images "
        f"(data.train={sources[0]} split {dc.train_split!r}, data.val={sources[1]} split {dc.val_split!r}): {named}"
    )
    if dc.allow_overlap:
        print(f"{what} (data.allow_overlap=true: kept)")
        return
    raise DataFormatError(
        f"{what}. Scores on images the model trained on are not a validation; fix the splits, or set "
        "data.allow_overlap=true to validate on training images on purpose (an overfitting check)"
    )


def _same_sources(a: Any, b: Any) -> bool:
    """Whether ``data.train`` and ``data.val`` name the same files (an image_id then identifies one image)."""

    def norm(x: Any) -> list[str]:
        return sorted(os.path.abspath(str(s)) for s in ([x] if isinstance(x, (str, Path)) else x))

    return norm(a) == norm(b)


def prepare_tokenizer(cfg: Config, train_records: Any, run_dir: Path, dist: D.DistState):
    """The decoder's tokenizer, or one trained on the training captions (saved in ``run_dir/tokenizer``)."""
    from transformers import AutoTokenizer

    from mmgen.tokenizer import ensure_special_tokens, load_tokenizer, train_caption_tokenizer

    tc = cfg.model.tokenizer
    if tc.kind in ("decoder", "path"):
        return load_tokenizer(tc, cfg.model.decoder.name)
    path = run_dir / "tokenizer"
    if dist.is_main and not (path / "tokenizer.json").exists():
        if dist.world_size > 1 and not isinstance(train_records, Sequence):  # this rank's part of a stream
            train_records = _whole_stream(cfg)
        captions = (c for r in train_records for c in r.captions)
        tok = train_caption_tokenizer(captions, tc.kind, tc.vocab_size, tc.min_frequency, tc.lowercase)
        tok.save_pretrained(str(path))
        print(f"trained a {tc.kind} tokenizer on the training captions: {len(tok)} tokens -> {path}")
    D.barrier()
    return ensure_special_tokens(AutoTokenizer.from_pretrained(str(path)))


def _whole_stream(cfg: Config) -> Any:
    """Every rank's part of the training stream (what the tokenizer learns from)."""
    from mmgen.data import load_records

    dc = cfg.data
    cols = {"image_column": dc.image_column, "caption_column": dc.caption_column, "strict_paths": dc.strict_paths}
    return load_records(dc.train, dc.train_images, dc.train_split, dc.restval, **cols, streaming=True)


def feature_cache(cfg: Config, model, data: RunData, run_dir: Path, dist: D.DistState):
    """Precompute frozen-encoder features when ``train.feature_cache`` is set (None otherwise)."""
    if not cfg.train.feature_cache:
        return None
    from mmgen.data.features import ensure_feature_cache

    cache_dir = Path(cfg.train.feature_cache_dir or run_dir / "features")
    return ensure_feature_cache(model, data.train_records, cache_dir, cfg, dist)


class TrainBatches:
    """The micro-batches of a run's optimizer steps, epoch by epoch: the training dataset, collator and loader,
    built once from what they need (named here, not read off a trainer).

    Args:
        cfg: The run's config (``data.*``, ``train.seed`` / ``batch_size`` / ``grad_accum`` / ``compile``).
        data: The run's records and bad-image tracker (:func:`prepare`).
        model: The :class:`~mmgen.models.CaptionModel` (its data config, tokenizer and start tokens).
        features: The frozen-encoder feature cache, or None to decode images.
        dist: This process's rank and world size.
        micro_batch: Items per rank per accumulation micro-batch.
    """

    def __init__(self, cfg: Config, data: RunData, model, features, dist: D.DistState, micro_batch: int) -> None:
        self.cfg, self.data, self.model, self.features = cfg, data, model, features
        self.dist, self.micro_batch = dist, micro_batch
        self.dataset: Any = None
        """The training dataset, built at the first epoch."""
        self.loader: Any = None
        """The loader of a map-style dataset, built once (persistent workers; the sampler carries the epoch)."""

    def epoch(self, epoch: int, start_step: int) -> Iterator[list[dict]]:
        """Yield the micro-batches of each optimizer step of ``epoch`` from step ``start_step`` on.

        Every rank takes an interleaved share of one permutation per (seed, epoch); the union over ranks
        and accumulation micro-batches of step s is items [s*B, (s+1)*B) of the permutation, whatever the
        world size, so 1 and N processes see the same global batches. A stream (``data.streaming``) is
        read by :meth:`stream_epoch` instead.
        """
        from mmgen.data.datasets import EpochSampler, make_loader

        if self.data.streaming:
            yield from self.stream_epoch(epoch, start_step)
            return
        cfg, dist, tracker = self.cfg, self.dist, self.data.tracker
        ds = self._dataset()
        accum = cfg.train.grad_accum
        per_step = self.micro_batch * accum  # items per rank per optimizer step
        steps = len(ds) // cfg.train.batch_size
        if steps == 0:
            raise ConfigError(
                f"train.batch_size: {cfg.train.batch_size} is more than the {len(ds)} items of the training set"
            )
        if self.loader is None:  # built once: persistent workers, the sampler carries the epoch to them
            sampler = EpochSampler(
                len(ds), seed=cfg.train.seed, shuffle=True, rank=dist.rank, world_size=dist.world_size, drop_last=True
            )
            self.loader = make_loader(
                ds,
                self.micro_batch,
                self._collator(),
                sampler=sampler,
                num_workers=cfg.data.num_workers,
                seed=cfg.train.seed,
                drop_last=True,
                pin_memory=dist.device.type == "cuda",
                persistent_workers=True,
            )
        self.loader.sampler.set_epoch(epoch, start=start_step * per_step)
        if tracker is not None:
            tracker.epoch_size = steps * per_step  # this rank's items in the epoch
        group: list[dict] = []
        step = start_step
        for batch in self.loader:
            if tracker is not None and "bad" in batch:
                tracker.update(batch)
            group.append(batch)
            if len(group) == accum:
                if step >= steps:
                    return
                yield [b for b in group if b["image_ids"]]  # every image bad: an empty step
                group = []
                step += 1

    def stream_epoch(self, epoch: int, start_step: int) -> Iterator[list[dict]]:
        """The optimizer steps of one pass over this rank's part of a training stream.

        The epoch ends when the stream does (its length is never asked for); with several ranks, as soon as
        one rank's part has no full step left, so that every rank takes the same number of steps. Items are
        a function of (seed, epoch, image_id) and the stream's order (reshuffled per epoch from the seed), so
        resuming mid-epoch reads and drops the ``start_step`` steps the interrupted run had consumed: the
        same batches follow, at the cost of decoding the skipped ones again.
        """
        import itertools

        import torch

        from mmgen.data.datasets import make_loader

        cfg, dist, tracker = self.cfg, self.dist, self.data.tracker
        ds = self._dataset()
        ds.set_epoch(epoch)  # workers are started per epoch (not persistent), so they see it
        loader = make_loader(
            ds,
            self.micro_batch,
            self._collator(),
            num_workers=cfg.data.num_workers,
            seed=cfg.train.seed + epoch,
            drop_last=True,
            pin_memory=dist.device.type == "cuda",
        )
        if tracker is not None:
            tracker.epoch_size = None  # unknown: the bad-image fraction is checked at the end of the epoch
        batches, step = iter(loader), 0
        while True:
            group = list(itertools.islice(batches, cfg.train.grad_accum))
            short = float(len(group) < cfg.train.grad_accum)
            if D.all_reduce_sum(torch.tensor([short])).item() > 0:  # some rank's part has ended
                break
            if step >= start_step:
                for b in group:
                    if tracker is not None and "bad" in b:
                        tracker.update(b)
                yield [b for b in group if b["image_ids"]]  # every image bad: an empty step
            step += 1
        if step == 0:
            raise ConfigError(
                f"train.batch_size: the training stream {cfg.data.train} (split {cfg.data.train_split!r}) holds less "
                f"than one optimizer step (train.batch_size={cfg.train.batch_size}) on rank {dist.rank}"
            )

    def end_epoch(self, epoch: int) -> None:
        """Print the bad-image summary of the epoch (raises once too many images failed)."""
        tracker = self.data.tracker
        if tracker is None:
            return
        message = tracker.end_epoch(epoch)
        if message and self.dist.is_main:
            print(message)

    def _dataset(self) -> Any:
        """The training dataset (built once): cached features, a stream, or decoded images (uint8: 4x less to move
        between processes and to the device, normalised there by the model)."""
        cfg, data = self.cfg, self.data
        if self.features is not None:
            return self.features.train_dataset(
                data.train_records, cfg.data.caption_sampling, cfg.train.seed, cfg.data.captions_per_image
            )
        if self.dataset is not None:
            return self.dataset
        from mmgen.data.datasets import CaptionTrainDataset, StreamingCaptionDataset
        from mmgen.data.transforms import build_transform

        transform = build_transform(self.model.data_config, train=True, augment=cfg.data.augment, uint8=True)
        kind = StreamingCaptionDataset if data.streaming else CaptionTrainDataset
        ds = kind(
            data.train_records,
            transform,
            cfg.data.caption_sampling,
            seed=cfg.train.seed,
            max_pixels=cfg.data.max_pixels,
            captions_per_image=cfg.data.captions_per_image,
        )
        if cfg.data.preload and not data.streaming:
            from mmgen.data.preload import preload_images

            log = print if self.dist.is_main else None
            ds.preloaded = preload_images(
                data.train_records, transform, cfg.data.num_workers, cfg.data.max_pixels, log=log
            )
        self.dataset = ds
        return ds

    def _collator(self) -> Any:
        """The training collator: tokenised captions with images (or cached features)."""
        from mmgen.data.collate import CaptionCollator
        from mmgen.data.transforms import image_size

        cfg, model = self.cfg, self.model
        fixed = cfg.data.pad_to_max_length if cfg.data.pad_to_max_length is not None else cfg.train.compile
        pad = model.start_ids.numel() + cfg.model.max_caption_tokens if fixed else None  # one shape
        tok, prompt, max_tokens = model.tokenizer, cfg.model.prompt, cfg.model.max_caption_tokens
        if self.features is not None:
            return self.features.collator(tok, prompt, max_tokens, pad_to_multiple_of=pad)
        return CaptionCollator(
            tok, prompt, max_tokens, pad_to_multiple_of=pad, image_size=image_size(model.data_config)
        )


def batch_inputs(batch: dict, device) -> dict:
    """A loader batch as model inputs on ``device``: ids, labels, and cached features or pixels."""
    # no attention mask: batches are right-padded, so causal attention never lets a real token see padding
    inputs = {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "labels")}
    if "features" in batch:
        inputs["features"] = batch["features"].to(device, non_blocking=True)
    else:  # uint8 from the loader (4x less to copy), normalised by the model
        inputs["pixel_values"] = batch["pixel_values"].to(device, non_blocking=True)
    return inputs
