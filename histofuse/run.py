"""One run of a recipe: data -> split -> model -> phased training -> test evaluation, all in one directory."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from histofuse.data.split import permute_training_labels, split_table
from histofuse.errors import DataError, HistofuseError
from histofuse.recipe import Recipe, recipe_to_toml
from histofuse.registry import Registry
from histofuse.reporting import log, speak_on_main_process_only
from histofuse.rundir import RunDir


def create_run_dir(parent: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            candidate = parent / (f"{name}-{stamp}" + (f"-{attempt}" if attempt else ""))
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as exc:
        raise HistofuseError(
            f"cannot create a run directory under '{parent}' ({exc.strerror or exc}); "
            "choose a writable folder with --output-dir"
        ) from None
    raise HistofuseError(f"could not find a free run directory name under {parent}")


def _make_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True)
    except OSError as exc:
        raise HistofuseError(f"cannot create the run directory '{path}' ({exc.strerror or exc})") from None
    return path


def make_accelerator(recipe: Recipe):
    import torch
    from accelerate import Accelerator

    if recipe.training.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise HistofuseError(
            "training.mixed_precision = \"fp16\" needs a CUDA GPU and none is visible; use \"bf16\" or \"no\" on a CPU"
        )
    accelerator = Accelerator(
        mixed_precision=recipe.training.mixed_precision,
        gradient_accumulation_steps=recipe.training.grad_accumulation,
        # Accelerate compiles the model in prepare(), which runs at every phase boundary.
        dynamo_backend="inductor" if recipe.training.compile else "no",
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes == 1:
        raise HistofuseError(
            f"the launcher started {launched} processes but each sees only itself, so every one would train the same "
            "model alone. On a CPU-only machine launch with ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes N, or torchrun (see docs/training.md)."
        )
    return accelerator


def run_recipe(
    recipe: Recipe, registry: Registry, output_dir: Path, resume: Path | None = None, run_dir: Path | None = None,
    last: bool = True, feature_store=None,
) -> Path:
    """Train and test ``recipe``; return its run directory. With ``resume``, continue that run from its last checkpoint;
    with ``run_dir`` (a cross-validation fold's folder), create exactly that directory instead of a dated one.
    ``last = False`` keeps the process group of a multi-process launch for the runs that follow (folds, repeats);
    ``feature_store`` shares cached backbone features with them."""
    from accelerate.utils import set_seed

    from histofuse.data.run_loaders import run_loaders
    from histofuse.evaluation.after_training import evaluate_after_training
    from histofuse.manifest import started_now
    from histofuse.training.checkpoint import load_weights
    from histofuse.training.trackers import Trackers
    from histofuse.training.trainer import Trainer

    started = time.perf_counter()
    started_at = started_now()
    hooks = registry.pm.hook
    accelerator = make_accelerator(recipe)
    speak_on_main_process_only(accelerator.is_main_process)
    set_seed(recipe.seed)
    table, classes = _split_dataset(recipe, registry, accelerator)

    run_dir, checkpoint = _open_run_dir(recipe, table, accelerator, output_dir, resume, run_dir)
    log.info(f"run directory: {run_dir}")
    log.info(_split_summary(table, classes))

    model = _build_model(recipe, registry, classes)
    frames = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    make_train_loader, val_loader = run_loaders(recipe, hooks, classes, frames, table, accelerator)
    criterion = _criterion(recipe, classes, frames["train"], accelerator.device)
    meta = {"recipe": recipe.model_dump(mode="json"), "classes": classes, "histofuse": _version()}
    trainer = Trainer(
        model=model, recipe=recipe, classes=classes, accelerator=accelerator, make_train_loader=make_train_loader,
        val_loader=val_loader, criterion=criterion, hooks=hooks, run_dir=run_dir, meta=meta,
        dataset_size=len(table), resume=checkpoint, feature_store=feature_store,
        trackers=Trackers(recipe.training.log_with, run_dir, recipe.name, recipe.model_dump(mode="json"), accelerator.is_main_process),
    )
    state = trainer.fit()
    if not state.best_epoch:
        raise HistofuseError("no epoch produced a usable validation score, so there are no best weights to test")

    model = trainer.model
    best = load_weights(model, run_dir)
    metrics = evaluate_after_training(
        recipe=recipe, registry=registry, accelerator=accelerator, model=model, classes=classes, frames=frames,
        run_dir=run_dir, colour_cache=feature_store.colour if feature_store is not None else None,
    )
    metrics["test"].update(
        best_epoch=best["epoch"], monitor=best["monitor"], best_val=best["best"],
        # Every image the run could not read (training, validation, test), with the reason: {path: reason}.
        failed_images=dict(sorted({**state.failed, **metrics["test"]["failed_images"]}.items())), seconds=time.perf_counter() - started,
        training_faults=state.faults,
    )
    _finish(recipe, table, classes, metrics, run_dir, started_at, time.perf_counter() - started, accelerator, trainer, state.epoch, hooks)
    if last:
        accelerator.end_training()
    return run_dir


def _split_dataset(recipe: Recipe, registry: Registry, accelerator) -> tuple[pd.DataFrame, list[str]]:
    """The dataset scanned and split by patient (labels shuffled for a permutation control); [[evaluate]] sets checked."""
    from histofuse.data.scanning import check_external_sets, load_table

    with accelerator.main_process_first():  # a generated dataset is written once, then read by all
        table, classes = load_table(recipe, registry)
        check_external_sets(recipe, registry, classes)
    table = split_table(table, recipe.data.split, recipe.seed)
    if recipe.data.permute_labels:
        table = permute_training_labels(table, recipe.seed)
        log.warning("permutation control: the training patients' labels are shuffled (data.permute_labels)")
    return table, classes


def _build_model(recipe: Recipe, registry: Registry, classes: list[str]):
    import torch

    from histofuse.model import build_model, count_parameters

    model = build_model(recipe, registry, len(classes))
    if recipe.training.channels_last:
        # Weights in NHWC make every convolution produce NHWC; inputs are converted by the first one.
        model = model.to(memory_format=torch.channels_last)
    log.info(f"model: {count_parameters(model) / 1e6:.2f}M parameters")
    return model


def _criterion(recipe: Recipe, classes: list[str], train: pd.DataFrame, device):
    """Cross-entropy with label smoothing, weighted by the training split's class balance when the recipe asks."""
    import torch

    from histofuse.data.loading import class_weights

    weights = None
    if recipe.training.class_weights == "balanced":
        weights = class_weights([classes.index(label) for label in train["label"]], len(classes)).to(device)
    return torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=recipe.training.label_smoothing)


def _open_run_dir(recipe, table, accelerator, output_dir: Path, resume: Path | None, run_dir: Path | None):
    """The run directory (new, or the one resumed) and the checkpoint to resume from; every process gets the same."""
    from histofuse.training.epoch_checkpoint import latest_checkpoint
    from histofuse.training.history import History

    checkpoint = None
    if resume is not None:
        run_dir = resume
        check_same_split(table, run_dir)
        if RunDir(run_dir).metrics.exists() and not RunDir(run_dir).checkpoints.exists():
            raise HistofuseError(f"{run_dir} has finished (metrics.json is written); there is nothing to resume")
        checkpoint = latest_checkpoint(run_dir, log.warning)
        log.info(f"resuming {run_dir} from {checkpoint.path.name}")
        History(RunDir(run_dir).history, accelerator.is_main_process).truncate(checkpoint.state.epoch)
    else:
        if accelerator.is_main_process:
            run_dir = _make_dir(run_dir) if run_dir is not None else create_run_dir(output_dir, recipe.name)
        run_dir = Path(broadcast(accelerator, str(run_dir) if accelerator.is_main_process else ""))
        if accelerator.is_main_process:
            RunDir(run_dir).recipe_file.write_text(recipe_to_toml(recipe))
            table.to_csv(RunDir(run_dir).split, index=False)
    accelerator.wait_for_everyone()  # nobody rewrites history.csv while another process still reads the run
    return run_dir, checkpoint


def _finish(recipe, table, classes, metrics, run_dir, started_at, seconds, accelerator, trainer, epoch, hooks):
    """Metrics, trackers, hooks and records written; checkpoints removed; the run marked finished, last."""
    from histofuse.evaluation.after_training import write_metrics

    write_metrics(accelerator, run_dir, metrics)
    trainer.trackers.log({f"test_{k}": v for k, v in metrics["test"].items()}, step=epoch)
    trainer.trackers.finish()
    hooks.on_fit_end(run_dir=run_dir, metrics=metrics["test"])
    if accelerator.is_main_process:
        write_records(recipe, table, classes, metrics, run_dir, started_at, seconds, accelerator)
    if accelerator.is_main_process and not recipe.training.checkpoints.keep_after_run:
        # The run is complete; model.safetensors holds the weights that count, and the checkpoints can be large.
        shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)
    if accelerator.is_main_process:  # last: a run killed before this line is not finished, whatever else it wrote
        RunDir(run_dir).finished.write_text(json.dumps({"finished": datetime.now().astimezone().isoformat(timespec="seconds")}))


def write_records(recipe, table, classes, metrics, run_dir, started_at, seconds, accelerator) -> None:
    """Manifest, model card and report; a failure here is reported and loses nothing the run produced."""
    from histofuse.manifest import build_manifest, model_card, write_manifest
    from histofuse.report import write_report

    try:
        manifest = build_manifest(
            recipe=recipe, table=table, classes=classes, metrics=metrics, run_dir=run_dir, started=started_at,
            wall_seconds=seconds, accelerator=accelerator,
        )
        write_manifest(run_dir, manifest)
        RunDir(run_dir).model_card.write_text(model_card(manifest))
        page = write_report(run_dir)
    except Exception as exc:  # the weights and metrics are already on disk; a plotting bug must not hide that
        log.warning(f"the report could not be written ({type(exc).__name__}: {exc}); try again with histofuse report {run_dir}")
        return
    log.info(f"report: {page}")


def check_same_split(table: pd.DataFrame, run_dir: Path) -> None:
    """A resumed run must train on the images and patient split it started with."""
    try:
        saved = pd.read_csv(RunDir(run_dir).split, usecols=["path", "split"], dtype=str)
    except (OSError, ValueError) as exc:
        raise HistofuseError(f"cannot read {RunDir(run_dir).split} to resume: {exc}") from None
    now = table[["path", "split"]].astype(str).reset_index(drop=True)
    if not now.equals(saved.reset_index(drop=True)):
        raise DataError(
            f"the dataset no longer matches the run's split.csv ({len(saved)} images then, {len(now)} now, or images "
            f"moved between splits): resuming would mix patients across splits. Restore the data, or start a new run."
        )


def broadcast(accelerator, value: str) -> str:
    """The main process's ``value`` on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _split_summary(table: pd.DataFrame, classes: list[str]) -> str:
    parts = []
    for split in ("train", "val", "test"):
        part = table[table["split"] == split]
        counts = ", ".join(f"{c} {int((part['label'] == c).sum())}" for c in classes)
        parts.append(f"{split}: {part['group'].nunique()} patients, {len(part)} images ({counts})")
    return "split by patient - " + "; ".join(parts)


def _version() -> str:
    from histofuse import __version__

    return __version__
