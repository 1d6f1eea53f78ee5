"""K-fold cross-validation by patient: one parent directory, one complete run directory per fold.

Each fold is an ordinary run of the recipe with ``data.split.fold = k``: its
recipe.toml says which fold it is, so it can be resumed, evaluated or served
on its own like any run. The parent holds the fold assignment and, once every
fold has finished, what is pooled over them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from histofuse.errors import DataError, HistofuseError
from histofuse.recipe import Recipe, load_recipe, recipe_to_toml
from histofuse.reporting import HEADING, log, speak_on_main_process_only
from histofuse.rundir import RunDir


def fold_dir(parent: Path, fold: int) -> Path:
    return parent / f"fold-{fold}"


def is_crossval_dir(path: Path) -> bool:
    """A parent directory of a cross-validation: its recipe has folds and no single fold."""
    layout = RunDir(path)
    saved = layout.recipe_file
    if not saved.is_file() or not layout.folds.is_file():
        return False
    split = load_recipe(saved).data.split
    return split.folds is not None and split.fold is None


def fold_recipe(recipe: Recipe, fold: int) -> Recipe:
    split = recipe.data.split.model_copy(update={"fold": fold})
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"split": split})})


def run_cross_validation(
    recipe: Recipe, registry, output_dir: Path, resume: Path | None = None, last: bool = True
) -> Path:
    """Train and test every fold in turn (all processes together, fold after fold), then pool them.

    With ``resume`` (the parent directory), finished folds are kept, an interrupted fold continues from
    its last epoch checkpoint, and a fold killed before its first checkpoint starts again. ``last = False``
    keeps a multi-process launch's process group for what follows (repeated cross-validation).
    """
    from histofuse.crossval.pooling import pool_folds
    from histofuse.run import make_accelerator, run_recipe
    from histofuse.training.feature_cache import FeatureStore

    # Made as each fold's is (the launcher's processes, ACCELERATE_USE_CPU): the first one decides the process group.
    accelerator = make_accelerator(recipe)
    speak_on_main_process_only(accelerator.is_main_process)
    folds, split = recipe.data.split.folds, recipe.data.split
    parent = Path(on_main(accelerator, lambda: str(prepare_parent(recipe, registry, output_dir, resume))))
    log.info(f"cross-validation: {folds} folds by patient in {parent}")
    if split._ignored_test is not None:
        log.info(f"note: data.split.test = {split._ignored_test:g} is not used: each fold in turn is the test split "
                 f"(1/{folds} of the patients)")
    store = FeatureStore()  # a frozen backbone's features do not depend on the fold: computed once per image
    for fold in range(1, folds + 1):
        target = fold_dir(parent, fold)
        status = fold_status(target)
        accelerator.wait_for_everyone()  # every process has read the folder before anyone removes it
        log.info(f"fold {fold}/{folds}" + ("" if status == "new" else f" ({status})"), extra=HEADING)
        if status == "finished":
            continue
        if status == "resumable":
            run_recipe(load_recipe(RunDir(target).recipe_file), registry, parent, resume=target, last=False, feature_store=store)
            continue
        if status == "restart" and accelerator.is_main_process:
            shutil.rmtree(target)  # killed before its first checkpoint: nothing of it can be continued
        accelerator.wait_for_everyone()
        run_recipe(fold_recipe(recipe, fold), registry, parent, run_dir=target, last=False, feature_store=store)

    def pool() -> str:
        pool_folds(parent, recipe)
        return ""

    on_main(accelerator, pool)
    if last:
        accelerator.end_training()
    return parent


def prepare_parent(recipe: Recipe, registry, output_dir: Path, resume: Path | None) -> Path:
    """A new parent directory with the recipe and the fold of every image; or, resuming, the parent checked
    against the data: the folds still to run must split the same images the same way as those already run."""
    from histofuse.data.split import assign_folds, split_seed
    from histofuse.data.scanning import load_table
    from histofuse.run import create_run_dir

    split = recipe.data.split
    with_folds = assign_folds(load_table(recipe, registry)[0], split.folds, split_seed(split, recipe.seed))
    with_folds = with_folds[["path", "group", "label", "fold"]]
    if resume is not None:
        saved = pd.read_csv(RunDir(resume).folds, dtype={"path": str, "group": str, "label": str})
        now = with_folds.astype({"path": str, "group": str, "label": str}).reset_index(drop=True)
        if not now.equals(saved.reset_index(drop=True)):
            raise DataError(
                f"the dataset no longer matches {RunDir(resume).folds} ({len(saved)} images then, {len(now)} now, or "
                "images in other folds): the remaining folds would test patients another fold trained on. Restore "
                "the data, or start a new cross-validation."
            )
        return resume
    parent = create_run_dir(output_dir, recipe.name)
    RunDir(parent).recipe_file.write_text(recipe_to_toml(recipe))
    with_folds.to_csv(RunDir(parent).folds, index=False)
    return parent


def on_main(accelerator, work) -> str:
    """``work()`` (returning a string) on the main process, its result on every process; its error is raised on
    every process too, so no process waits for a main process that has stopped."""
    from histofuse.run import broadcast

    result, error, caught = "", "", None
    if accelerator.is_main_process:
        try:
            result = work()
        except HistofuseError as exc:
            error, caught = str(exc), exc
    error = broadcast(accelerator, error)
    if caught is not None:
        raise caught
    if error:
        raise HistofuseError(error)
    return broadcast(accelerator, result)


def fold_status(target: Path) -> str:
    """new (no folder), finished, resumable (has a complete epoch checkpoint) or restart (started, and nothing
    of it can be continued: killed before its first checkpoint, or every checkpoint damaged)."""
    from histofuse.training.epoch_checkpoint import latest_checkpoint

    if not target.exists():
        return "new"
    if RunDir(target).finished.is_file():
        return "finished"
    try:
        latest_checkpoint(target, lambda message: None)
    except HistofuseError:
        return "restart"
    return "resumable"


def finished_folds(parent: Path) -> list[Path]:
    """The fold directories of ``parent`` in order; an error names the ones that have not finished."""
    recipe = load_recipe(RunDir(parent).recipe_file)
    dirs = [fold_dir(parent, k) for k in range(1, recipe.data.split.folds + 1)]
    unfinished = [d.name for d in dirs if fold_status(d) != "finished"]
    if unfinished:
        raise HistofuseError(
            f"cross-validation {parent}: fold(s) {', '.join(unfinished)} have not finished; "
            f"continue it with histofuse run --resume {parent}"
        )
    return dirs


def check_resumable(parent: Path) -> None:
    layout = RunDir(parent)
    if not layout.folds.is_file():
        raise HistofuseError(f"'{parent}' is not a cross-validation directory (it has no {layout.folds.name})")
    if layout.cv_metrics.is_file():
        raise HistofuseError(f"{parent} has finished (cv_metrics.json is written); there is nothing to resume")

