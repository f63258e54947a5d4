"""The training loop: one code path for CPU, one GPU and torchrun-launched DDP / FSDP2.

Loss normalisation is by the number of caption tokens in the whole optimizer step (all ranks,
all accumulation micro-batches), so 1 process, N processes and gradient accumulation compute the
same gradient for the same global batch.
"""

from __future__ import annotations

import contextlib
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mmgen import distributed as D
from mmgen.config import Config, ConfigError
from mmgen.errors import RunFailed
from mmgen.evaluation.collapse import collapse_warning
from mmgen.models.decoder import check_decoder_config
from mmgen.runtime import set_threads
from mmgen.training.checkpoint import refuse_non_finite_weights
from mmgen.training.ema import average_state, averaged, build_average, restore_average
from mmgen.training.levers import check_levers, forward_context
from mmgen.training.logs import RunLogger
from mmgen.training.rng import seed_everything
from mmgen.training.run_card import run_card, training_data
from mmgen.training.run_data import batch_inputs
from mmgen.training.schedule import build_optimizer, build_scheduler
from mmgen.training.state import TrainState

if TYPE_CHECKING:
    from mmgen.models import CaptionOutput


class NonFiniteLossError(RunFailed):
    """Raised after ``train.max_bad_steps`` consecutive steps with a NaN/inf loss."""


class Trainer:
    """Builds everything a run needs from a :class:`Config` and runs it.

    A new run needs a run directory (``train.out_dir``) free of an earlier run's files, unless
    ``overwrite`` (see :mod:`mmgen.training.rundir`); rank 0 holds the directory's lock until
    :meth:`fit` ends. Resuming a finished run (one that ended under the current ``train.max_steps``)
    builds and writes nothing: ``finished`` says so and :meth:`fit` returns at once.

    Args:
        cfg: The resolved configuration.
        resume: A run directory to continue from its latest checkpoint (config taken from there).
        overwrite: Start a new run in ``train.out_dir`` even if an earlier run left files there (deleted).

    Raises:
        mmgen.errors.RunDirError: The run directory holds another run's or unrelated files, or another
            trainer holds it.
    """

    def __init__(self, cfg: Config, resume: str | Path | None = None, overwrite: bool = False):
        from mmgen.training import run_data as tdata
        from mmgen.training.rundir import check_resume, claim_run_dir, finished_run

        if cfg.train.objective != "xe" and type(self) is Trainer:
            raise ValueError(
                f"train.objective={cfg.train.objective}: build the trainer with "
                "mmgen.training.objectives.build_trainer(cfg)"
            )
        if resume is not None and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue a run, or start over in its place")
        set_threads(cfg.train.threads)  # before any work; None leaves torch's setting
        self.dist = D.init_distributed()
        say = print if self.dist.is_main else None
        self.levers = check_levers(cfg.train, self.dist.device, say)  # GPU-only levers fail here, before any work
        check_decoder_config(cfg.model.decoder)  # a misspelt config_overrides key too
        cfg = tdata.resolve_data_source(cfg, print if self.dist.is_main else None)  # config.yaml says what trains
        self.cfg = cfg
        self.run_dir = Path(resume) if resume else Path(cfg.train.out_dir)
        self.device = self.dist.device
        if resume is not None:
            check_resume(self.run_dir, cfg)  # overrides it cannot honour, before anything is read or written
        self.finished = finished_run(self.run_dir, cfg) if resume is not None else None
        if self.finished:
            if self.dist.is_main:
                print(self.finished)
            return
        lock = claim_run_dir(self.run_dir, cfg, self.dist.is_main, resume is not None, overwrite)
        self._lock = weakref.finalize(self, lock.release)  # also released if the trainer is dropped unrun
        try:
            self._build(cfg, resume)
        except BaseException:
            self._lock()
            raise

    def _build(self, cfg: Config, resume: str | Path | None) -> None:
        from mmgen.training import run_data as tdata
        from mmgen.training.checkpoint import latest_checkpoint, load_latest_checkpoint
        from mmgen.training.rundir import save_run_config

        seed_everything(cfg.train.seed)
        if not resume:  # a new run says what trains first; a resumed one once its checkpoint has loaded
            save_run_config(self.run_dir, cfg, self.dist.is_main)
        self.data = tdata.prepare(cfg, self.run_dir, self.dist)
        self.card_data = training_data(cfg, self.data.train_records)  # the model cards' "training data"
        tokenizer = tdata.prepare_tokenizer(cfg, self.data.train_records, self.run_dir, self.dist)
        from mmgen.models import CaptionModel

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = CaptionModel(cfg.model, tokenizer).to(self.device)
        self.model.generation_config = cfg.eval.generation
        self.model.check_generation(key="eval.generation.max_new_tokens")  # before a step is spent on it
        self.state = TrainState()
        ckpt = latest_checkpoint(self.run_dir) if resume else None
        if resume and ckpt is None and self.dist.is_main:
            print(
                f"{self.run_dir}: no checkpoint yet (the run stopped before its first save, train.save_every="
                f"{cfg.train.save_every}): training starts again from step 0"
            )
        if cfg.train.init_from and ckpt is None:
            from mmgen.models.files import load_matching_weights

            missing = load_matching_weights(self.model, cfg.train.init_from)
            if self.dist.is_main:
                print(f"initialised from {cfg.train.init_from} ({len(missing)} tensors kept their new init)")
        if ckpt is None:
            seed_everything(cfg.train.seed + self.dist.rank)
        self.features = tdata.feature_cache(cfg, self.model, self.data, self.run_dir, self.dist)
        self.levers.apply(self.model, print if self.dist.is_main else None)  # fused loss, float8 layers
        # FSDP2 shards parameters in place: wrap before the optimizer takes them
        self.wrapped = D.wrap_model(self.model, self.dist, cfg.train.distributed)
        self.sharded = D.is_sharded(self.wrapped)
        if self.sharded and cfg.train.objective != "xe":
            raise ConfigError("train.distributed: fsdp trains train.objective=xe only; SCST samples with ddp")
        self.average = build_average(self.model, cfg.train.ema_decay, self.sharded)  # train.ema_decay
        self._evaluated_at = -1  # the step of the last evaluation
        self.last_scores: dict = {}  # its scores (rank 0), for the model cards
        self._twin: torch.nn.Module | None = None  # FSDP: rank 0's unsharded copy for saving and evaluating
        self.optimizer = build_optimizer(self.model, cfg.train, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.train)
        found = load_latest_checkpoint(self.run_dir, self.model, self.optimizer, self.scheduler) if ckpt else None
        if found is not None:  # the newest checkpoint that loads (a damaged one is named and skipped)
            ckpt, state = found
            restore_average(self.average, state, ckpt)
            self.state = TrainState(**state)
            self.state.finished_max_steps = None  # a finished run continues when train.max_steps was raised
            if self.dist.is_main:
                print(f"resumed from {ckpt} at step {self.state.step}")
        if resume:  # every check has passed: the overrides (e.g. a raised train.max_steps) become the run's
            save_run_config(self.run_dir, cfg, self.dist.is_main)
        # what a training forward calls (:meth:`forward`): the wrapped model, compiled with train.compile
        self.step_module = (
            torch.compile(self.wrapped, mode=cfg.train.compile_mode) if cfg.train.compile else self.wrapped
        )
        # a resumed run's records end at its checkpoint's step (what a killed run logged after it is redone)
        self.logger = RunLogger(self.run_dir, cfg, self.dist.is_main, resumed_at=self.state.step if resume else None)
        world, accum = self.dist.world_size, cfg.train.grad_accum
        if cfg.train.batch_size % (world * accum):
            raise ConfigError(
                f"train.batch_size: {cfg.train.batch_size} must be divisible by "
                f"world size x grad_accum = {world * accum}"
            )
        self.micro_batch = cfg.train.batch_size // (world * accum)
        self.batches = tdata.TrainBatches(cfg, self.data, self.model, self.features, self.dist, self.micro_batch)
        # fused AdamW can skip a step on the device (its found_inf input): no host sync per step
        self.device_skip = bool(self.optimizer.defaults.get("fused"))
        self._warm_at: float | None = None  # train.schedule=time: the clock when warmup ended
        self.clock = time.perf_counter  # seconds; what train.max_time and train.schedule=time follow
        self._bad = torch.zeros(3, dtype=torch.long, device=self.device)  # skipped since read, run, longest run

    # -- one optimizer step ---------------------------------------------------------------------
    def _grad_sync(self, last: bool):
        """DDP gradient all-reduce only on the last accumulation micro-batch (``no_sync`` before it)."""
        if last or not self.dist.distributed or not hasattr(self.wrapped, "no_sync"):
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    def forward(self, inputs: dict[str, torch.Tensor], **options) -> CaptionOutput:
        """One training forward of a micro-batch: :attr:`step_module` (the wrapped model, compiled with
        ``train.compile``) under the run's autocast and attention kernels (:func:`forward_context`)."""
        with forward_context(self.cfg.train, self.device):
            return self.step_module(**inputs, **options)

    def _micro_losses(self, batches: list[dict]) -> tuple[torch.Tensor, int]:
        """Forward/backward over the accumulation micro-batches; returns (summed loss, images)."""
        dev = self.device
        n_tok = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        total_tok = int(D.all_reduce_sum(torch.tensor([n_tok], dtype=torch.float64)).item())
        scale = self.dist.world_size / max(total_tok, 1)  # DDP averages gradients over ranks
        loss_sum = torch.zeros((), device=dev, dtype=torch.float32)
        images = 0
        for i, b in enumerate(batches):
            ctx = self._grad_sync(last=i == len(batches) - 1)
            inputs = batch_inputs(b, dev)
            tok = int((b["labels"][:, 1:] != -100).sum())
            self.levers.step_begins()  # CUDA graphs: the previous micro-batch's outputs are done with
            with ctx:
                out = self.forward(inputs, **self.levers.forward_kwargs)
                part = out.loss.float() * tok  # summed token loss of this micro-batch
                (part * scale).backward()
            loss_sum += part.detach()
            images += len(b["image_ids"])  # K captions per image give K rows of input_ids
        loss_sum = D.all_reduce_sum(loss_sum) / max(total_tok, 1)
        return loss_sum, images

    def _optimizer_step(self, batches: list[dict]) -> tuple[float | torch.Tensor, int, bool]:
        """One update; the loss comes back as a device tensor when the finiteness check runs on the device."""
        if not batches:  # every image of the step failed to decode (counted by the bad-image tracker)
            self.state.skipped_steps += 1
            return float("nan"), 0, False
        loss, images = self._micro_losses(batches)
        if self.device_skip:
            return self._device_checked_step(loss), images, True
        finite = bool(torch.isfinite(loss).item())
        if not finite:
            self.optimizer.zero_grad(set_to_none=self.levers.grads_to_none)
            self.state.bad_steps_in_a_row += 1
            self.state.skipped_steps += 1
            warnings.warn(f"step {self.state.step}: non-finite loss ({loss.item()}), step skipped", stacklevel=2)
            if self.state.bad_steps_in_a_row >= self.cfg.train.max_bad_steps:
                raise NonFiniteLossError(
                    f"{self.state.bad_steps_in_a_row} consecutive steps had a non-finite loss (train.max_bad_steps="
                    f"{self.cfg.train.max_bad_steps}); lower train.lr, check the data, or use precision fp32"
                )
            return float("nan"), images, False
        self.state.bad_steps_in_a_row = 0
        if self.cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=self.levers.grads_to_none)
        self.scheduler.step()
        return float(loss.item()), images, True

    def _device_checked_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Clip and step with fused AdamW, which leaves the weights and moments untouched when the loss or
        the gradient norm is not finite; the counts stay on the device until :meth:`_read_bad_steps`."""
        bad = ~torch.isfinite(loss)
        if self.cfg.train.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            bad = bad | ~torch.isfinite(norm)
        self.optimizer.found_inf = bad.float()  # 0-d: read by the fused kernel
        self.optimizer.step()
        del self.optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=self.levers.grads_to_none)
        self.scheduler.step()
        b = bad.long()
        run = (self._bad[1] + b) * b
        self._bad.copy_(torch.stack([self._bad[0] + b, run, torch.maximum(self._bad[2], run)]))
        return loss.detach()

    def _read_bad_steps(self) -> None:
        """Account the device-side skips since the last read (one host sync); stop after too many in a row."""
        if not self.device_skip:
            return
        skipped, run, longest = (int(v) for v in self._bad.tolist())
        self._bad.copy_(torch.tensor([0, run, 0]))
        self.state.bad_steps_in_a_row = run
        if skipped:
            self.state.skipped_steps += skipped
            warnings.warn(
                f"{skipped} step(s) up to step {self.state.step} had a non-finite loss or gradient norm and were "
                "skipped",
                stacklevel=2,
            )
        if longest >= self.cfg.train.max_bad_steps:
            raise NonFiniteLossError(
                f"{longest} consecutive steps had a non-finite loss (train.max_bad_steps="
                f"{self.cfg.train.max_bad_steps}); lower train.lr, check the data, or use precision fp32"
            )

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until ``train.max_steps``, ``train.max_time`` or early stop; returns the last eval scores
        (``{}`` at once for a ``finished`` run). The run directory's lock is released when it returns or fails.

        Raises:
            NonFiniteLossError: ``train.max_bad_steps`` consecutive non-finite losses.
            mmgen.training.checkpoint.NonFiniteWeightsError: The weights diverged to NaN / infinity before a
                checkpoint, an evaluation or the final model (none of which is written).
        """
        if self.finished:
            return {}
        try:
            return self._fit()
        finally:
            self._lock()

    def _fit(self) -> dict:
        from mmgen.progress import progress, step_lines

        cfg, st = self.cfg, self.state
        start = self.clock()
        every = step_lines(cfg.train.max_steps, cfg.train.log_every)  # off a terminal: a plain line every N steps
        bar = progress(
            total=cfg.train.max_steps, initial=st.step, disable=not self.dist.is_main, desc="train", every=every
        )
        last_scores, spent = {}, st.train_seconds  # spent: by the earlier sessions of the run
        window_images, window_t = 0, self.clock()
        stop = st.step >= cfg.train.max_steps
        self.model.train()
        while not stop:
            for batches in self.batches.epoch(st.epoch, st.batch_in_epoch):
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                loss, images, stepped = self._optimizer_step(batches)
                if stepped and self.average is not None:
                    self.average.update(self.model)
                st.step += 1
                st.batch_in_epoch += 1
                st.train_seconds = spent + self.clock() - start
                window_images += images * self.dist.world_size
                bar.update(1)
                if st.step % cfg.train.log_every == 0 or st.step == cfg.train.max_steps:
                    loss = float(loss)  # the one host sync of a logging interval
                    self._read_bad_steps()
                    dt = self.clock() - window_t
                    ips = window_images / max(dt, 1e-9)
                    extras = self._log_extras()
                    bar.set_postfix(
                        loss=f"{loss:.4f}",
                        lr=f"{lr:.2e}",
                        img_s=f"{ips:.0f}",
                        **{k: f"{v:.3g}" for k, v in extras.items()},
                    )
                    self.logger.log(
                        {
                            "step": st.step,
                            "epoch": st.epoch,
                            "loss": loss,
                            "lr": lr,
                            "images_per_s": ips,
                            "time": self.clock() - start,
                            **extras,
                        }
                    )
                    window_images, window_t = 0, self.clock()
                stop = self._after_step(start)
                if cfg.eval.every and st.step % cfg.eval.every == 0:
                    last_scores = self.evaluate()
                    stop = stop or self._early_stop()
                if st.step % cfg.train.save_every == 0 and not stop:
                    self.save()
                if stop:
                    break
            else:
                st.epoch += 1
                st.batch_in_epoch = 0
                self.batches.end_epoch(st.epoch - 1)
        bar.close()
        if self._evaluated_at != st.step:  # the same decision on every rank (evaluate holds collectives)
            last_scores = self.evaluate()
        refuse_non_finite_weights(self.model, self.state.step, self.run_dir / "final")
        self.save_final()
        st.finished_max_steps = max(cfg.train.max_steps, st.step)  # in the last checkpoint, written after final/
        self.save()
        self.logger.close()
        D.barrier()
        return last_scores

    def _log_extras(self) -> dict[str, float]:
        """Objective-specific means since the last log line, for metrics.jsonl and the bar (none here)."""
        return {}

    def _after_step(self, start: float) -> bool:
        tc = self.cfg.train
        stop = self.state.step >= tc.max_steps
        if tc.max_time is not None:
            now = self.clock() - start
            over, now = D.all_reduce_sum(torch.tensor([float(now >= tc.max_time), now], dtype=torch.float64)).tolist()
            stop = stop or over > 0
            if tc.schedule == "time":
                self._follow_the_clock(now / self.dist.world_size)  # the ranks' mean: one lr everywhere
        return stop

    def _follow_the_clock(self, now: float) -> None:
        """``train.schedule: time``: set the next step's learning rates from the share of the budget spent."""
        from mmgen.training.schedule import time_lr_factor

        tc = self.cfg.train
        if self._warm_at is None and self.state.step >= max(1, tc.warmup_steps):
            self._warm_at = now  # after warmup (and the first step's compilation / preloading)
        begin = now if self._warm_at is None else self._warm_at
        fraction = (now - begin) / max(tc.max_time - begin, 1e-9)
        factor = time_lr_factor(self.state.step, tc.warmup_steps, fraction, tc.min_lr_ratio)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor

    def _early_stop(self) -> bool:
        p = self.cfg.eval.early_stop_patience
        return p > 0 and self.state.evals_without_improvement >= p

    # -- evaluation / saving ----------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Caption the validation split (rank 0), score it, keep ``best/`` by ``eval.metric``."""
        from mmgen.training.checkpoint import save_best
        from mmgen.training.validation import evaluate

        scores: dict = {}
        self._evaluated_at = self.state.step
        if not self.data.val_records:
            return scores
        refuse_non_finite_weights(self.model, self.state.step, self.run_dir / "best", "evaluating")
        model = self.unsharded()  # the model itself, or (FSDP) rank 0's full copy; collective
        if self.dist.is_main:
            with averaged(self.average, model):  # what is evaluated and kept as best/ (train.ema_decay)
                model.eval()
                data = self.data
                scores = evaluate(model, data.val_records, self.cfg, self.device, data.val_scenes, self.dist.is_main)
                model.train()
                if self.state.record_eval(self.cfg.eval.metric, scores):
                    metrics = {"step": self.state.step, **scores}
                    card = run_card(self, "best", scores, model)
                    save_best(self.run_dir, model, metrics, generation=self.cfg.eval.generation, card=card)
            self.last_scores = scores
            entry = {"step": self.state.step, "eval": scores}
            self.state.history.append(entry)
            self.logger.log(entry)
            print(
                f"\nstep {self.state.step} eval: "
                + "  ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
            )
            if collapse := collapse_warning({k.removeprefix("collapse_"): v for k, v in scores.items()}):
                print(f"step {self.state.step}: warning: {collapse}")  # its own line, not lost in the scores
        D.barrier()
        if self.dist.distributed:  # every rank follows rank 0's early-stop counter
            t = D.broadcast(torch.tensor([float(self.state.evals_without_improvement)]))
            self.state.evals_without_improvement = int(t.item())
        return scores

    def save(self) -> None:
        from mmgen.training.checkpoint import gather_rng_states, save_checkpoint

        self._read_bad_steps()
        refuse_non_finite_weights(self.model, self.state.step, self.run_dir / f"checkpoints/step_{self.state.step:08d}")
        state = {**self.state.__dict__, **average_state(self.average)}
        rng = gather_rng_states() if self.dist.distributed else None  # collective: every rank's RNG
        model = self.unsharded()  # collective under FSDP, like the optimizer state below
        optim = D.full_optimizer_state(self.wrapped, self.optimizer) if self.sharded else None
        if self.dist.is_main:
            save_checkpoint(
                self.run_dir,
                self.state.step,
                model,
                self.optimizer,
                self.scheduler,
                state,
                keep_last=self.cfg.train.keep_last,
                generation=self.cfg.eval.generation,
                rng_states=rng,
                optimizer_state=optim,
                card=run_card(self, f"step_{self.state.step:08d}", self.last_scores, model),
            )
        D.barrier()

    def save_final(self) -> None:
        model = self.unsharded()
        if self.dist.is_main:
            with averaged(self.average, model):
                card = run_card(self, "final", self.last_scores, model)
                model.save_pretrained(self.run_dir / "final", generation=self.cfg.eval.generation, card=card)
            self.logger.plot(card=self.run_dir / "final" / "README.md")

    def unsharded(self) -> torch.nn.Module:
        """The model with whole tensors: itself, or under FSDP (a collective: every rank calls it) an unsharded
        copy on rank 0 that holds the current weights (the other ranks get the sharded model back)."""
        if not self.sharded:
            return self.model
        from mmgen.models import CaptionModel
        from mmgen.transformers_glue import base_model

        state = D.full_model_state(self.wrapped)  # on rank 0's CPU
        if not self.dist.is_main:
            return self.model
        if self._twin is None:
            hf = base_model(self.model.decoder).config
            self._twin = CaptionModel(self.cfg.model, self.model.tokenizer, load_weights=False, decoder_hf_config=hf)
            self._twin.generation_config = self.cfg.eval.generation
        self._twin.load_state_dict(state)
        return self._twin.to(self.device)
