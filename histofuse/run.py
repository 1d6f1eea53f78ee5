"""One run of a recipe: data -> split -> model -> phased training -> test evaluation, all in one directory."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
from rich.markup import escape

from histofuse.data.split import permute_training_labels, split_table
from histofuse.data.table import check_table
from histofuse.errors import DataError, HistofuseError
from histofuse.recipe import Recipe, recipe_to_toml, validate_options
from histofuse.registry import Registry
from histofuse.rundir import RunDir


def resolve_root(recipe: Recipe, registry: Registry) -> Path:
    spec = registry.get("dataset", recipe.data.dataset)
    if recipe.data.root is None:
        raise DataError(
            f"data.root is not set for dataset '{spec.name}'. Where to get it: {spec.source or 'see its plugin docs'}. "
            "Then set root in the recipe's [data] table or pass --set data.root=/path/to/data."
        )
    return Path(recipe.data.root).expanduser()


def load_table(recipe: Recipe, registry: Registry) -> tuple[pd.DataFrame, list[str]]:
    """Scan the recipe's dataset and check the table; a missing root says where to get the data."""
    spec = registry.get("dataset", recipe.data.dataset)
    root = resolve_root(recipe, registry)
    try:
        table = spec.scan(root, **validate_options(spec, recipe.data.options))
    except FileNotFoundError as exc:
        raise DataError(
            f"dataset '{spec.name}': {exc}. Where to get it: {spec.source or 'see its plugin docs'}. "
            f"Then point the recipe at it: --set data.root=/path/to/data (now {root})."
        ) from None
    return check_table(table, spec.name, recipe.data.classes)


def check_external_sets(recipe: Recipe, registry: Registry, classes: list[str]) -> None:
    """Every [[evaluate]] set must be readable, with labels the model knows, before hours of training."""
    problems = []
    for i, external in enumerate(recipe.evaluate):
        spec = registry.get("dataset", external.dataset)
        if external.root is None:
            problems.append(f"evaluate[{i}].root: not set. Where to get {spec.name}: {spec.source}")
        elif not spec.generated and not Path(external.root).expanduser().exists():
            problems.append(
                f"evaluate[{i}].root: '{external.root}' does not exist. Where to get {spec.name}: {spec.source}. "
                f"Then --set evaluate[{i}].root=/path/to/it"
            )
    if not problems:
        from histofuse.evaluation.sets import load_external

        for i, external in enumerate(recipe.evaluate):
            try:
                load_external(external, registry, classes)
            except HistofuseError as exc:
                problems.append(f"evaluate[{i}]: {exc}")
    if problems:
        raise DataError("before training, the external evaluation sets were checked:\n  - " + "\n  - ".join(problems))


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
    recipe: Recipe, registry: Registry, output_dir: Path, console, resume: Path | None = None, run_dir: Path | None = None,
    last: bool = True, feature_store=None,
) -> Path:
    """Train and test ``recipe``; return its run directory. With ``resume``, continue that run from its last checkpoint;
    with ``run_dir`` (a cross-validation fold's folder), create exactly that directory instead of a dated one.
    ``last = False`` keeps the process group of a multi-process launch for the runs that follow (folds, repeats);
    ``feature_store`` shares cached backbone features with them."""
    import torch
    from accelerate.utils import set_seed

    from histofuse.data.loading import class_weights
    from histofuse.data.run_loaders import run_loaders
    from histofuse.manifest import started_now
    from histofuse.model import build_model, count_parameters
    from histofuse.training.checkpoint import load_weights
    from histofuse.training.trackers import Trackers
    from histofuse.training.trainer import Trainer

    started = time.perf_counter()
    started_at = started_now()
    hooks = registry.pm.hook
    accelerator = make_accelerator(recipe)
    if not accelerator.is_main_process:
        console.quiet = True  # one process talks
    set_seed(recipe.seed)
    with accelerator.main_process_first():  # a generated dataset is written once, then read by all
        table, classes = load_table(recipe, registry)
        check_external_sets(recipe, registry, classes)
    table = split_table(table, recipe.data.split, recipe.seed)
    if recipe.data.permute_labels:
        table = permute_training_labels(table, recipe.seed)
        console.print("[yellow]permutation control:[/] the training patients' labels are shuffled (data.permute_labels)")

    run_dir, checkpoint = _open_run_dir(recipe, table, accelerator, output_dir, resume, run_dir, console)
    console.print(f"run directory: [bold]{escape(str(run_dir))}[/]")
    console.print(_split_summary(table, classes), markup=False)

    model = build_model(recipe, registry, len(classes))
    if recipe.training.channels_last:
        # Weights in NHWC make every convolution produce NHWC; inputs are converted by the first one.
        model = model.to(memory_format=torch.channels_last)
    console.print(f"model: {count_parameters(model) / 1e6:.2f}M parameters")
    frames = {s: table[table["split"] == s].reset_index(drop=True) for s in ("train", "val", "test")}
    make_train_loader, val_loader = run_loaders(recipe, hooks, classes, frames, table["path"].tolist(), accelerator, console)
    train_labels = [classes.index(label) for label in frames["train"]["label"]]
    weights = None
    if recipe.training.class_weights == "balanced":
        weights = class_weights(train_labels, len(classes)).to(accelerator.device)
    criterion = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=recipe.training.label_smoothing)
    meta = {"recipe": recipe.model_dump(mode="json"), "classes": classes, "histofuse": _version()}
    trainer = Trainer(
        model=model, recipe=recipe, classes=classes, accelerator=accelerator, make_train_loader=make_train_loader,
        val_loader=val_loader, criterion=criterion, hooks=hooks, run_dir=run_dir, meta=meta,
        console=console, dataset_size=len(table), resume=checkpoint, feature_store=feature_store,
        trackers=Trackers(recipe.training.log_with, run_dir, recipe.name, recipe.model_dump(mode="json"), accelerator.is_main_process),
    )
    state = trainer.fit()
    if not state.best_epoch:
        raise HistofuseError("no epoch produced a usable validation score, so there are no best weights to test")

    model = trainer.model
    best = load_weights(model, run_dir)
    metrics = evaluate_after_training(
        recipe=recipe, registry=registry, accelerator=accelerator, model=model, classes=classes, frames=frames,
        run_dir=run_dir, console=console, colour_cache=feature_store.colour if feature_store is not None else None,
    )
    metrics["test"].update(
        best_epoch=best["epoch"], monitor=best["monitor"], best_val=best["best"],
        # Every image the run could not read (training, validation, test), with the reason: {path: reason}.
        failed_images=dict(sorted({**state.failed, **metrics["test"]["failed_images"]}.items())), seconds=time.perf_counter() - started,
        training_faults=state.faults,
    )
    _finish(recipe, table, classes, metrics, run_dir, started_at, time.perf_counter() - started, accelerator, console,
            trainer, state.epoch, hooks)
    if last:
        accelerator.end_training()
    return run_dir


def _open_run_dir(recipe, table, accelerator, output_dir: Path, resume: Path | None, run_dir: Path | None, console):
    """The run directory (new, or the one resumed) and the checkpoint to resume from; every process gets the same."""
    from histofuse.training.epoch_checkpoint import latest_checkpoint
    from histofuse.training.history import History

    checkpoint = None
    if resume is not None:
        run_dir = resume
        check_same_split(table, run_dir)
        if RunDir(run_dir).metrics.exists() and not RunDir(run_dir).checkpoints.exists():
            raise HistofuseError(f"{run_dir} has finished (metrics.json is written); there is nothing to resume")
        checkpoint = latest_checkpoint(run_dir, lambda message: console.print(f"warning: {message}", markup=False))
        console.print(f"resuming {escape(str(run_dir))} from {checkpoint.path.name}")
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


def _finish(recipe, table, classes, metrics, run_dir, started_at, seconds, accelerator, console, trainer, epoch, hooks):
    """Metrics, trackers, hooks and records written; checkpoints removed; the run marked finished, last."""
    _write_metrics(accelerator, run_dir, metrics)
    trainer.trackers.log({f"test_{k}": v for k, v in metrics["test"].items()}, step=epoch)
    trainer.trackers.finish()
    hooks.on_fit_end(run_dir=run_dir, metrics=metrics["test"])
    if accelerator.is_main_process:
        write_records(recipe, table, classes, metrics, run_dir, started_at, seconds, accelerator, console)
    if accelerator.is_main_process and not recipe.training.checkpoints.keep_after_run:
        # The run is complete; model.safetensors holds the weights that count, and the checkpoints can be large.
        shutil.rmtree(RunDir(run_dir).checkpoints, ignore_errors=True)
    if accelerator.is_main_process:  # last: a run killed before this line is not finished, whatever else it wrote
        RunDir(run_dir).finished.write_text(json.dumps({"finished": datetime.now().astimezone().isoformat(timespec="seconds")}))


def write_records(recipe, table, classes, metrics, run_dir, started_at, seconds, accelerator, console) -> None:
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
        console.print(f"warning: the report could not be written ({type(exc).__name__}: {exc}); "
                      f"try again with histofuse report {run_dir}", markup=False)
        return
    console.print(f"report: {page}", markup=False)


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


def evaluate_after_training(*, recipe, registry, accelerator, model, classes, frames, run_dir, console, colour_cache=None) -> dict:
    """Fit normalizer/baseline on training and calibration on validation; evaluate test, then [[evaluate]] sets.

    metrics.json is written after the test split and after every external set, and
    a failing external set is recorded as an error: nothing a long run produced is lost.
    """
    from histofuse.evaluation.fitting import EvaluationState, fit_on_training_split
    from histofuse.evaluation.sets import Evaluator

    normalize = any(e.normalize for e in recipe.evaluate)
    normalizer, baseline = fit_on_training_split(recipe, registry, frames["train"], classes, normalize, console, colour_cache)
    state = EvaluationState(normalizer, baseline.to_json() if baseline else None)
    evaluator = Evaluator(
        accelerator=accelerator, model=model, recipe=recipe, registry=registry, classes=classes, state=state,
        val_frame=frames["val"], run_dir=run_dir, console=console,
    )
    calibration = evaluator.calibration(recipe.evaluation.tta)
    if calibration["threshold"] is not None:
        console.print(
            f"decision threshold {calibration['threshold']:.3f} ({recipe.evaluation.threshold}, from the validation "
            f"split), temperature {calibration['temperature']:.3f}"
        )
    metrics = {"test": evaluator.evaluate("test", frames["test"], tta=recipe.evaluation.tta, normalize=False, qc=None)}
    _write_metrics(accelerator, run_dir, metrics)
    for external in recipe.evaluate:
        try:
            metrics[external.name] = evaluator.evaluate_external(external)
        except HistofuseError as exc:
            console.print(f"error: evaluation set '{external.name}' failed: {exc}", markup=False)
            metrics[external.name] = {"name": external.name, "error": str(exc)}
        _write_metrics(accelerator, run_dir, metrics)
    if recipe.evaluation.compare_normalizers:
        compare_stain_normalizers(recipe, registry, accelerator, evaluator, frames, run_dir, console)
    return metrics


def compare_stain_normalizers(recipe, registry, accelerator, evaluator, frames, run_dir, console) -> None:
    """The test split and every external set under none and each listed normalizer; a failure loses nothing else."""
    from histofuse.evaluation.sets import load_external
    from histofuse.evaluation.comparison import compare_normalizers, comparison_table, save

    try:
        sets, seen = {"test": frames["test"]}, set()
        for external in recipe.evaluate:
            # Sets that differ only in QC, TTA or normalization are the same images here: compare them once.
            source = (external.dataset, external.root, repr(sorted(external.options.items())), repr(sorted(external.label_map.items())))
            if source not in seen:
                seen.add(source)
                sets[external.name] = load_external(external, registry, evaluator.classes)
        comparison = compare_normalizers(evaluator, recipe, registry, frames["train"], sets, console)
    except HistofuseError as exc:
        console.print(f"error: the stain normalizer comparison failed: {exc}", markup=False)
        return
    if accelerator.is_main_process:
        save(run_dir, comparison)
    console.print(comparison_table(comparison))


def _write_metrics(accelerator, run_dir: Path, metrics: dict) -> None:
    if accelerator.is_main_process:
        RunDir(run_dir).metrics.write_text(json.dumps(metrics, indent=2))


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
