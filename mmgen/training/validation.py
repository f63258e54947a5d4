"""Validation inside a training run: the caption scores and the teacher-forced loss on the validation records.

:func:`evaluate` is what the trainer calls every ``eval.every`` steps and at the end; it captions with
``eval.generation`` (the run's one generation config) through ``CaptionModel.generate``.
"""

from __future__ import annotations

import warnings


def validation_loss(trainer, model) -> float:
    """Teacher-forced cross-entropy per caption token over every (validation image, reference) pair.

    The same loss as training (evaluation transform, no augmentation), so it sits next to the training
    loss in ``metrics.jsonl``: the gap between the two is the overfitting. Undecodable images are left out
    (:func:`evaluate` counts and names them).
    """
    import torch
    from tqdm import tqdm

    from mmgen.data.collate import CaptionCollator
    from mmgen.data.datasets import CaptionTrainDataset, make_loader
    from mmgen.data.transforms import build_transform, image_size

    cfg = trainer.cfg
    transform = build_transform(model.data_config, train=False, uint8=True)
    ds = CaptionTrainDataset(trainer.data.val_records, transform, "all", max_pixels=cfg.data.max_pixels)
    collate = CaptionCollator(
        model.tokenizer, cfg.model.prompt, cfg.model.max_caption_tokens, image_size=image_size(model.data_config)
    )
    total = torch.zeros((), dtype=torch.float64, device=trainer.device)
    tokens = 0
    with torch.no_grad():
        loader = make_loader(ds, cfg.eval.batch_size, collate, num_workers=cfg.data.num_workers)
        bar = tqdm(loader, desc="val loss", disable=not trainer.dist.is_main, dynamic_ncols=True, leave=False)
        for b in bar:
            n = int((b["labels"][:, 1:] != -100).sum())
            if n == 0:
                continue
            with trainer.forward_context():
                out = model(**trainer.batch_inputs(b))
            total += out.loss.double() * n
            tokens += n
    return float(total / max(tokens, 1))


def evaluate(trainer, model=None) -> dict:
    """Caption the validation records with the in-loop generation settings and score them (``model``:
    the trainer's model by default)."""
    from mmgen.evaluation.evaluate import evaluate_model

    cfg = trainer.cfg
    model = trainer.model if model is None else model
    result = evaluate_model(
        model,
        trainer.data.val_records,
        cfg.eval.generation,
        batch_size=cfg.eval.batch_size,
        device=trainer.device,
        num_workers=cfg.data.num_workers,
        precision=cfg.train.precision,
        progress="transient" if trainer.dist.is_main else False,  # the training bar would look frozen meanwhile
    )
    model.decode_cache.clear()  # decoding buffers are not needed while training
    collapse = {f"collapse_{k}": v for k, v in result.collapse.items() if isinstance(v, (int, float))}
    scores = {"loss": validation_loss(trainer, model), **result.scores, **collapse}
    if result.failed:  # left out of the scores and of the loss: said, and counted in metrics.jsonl
        scores["failed_images"] = float(len(result.failed))
        named = "; ".join(f"{i}: {reason}" for i, reason in result.failed[:5])
        warnings.warn(
            f"{len(result.failed)} validation image(s) could not be decoded and are left out of the evaluation "
            f"({named}{'; ...' if len(result.failed) > 5 else ''})",
            stacklevel=2,
        )
    scenes = trainer.data.val_scenes
    if scenes:
        from mmgen.scenes.accuracy import scene_accuracy

        acc = scene_accuracy(result.captions, scenes)
        scores.update({f"scene_{k}": v for k, v in acc.items() if isinstance(v, float)})
    return scores
