"""The phased trainer: each phase sets what trains and how fast, then runs epochs on Accelerate."""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from rich.markup import escape
from torch import nn
from torch.utils.data import DataLoader

from histofuse.data.sampling import epoch_seed
from histofuse.errors import DataError, HistofuseError
from histofuse.metrics import classification_metrics, monitor_value
from histofuse.model import HybridModel, apply_phase, describe_rates
from histofuse.recipe import PhaseConfig, Recipe
from histofuse.training.accel import prepare_phase, release, unwrap
from histofuse.training.checkpoint import load_weights, save_weights
from histofuse.training.epoch_checkpoint import Checkpoint, TrainingState, save_checkpoint
from histofuse.training.feature_cache import FeatureStore
from histofuse.training.history import History
from histofuse.training.predict import Predictions, predict
from histofuse.training.progress import EpochProgress
from histofuse.training.trackers import Trackers
from histofuse.training.warmup import Warmup
from histofuse.rundir import RunDir


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
        console,
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
        self.console = console
        self.dataset_size = dataset_size
        self.history = History(RunDir(run_dir).history, accelerator.is_main_process)
        self.trackers = trackers
        if resume:
            trackers.resume_after(resume.state.epoch)
        self.resume = resume
        self.state = resume.state if resume else TrainingState()
        # Minimising the loss is maximising its negative; one comparison serves every monitor.
        self.sign = -1.0 if self.training.monitor == "val_loss" else 1.0

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
            self.accelerator.print(f"phase {index + 1} starts from the best weights so far (epoch {state.best_epoch})")
            return f"best of epoch {state.best_epoch}"
        return f"last of epoch {state.epoch}"

    def _restore_best_weights_of_checkpoint(self) -> None:
        """Best weights from an epoch past the checkpoint would be loaded between phases and tested at the end."""
        if self.accelerator.is_main_process and self.resume.restore_best(self.run_dir):
            restored = f"epoch {self.state.best_epoch}" if self.state.best_epoch else "none yet: removed the newer ones"
            self.accelerator.print(f"best weights restored from {self.resume.path.name} ({restored})")
        self.accelerator.wait_for_everyone()

    def _run_phase(self, index: int, phase: PhaseConfig, continuing: bool) -> None:
        previous = self.recipe.phases[index - 1] if index else None
        plan = apply_phase(self.model, phase, f"phases[{index}]", previous)
        optimizer = self.hooks.make_optimizer(param_groups=plan.param_groups, training=self.training)
        scheduler = self.hooks.make_scheduler(optimizer=optimizer, training=self.training)
        model, optimizer, train_loader, val_loader = prepare_phase(
            self.accelerator, self.model, optimizer, self.make_train_loader(index, phase.augment), self.val_loader
        )
        self.model_in_phase, self.phase_losses, self.warned_diverging = model, [], False
        banks = self._feature_banks(index, model, train_loader, val_loader) if self._caches(phase) else None
        state = self.state
        if continuing:
            # After prepare: the optimizer state then lands on the model's device.
            self.resume.load_optimizer_and_scheduler(optimizer, scheduler, self.accelerator.scaler)
            first, stale = state.phase_epoch + 1, state.stale
            self.accelerator.print(f"resuming phase '{phase.name}' at its epoch {first} (run epoch {state.epoch + 1})")
        else:
            first, stale = 1, 0
            state.phase_index, state.phase_epoch, state.phase_done = index, 0, False
        # After a resume's optimizer state is loaded: the ramp's progress is part of it.
        steps = math.ceil(phase.warmup_epochs * len(train_loader) / self.training.grad_accumulation) if banks is None else 0
        self.warmup = Warmup(optimizer, steps)
        ramp = f", newly unfrozen groups warm up over {steps} steps" if self.warmup.groups else ""
        self.accelerator.print(
            f"phase {index + 1}/{len(self.recipe.phases)} '{phase.name}': {phase.epochs} epochs, "
            f"trainable {_describe(plan.trainable)}, lr {describe_rates(plan.param_groups)}{ramp}"
        )
        for phase_epoch in range(first, phase.epochs + 1):
            state.epoch += 1
            # Samples, augmentations and dropout follow from (seed, epoch) alone: a resumed run repeats them exactly.
            # The prepared loader passes this to its EpochSampler; left alone it would count its own epochs from 0.
            train_loader.set_epoch(state.epoch)
            set_seed(epoch_seed(self.recipe.seed, state.epoch), device_specific=True)
            started = time.perf_counter()
            try:
                if banks is not None:
                    banks[2].set_epoch(state.epoch)
                    train_loss = self._train_epoch_on_features(model, optimizer, banks, phase, phase_epoch)
                    val = banks[1].predict(unwrap(self.accelerator, model), len(self.classes), self.accelerator.autocast)
                else:
                    train_loss = self._train_epoch(model, optimizer, train_loader, phase, phase_epoch)
                    val = self.predict(model, val_loader)
                if not np.isfinite(val.logits).all():  # the last step's update broke the weights
                    raise NonFiniteLoss("validation", float(val.loss))
            except NonFiniteLoss as fault:
                self._stop_phase_on_fault(index, phase, phase_epoch, fault)
                break
            self._warn_if_diverging(index, phase, train_loss)
            self._record_failures(val.failed)
            self._merge_failures_across_processes()
            self._check_failure_limit()
            metrics = classification_metrics(val.labels, val.probs, self.classes)
            score = monitor_value(metrics, val.loss, self.training.monitor)
            ramping = self.warmup.rates()
            scheduler.step(score)
            self.warmup.follow_scheduler(ramping)
            improved = self._improves(score, val.loss)
            if improved:
                state.best, state.best_loss, state.best_epoch, stale = score, val.loss, state.epoch, 0
                if self.accelerator.is_main_process:
                    meta = {**self.meta, "epoch": state.epoch, "monitor": self.training.monitor, "best": score}
                    save_weights(unwrap(self.accelerator, model), self.run_dir, meta)
            else:
                stale += 1
            early = self.training.early_stopping
            stop_early = early.enabled and stale >= early.patience and phase_epoch < phase.epochs
            state.phase_epoch, state.stale = phase_epoch, stale
            state.phase_done = stop_early or phase_epoch == phase.epochs
            record = self.history.add(
                phase=phase.name, phase_index=index, epoch=state.epoch, phase_epoch=phase_epoch,
                train_loss=train_loss, val_loss=val.loss, val_auc=metrics["auc"], val_accuracy=metrics["accuracy"],
                val_balanced_accuracy=metrics["balanced_accuracy"], **self._learning_rates(optimizer),
                seconds=time.perf_counter() - started, failed_images=len(state.failed), best=improved,
                start_weights=state.phase_start,
            )
            self._save_checkpoint(model, optimizer, scheduler)
            self.accelerator.print(self.history.format(record))  # plain print: no markup to misread
            self.trackers.log(record, step=state.epoch)
            self.hooks.on_epoch_end(run_dir=self.run_dir, record=record)
            if stop_early:
                self.accelerator.print(f"early stopping: no improvement in {stale} epochs; ending phase '{phase.name}'")
                break
        self._check_processes_agree(model, phase.name)
        self.model = release(self.accelerator, model)
        self.hooks.on_phase_end(
            run_dir=self.run_dir, phase_index=index, phase=phase, model=self.model,
            process_index=self.accelerator.process_index,
        )

    def _stop_phase_on_fault(self, index: int, phase: PhaseConfig, phase_epoch: int, fault: "NonFiniteLoss") -> None:
        """A NaN/inf loss ends the phase; the run goes on from the best weights, the last good checkpoint kept."""
        state = self.state
        step = "validation" if fault.step == "validation" else f"step {fault.step}"
        where = f"phase '{phase.name}' (phases[{index}]), its epoch {phase_epoch}, {step}"
        if not state.best_epoch:
            raise HistofuseError(
                f"the training loss became {fault.value} at {where}, before any epoch produced usable weights. "
                f"Lower phases[{index}].lr (head {phase.lr.head:g}, backbone {phase.lr.backbone:g}) or keep training.grad_clip > 0."
            )
        message = (
            f"the training loss became {fault.value} at {where}: phase stopped. Continuing from the best weights "
            f"(epoch {state.best_epoch}); the last complete epoch checkpoint is kept. Lower phases[{index}].lr "
            f"(head {phase.lr.head:g}, backbone {phase.lr.backbone:g}) or keep training.grad_clip > 0."
        )
        self.console.print(f"error: {message}", markup=False)
        state.faults.append(message)
        state.phase_done = True
        state.epoch -= 1  # that epoch never completed
        load_weights(unwrap(self.accelerator, self.model_in_phase), self.run_dir)

    def _warn_if_diverging(self, index: int, phase: PhaseConfig, train_loss: float) -> None:
        """Three rising epochs ending well above the phase's best: reported, not silently trained through."""
        losses = self.phase_losses
        losses.append(train_loss)
        rising = len(losses) >= 4 and losses[-4] < losses[-3] < losses[-2] < losses[-1] and losses[-1] > 1.5 * min(losses)
        if rising and not self.warned_diverging:
            message = (
                f"phase '{phase.name}': the training loss rose three epochs in a row ({losses[-4]:.4f} -> {losses[-1]:.4f}); "
                f"the learning rate may be too high (phases[{index}].lr)"
            )
            self.console.print(f"warning: {message}", markup=False)
            self.state.faults.append(message)
            self.warned_diverging = True

    def _save_checkpoint(self, model, optimizer, scheduler) -> None:
        """Best weights and the epoch checkpoint are complete on disk before any process moves on."""
        if self.training.checkpoints.enabled and self.accelerator.is_main_process:
            save_checkpoint(
                self.run_dir, self.state, unwrap(self.accelerator, model), optimizer, scheduler,
                self.training.checkpoints.keep, self.accelerator.scaler,
            )
        self.accelerator.wait_for_everyone()

    def _check_processes_agree(self, model, phase_name: str) -> None:
        """Every process must end a phase with the same weights; a drift means a synchronisation bug."""
        if self.accelerator.num_processes == 1:
            return
        params = [p for p in unwrap(self.accelerator, model).parameters() if p.requires_grad]
        fingerprint = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in params])
        everyone = self.accelerator.gather(fingerprint[None])
        if not all(torch.equal(everyone[0], other) for other in everyone[1:]):
            raise HistofuseError(
                f"after phase '{phase_name}' the processes hold different weights: the distributed setup did not "
                "synchronise gradients. Check the launcher (docs/training.md, several processes)."
            )

    def _train_epoch(self, model, optimizer, loader, phase: PhaseConfig, phase_epoch: int) -> float:
        model.train()
        total, seen, step = 0.0, 0, 0
        with EpochProgress(self.console, f"{phase.name} {phase_epoch}/{phase.epochs}", len(loader), self.accelerator.is_main_process) as bar:
            for batch in loader:
                self._record_failures(batch["failed"])
                if self.accelerator.num_processes == 1:
                    self._check_failure_limit()
                if self._every_process_can_step(batch):
                    step += 1
                    extra = (batch["magnification"],) if "magnification" in batch else ()
                    loss = self._step(
                        model, optimizer, step, lambda: self.criterion(model(batch["image"], *extra), batch["label"])
                    )
                    total += loss.item() * len(batch["label"])
                    seen += len(batch["label"])
                bar.advance(loss=total / max(seen, 1))
        return mean_across_processes(self.accelerator, total, seen)

    def _step(self, model, optimizer, step: int, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One batch: forward, backward, and the optimizer step when gradient accumulation is due.

        ``accelerator.backward`` divides the loss by the accumulation count, so
        every path goes through ``accumulate``: it steps every N batches and at
        the end of the epoch, and skips the distributed all-reduce in between.
        """
        with self.accelerator.accumulate(model):
            loss = compute_loss()
            if not self._finite_everywhere(loss):
                raise NonFiniteLoss(step, loss.item())
            self.accelerator.backward(loss)
            if self.training.grad_clip > 0 and self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(model.parameters(), self.training.grad_clip)
            if self.accelerator.sync_gradients:
                self.warmup.before_step()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return loss

    def _caches(self, phase: PhaseConfig) -> bool:
        """Whether a phase trains on cached features: as the recipe says, else for a probe of a foundation model."""
        if phase.cache_features is not None:
            return phase.cache_features
        frozen_and_fixed = (
            not any(p.requires_grad for b in self.model.backbones.values() for p in b.parameters())
            and phase.augment == "none" and phase.stain_jitter == 0
        )
        foundation = any(getattr(b, "foundation_model", False) for b in self.model.backbones.values())
        return frozen_and_fixed and foundation and self.accelerator.num_processes == 1

    def _feature_banks(self, index: int, model, train_loader, val_loader):
        """(train bank, validation bank, sampler over the train bank): one pass of the frozen backbones per split."""
        from histofuse.training.feature_cache import bank_sampler

        if self.accelerator.num_processes > 1:
            raise HistofuseError(
                f"phases[{index}].cache_features runs on one process (the features of a head-only phase fit one); "
                "launch without several processes, or set cache_features = false"
            )
        unwrapped = unwrap(self.accelerator, model)
        started = time.perf_counter()
        size = self.recipe.data.eval_batch_size or self.recipe.data.batch_size
        store = self.feature_store or FeatureStore()
        before = store.computed
        with self.accelerator.autocast():
            train = store.bank(unwrapped, train_loader.dataset, size, train_loader.num_workers, self.accelerator.device)
            val = store.bank(unwrapped, val_loader.dataset, size, val_loader.num_workers, self.accelerator.device)
        self._record_failures(train.failed + val.failed)
        reused = len(train) + len(val) + len(train.failed) + len(val.failed) - (store.computed - before)
        self.accelerator.print(
            f"cached features of {len(train)} training and {len(val)} validation images in {time.perf_counter() - started:.1f} s"
            + (f" ({reused} computed by an earlier run of this process)" if reused else "")
        )
        sampler = bank_sampler(train, self.training.sampler == "balanced", self.recipe.seed * 1000 + index)
        return train, val, sampler

    def _train_epoch_on_features(self, model, optimizer, banks, phase: PhaseConfig, phase_epoch: int) -> float:
        train, _, sampler = banks
        head = unwrap(self.accelerator, model)
        head.train()
        total, seen = 0.0, 0
        for step, (features, labels, magnification) in enumerate(train.batches(sampler, self.recipe.data.batch_size), 1):
            loss = self._step(head, optimizer, step, partial(self._loss_on_features, head, features, labels, magnification))
            total += loss.item() * len(labels)
            seen += len(labels)
        return total / max(seen, 1)  # one process: _feature_banks refuses several

    def _loss_on_features(self, head, features, labels, magnification) -> torch.Tensor:
        with self.accelerator.autocast():  # the head is called alone, not through the prepared model's autocast forward
            return self.criterion(head.classify(features, magnification), labels)

    def predict(self, model, loader, tta: str = "none") -> Predictions:
        return predict(self.accelerator, model, loader, len(self.classes), tta)

    def _learning_rates(self, optimizer) -> dict:
        """lr_head and lr_<backbone> for every backbone (0 while frozen): the same columns in every phase.

        A backbone's is its top group's rate; layer-wise decay scales the groups below it.
        """
        rates = {f"lr_{name}": 0.0 for name in ["head", *self.model.backbones]}
        for group in optimizer.param_groups:
            key = f"lr_{group['name']}"
            rates[key] = max(rates[key], group["lr"])
        return rates

    def _improves(self, score: float, loss: float) -> bool:
        """Better by more than min_delta; on an exact tie (AUC saturates at 1.0), a lower loss wins."""
        if not math.isfinite(score):
            return False
        if not math.isfinite(self.state.best):
            return True
        gain = self.sign * (score - self.state.best)
        return gain > self.training.early_stopping.min_delta or (gain == 0 and loss < self.state.best_loss)

    def _finite_everywhere(self, loss) -> bool:
        """Checked on every process together, so all of them stop at the same step."""
        finite = torch.isfinite(loss.detach()).all()
        if self.accelerator.num_processes == 1:
            return bool(finite)
        flag = finite.to(torch.int64).reshape(1)
        return bool(self.accelerator.reduce(flag, reduction="min").item())

    def _every_process_can_step(self, batch: dict) -> bool:
        """Skip a batch on every process together when any process lacks a usable one.

        Batch norm cannot train on a single image, and unreadable files can shrink a
        batch to one or none; one process skipping alone would leave DDP waiting forever.
        """
        has_data = batch["image"] is not None and len(batch["image"]) > 1
        if self.accelerator.num_processes == 1:
            return has_data
        flag = torch.tensor([int(has_data)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="min").item())

    def _record_failures(self, failed: list[tuple[str, str]]) -> None:
        for path, reason in failed:
            if path not in self.state.failed:
                self.state.failed[path] = reason
                self.console.print(f"[yellow]warning:[/] skipped unreadable image {escape(path)}: {escape(reason)}")

    def _merge_failures_across_processes(self) -> None:
        """Every process ends the epoch knowing every failure, so all take the same decision."""
        if self.accelerator.num_processes == 1:
            return
        from accelerate.utils import gather_object

        for part in gather_object([self.state.failed]):
            for path, reason in part.items():
                self.state.failed.setdefault(path, reason)

    def _check_failure_limit(self) -> None:
        limit = self.recipe.data.max_failed_fraction
        if len(self.state.failed) > limit * self.dataset_size:
            first = next(iter(self.state.failed.items()))
            raise DataError(
                f"{len(self.state.failed)} of {self.dataset_size} images could not be decoded, more than "
                f"data.max_failed_fraction = {limit:g} (first: {first[0]}: {first[1]}). Fix or remove those files, "
                "or raise the limit."
            )


def mean_across_processes(accelerator: Accelerator, total: float, seen: int) -> float:
    """The mean over every process's batches: each one summed only its own share of the epoch."""
    if accelerator.num_processes > 1:
        sums = torch.tensor([total, seen], dtype=torch.float64, device=accelerator.device)
        total, seen = accelerator.reduce(sums, reduction="sum").tolist()
    return total / max(seen, 1)


class NonFiniteLoss(Exception):
    def __init__(self, step: int | str, value: float):
        super().__init__(f"loss {value} at step {step}")
        self.step, self.value = step, value


def _describe(trainable: dict[str, int]) -> str:
    return ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in trainable.items())
