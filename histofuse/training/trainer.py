"""The phased trainer: each phase sets what trains and how fast, then runs epochs on Accelerate."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader

from histofuse.data.sampling import epoch_seed
from histofuse.metrics import classification_metrics, monitor_value
from histofuse.model import HybridModel
from histofuse.phase_plan import apply_phase, describe_rates, describe_trainable
from histofuse.recipe import PhaseConfig, Recipe
from histofuse.reporting import log, progress
from histofuse.rundir import RunDir
from histofuse.training.accel import prepare_phase, release, unwrap
from histofuse.training.checkpoint import load_weights, save_weights
from histofuse.training.epoch_checkpoint import Checkpoint, TrainingState, save_checkpoint
from histofuse.training.failures import FailedImages
from histofuse.training.faults import DivergenceWatch, NonFiniteLoss, non_finite_message
from histofuse.training.feature_cache import FeatureStore
from histofuse.training.feature_phase import CachedFeaturePhase, trains_on_cached_features
from histofuse.training.history import History, learning_rates
from histofuse.training.predict import predict, training_logits
from histofuse.training.processes import check_processes_agree, every_process_can_step, finite_everywhere
from histofuse.training.processes import mean_across_processes
from histofuse.training.trackers import Trackers
from histofuse.training.warmup import Warmup


class Trainer:
    """Runs a recipe's phases over one model, keeping the best weights by the monitored metric."""

    def __init__(
        self,
        *,
        model: HybridModel,
        recipe: Recipe,
        classes: list[str],
        accelerator: Accelerator,
        make_train_loader: Callable[[int, str], DataLoader],
        val_loader: DataLoader,
        criterion: nn.Module,
        hooks,
        run_dir: Path,
        meta: dict,
        dataset_size: int,
        trackers: Trackers,
        resume: Checkpoint | None = None,
        feature_store: FeatureStore | None = None,
    ):
        self.model = model
        # Cached features outlive the phase only when the caller shares a store (the folds of a cross-validation).
        self.feature_store = feature_store
        self.recipe = recipe
        self.training = recipe.training
        self.classes = classes
        self.accelerator = accelerator
        self.make_train_loader = make_train_loader
        self.val_loader = val_loader
        self.criterion = criterion
        self.hooks = hooks
        self.run_dir = run_dir
        self.meta = meta
        self.history = History(RunDir(run_dir).history, accelerator.is_main_process)
        self.trackers = trackers
        if resume:
            trackers.resume_after(resume.state.epoch)
        self.resume = resume
        self.state = resume.state if resume else TrainingState()
        self.failures = FailedImages(self.state.failed, recipe.data.max_failed_fraction, dataset_size)

    def fit(self) -> TrainingState:
        self.hooks.on_fit_start(run_dir=self.run_dir, recipe=self.recipe)
        first = 0
        if self.resume:
            self._restore_best_weights_of_checkpoint()
            self.resume.load_model(self.model)
            first = self.state.phase_index + int(self.state.phase_done)
        for index in range(first, len(self.recipe.phases)):
            continuing = self.resume is not None and index == self.state.phase_index and not self.state.phase_done
            if not continuing:
                self.state.phase_start = self._weights_to_start_phase(index)
            self._run_phase(index, self.recipe.phases[index], continuing)
        self.resume = None
        return self.state

    def _weights_to_start_phase(self, index: int) -> str:
        """Load what the phase starts from and say what it was: a line of history.csv per epoch keeps it."""
        state = self.state
        if index == 0:
            return "initial"
        if self.training.restore_best_between_phases and state.best_epoch:
            load_weights(self.model, self.run_dir)
            log.info(f"phase {index + 1} starts from the best weights so far (epoch {state.best_epoch})")
            return f"best of epoch {state.best_epoch}"
        return f"last of epoch {state.epoch}"

    def _restore_best_weights_of_checkpoint(self) -> None:
        """Best weights from an epoch past the checkpoint would be loaded between phases and tested at the end."""
        if self.accelerator.is_main_process and self.resume.restore_best(self.run_dir):
            restored = f"epoch {self.state.best_epoch}" if self.state.best_epoch else "none yet: removed the newer ones"
            log.info(f"best weights restored from {self.resume.path.name} ({restored})")
        self.accelerator.wait_for_everyone()

    def _run_phase(self, index: int, phase: PhaseConfig, continuing: bool) -> None:
        run = self._start_phase(index, phase, continuing)
        first = self.state.phase_epoch + 1 if continuing else 1
        for phase_epoch in range(first, phase.epochs + 1):
            if not self._run_epoch(index, phase, phase_epoch, run):
                break
        check_processes_agree(self.accelerator, run.model, phase.name)
        self.model = release(self.accelerator, run.model)
        self.hooks.on_phase_end(
            run_dir=self.run_dir, phase_index=index, phase=phase, model=self.model,
            process_index=self.accelerator.process_index,
        )

    def _start_phase(self, index: int, phase: PhaseConfig, continuing: bool) -> "PhaseRun":
        """What trains and how fast; the prepared model, optimizer and loaders; the resumed state, if any."""
        previous = self.recipe.phases[index - 1] if index else None
        plan = apply_phase(self.model, phase, f"phases[{index}]", previous)
        optimizer = self.hooks.make_optimizer(param_groups=plan.param_groups, training=self.training)
        scheduler = self.hooks.make_scheduler(optimizer=optimizer, training=self.training)
        model, optimizer, train_loader, val_loader = prepare_phase(
            self.accelerator, self.model, optimizer, self.make_train_loader(index, phase.augment), self.val_loader
        )
        self.model_in_phase, self.divergence = model, DivergenceWatch(index, phase)
        features, tiled = None, self.recipe.data.tiles is not None
        if trains_on_cached_features(phase, self.model, self.accelerator.num_processes, tiled):
            features = CachedFeaturePhase(
                accelerator=self.accelerator, recipe=self.recipe, index=index, model=model, train_loader=train_loader,
                val_loader=val_loader, store=self.feature_store,
            )
            self.failures.record(features.failed)
        state = self.state
        if continuing:
            # After prepare: the optimizer state then lands on the model's device.
            self.resume.load_optimizer_and_scheduler(optimizer, scheduler, self.accelerator.scaler)
            log.info(f"resuming phase '{phase.name}' at its epoch {state.phase_epoch + 1} (run epoch {state.epoch + 1})")
        else:
            state.phase_index, state.phase_epoch, state.phase_done, state.stale = index, 0, False, 0
        # After a resume's optimizer state is loaded: the ramp's progress is part of it.
        steps = math.ceil(phase.warmup_epochs * len(train_loader) / self.training.grad_accumulation) if features is None else 0
        self.warmup = Warmup(optimizer, steps)
        ramp = f", newly unfrozen groups warm up over {steps} steps" if self.warmup.groups else ""
        log.info(
            f"phase {index + 1}/{len(self.recipe.phases)} '{phase.name}': {phase.epochs} epochs, "
            f"trainable {describe_trainable(plan.trainable)}, lr {describe_rates(plan.param_groups)}{ramp}"
        )
        return PhaseRun(model, optimizer, scheduler, train_loader, val_loader, features)

    def _run_epoch(self, index: int, phase: PhaseConfig, phase_epoch: int, run: "PhaseRun") -> bool:
        """Train, validate, keep the best weights, record and checkpoint one epoch; False ends the phase."""
        state = self.state
        state.epoch += 1
        # Samples, augmentations and dropout follow from (seed, epoch) alone: a resumed run repeats them exactly.
        # The prepared loader passes this to its EpochSampler; left alone it would count its own epochs from 0.
        run.train_loader.set_epoch(state.epoch)
        set_seed(epoch_seed(self.recipe.seed, state.epoch), device_specific=True)
        started = time.perf_counter()
        try:
            if run.features is not None:
                def step(model, number, compute_loss):
                    return self._step(model, run.optimizer, number, compute_loss)

                train_loss = run.features.train_epoch(state.epoch, step, self.criterion)
                val = run.features.validate(len(self.classes))
            else:
                train_loss = self._train_epoch(run.model, run.optimizer, run.train_loader, phase, phase_epoch)
                val = predict(self.accelerator, run.model, run.val_loader, len(self.classes))
            if not np.isfinite(val.logits).all():  # the last step's update broke the weights
                raise NonFiniteLoss("validation", float(val.loss))
        except NonFiniteLoss as fault:
            self._stop_phase_on_fault(index, phase, phase_epoch, fault)
            return False
        diverging = self.divergence.add(train_loss)
        if diverging:
            log.warning(diverging)
            state.faults.append(diverging)
        self.failures.record(val.failed)
        self.failures.merge_across_processes(self.accelerator)
        self.failures.check_limit()
        metrics = classification_metrics(val.labels, val.probs, self.classes)
        score = monitor_value(metrics, val.loss, self.training.monitor)
        ramping = self.warmup.rates()
        run.scheduler.step(score)
        self.warmup.follow_scheduler(ramping)
        improved = self._keep_if_best(run.model, score, val.loss)
        early = self.training.early_stopping
        stop_early = early.enabled and state.stale >= early.patience and phase_epoch < phase.epochs
        state.phase_epoch = phase_epoch
        state.phase_done = stop_early or phase_epoch == phase.epochs
        record = self.history.add(
            phase=phase.name, phase_index=index, epoch=state.epoch, phase_epoch=phase_epoch,
            train_loss=train_loss, val_loss=val.loss, val_auc=metrics["auc"], val_accuracy=metrics["accuracy"],
            val_balanced_accuracy=metrics["balanced_accuracy"], **learning_rates(run.optimizer, self.model.backbones),
            seconds=time.perf_counter() - started, failed_images=len(state.failed), best=improved,
            start_weights=state.phase_start,
        )
        self._save_checkpoint(run.model, run.optimizer, run.scheduler)
        log.info(self.history.format(record))
        self.trackers.log(record, step=state.epoch)
        self.hooks.on_epoch_end(run_dir=self.run_dir, record=record)
        if stop_early:
            log.info(f"early stopping: no improvement in {state.stale} epochs; ending phase '{phase.name}'")
        return not stop_early

    def _keep_if_best(self, model, score: float, loss: float) -> bool:
        """Save the weights when they beat the best so far; count the epochs without a gain."""
        state = self.state
        if not state.improves(score, loss, self.training.monitor == "val_loss", self.training.early_stopping.min_delta):
            state.stale += 1
            return False
        state.best, state.best_loss, state.best_epoch, state.stale = score, loss, state.epoch, 0
        if self.accelerator.is_main_process:
            meta = {**self.meta, "epoch": state.epoch, "monitor": self.training.monitor, "best": score}
            save_weights(unwrap(self.accelerator, model), self.run_dir, meta)
        return True

    def _stop_phase_on_fault(self, index: int, phase: PhaseConfig, phase_epoch: int, fault: NonFiniteLoss) -> None:
        """A NaN/inf loss ends the phase; the run goes on from the best weights, the last good checkpoint kept."""
        message = non_finite_message(fault, index, phase, phase_epoch, self.state.best_epoch)
        log.error(message)
        self.state.faults.append(message)
        self.state.phase_done = True
        self.state.epoch -= 1  # that epoch never completed
        load_weights(unwrap(self.accelerator, self.model_in_phase), self.run_dir)

    def _save_checkpoint(self, model, optimizer, scheduler) -> None:
        """Best weights and the epoch checkpoint are complete on disk before any process moves on."""
        if self.training.checkpoints.enabled and self.accelerator.is_main_process:
            save_checkpoint(
                self.run_dir, self.state, unwrap(self.accelerator, model), optimizer, scheduler,
                self.training.checkpoints.keep, self.accelerator.scaler,
            )
        self.accelerator.wait_for_everyone()

    def _train_epoch(self, model, optimizer, loader, phase: PhaseConfig, phase_epoch: int) -> float:
        model.train()
        total, seen, step = 0.0, 0, 0
        with progress(f"{phase.name} {phase_epoch}/{phase.epochs}", len(loader)) as advance:
            for batch in loader:
                self.failures.record(batch["failed"])
                if self.accelerator.num_processes == 1:
                    self.failures.check_limit()
                if every_process_can_step(self.accelerator, batch):
                    step += 1
                    loss = self._step(
                        model, optimizer, step, lambda: self.criterion(training_logits(model, batch), batch["label"])
                    )
                    total += loss.item() * len(batch["label"])
                    seen += len(batch["label"])
                advance(f"loss {total / max(seen, 1):.4f}")
        return mean_across_processes(self.accelerator, total, seen)

    def _step(self, model, optimizer, step: int, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One batch: forward, backward, and the optimizer step when gradient accumulation is due.

        ``accelerator.backward`` divides the loss by the accumulation count, so
        every path goes through ``accumulate``: it steps every N batches and at
        the end of the epoch, and skips the distributed all-reduce in between.
        """
        with self.accelerator.accumulate(model):
            loss = compute_loss()
            if not finite_everywhere(self.accelerator, loss):
                raise NonFiniteLoss(step, loss.item())
            self.accelerator.backward(loss)
            if self.training.grad_clip > 0 and self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(model.parameters(), self.training.grad_clip)
            if self.accelerator.sync_gradients:
                self.warmup.before_step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss


@dataclass
class PhaseRun:
    """One phase's prepared objects; ``features`` when the phase trains on cached backbone features."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    train_loader: DataLoader
    val_loader: DataLoader
    features: CachedFeaturePhase | None
