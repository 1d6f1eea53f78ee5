"""The ``histofuse`` command line. Heavy libraries load inside the commands that need them."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, get_args

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from histofuse.errors import HistofuseError
from histofuse.recipe import TTA
from histofuse.weights_cli import weights_app

console = Console(soft_wrap=True)  # long paths stay on one line, greppable
err_console = Console(stderr=True, soft_wrap=True)

app = typer.Typer(
    name="histofuse",
    help="Train and evaluate histopathology classifiers built from fused pretrained backbones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipe_app = typer.Typer(help="Work with recipe files.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")


app.add_typer(weights_app, name="weights")

data_app = typer.Typer(help="Check the images a recipe or a dataset would use.", no_args_is_help=True)
app.add_typer(data_app, name="data")

plugin_app = typer.Typer(help="Start a plugin of your own.", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")


@plugin_app.command("new")
def plugin_new(
    name: str = typer.Argument(..., help="Component name, e.g. my_lab (lowercase, digits, underscores)."),
    kind: str = typer.Option("dataset", "--kind", help="dataset, normalizer, fusion or backbone."),
    out: Path = typer.Option(Path("."), "--out", help="Parent folder of the new package."),
) -> None:
    """Write an installable plugin package (pyproject entry point, module, test, README) that passes its test."""
    from histofuse.scaffold.new import write_plugin

    folder = write_plugin(name, kind, out)
    console.print(f"wrote {folder}; next: cd {folder} && pip install -e \".[dev]\" && python -m pytest -q", markup=False)

TTA_MODES = get_args(TTA)  # the recipe's list is the one source; predict and evaluate accept each mode

SetOption = typer.Option(None, "--set", help="Override a recipe key, e.g. --set phases[0].epochs=2 (repeatable).")
FoldOption = typer.Option(
    None, "--fold", min=1, max=20, help="On a cross-validation folder: use this fold's model instead of the fold ensemble."
)


def _registry():
    from histofuse.registry import default_registry

    return default_registry()


def _load(recipe_path: Path, overrides: Optional[List[str]]):
    """Parse, cross-check and dry-build a recipe; raise one RecipeError listing every problem."""
    from histofuse.errors import RecipeError
    from histofuse.contracts import check_contracts
    from histofuse.recipe import check_recipe, load_recipe
    from histofuse.recipe_files import resolve_recipe
    from histofuse.summary import check_model

    recipe_path = resolve_recipe(recipe_path)  # a bare name (quickstart) is a shipped recipe
    recipe = load_recipe(recipe_path, overrides or [])
    registry = _registry()
    problems = check_recipe(recipe, registry)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    problems, model = check_model(recipe, registry)
    if not problems:
        problems = check_contracts(recipe, registry, model)
    if problems:
        raise RecipeError(str(recipe_path), problems)
    return recipe, registry, model


@app.command()
def run(
    recipe: Optional[Path] = typer.Argument(
        None, help="Recipe TOML file, or a shipped recipe's name, e.g. quickstart (histofuse recipe list); omit with --resume."
    ),
    set_: Optional[List[str]] = SetOption,
    output_dir: Path = typer.Option(Path("runs"), "--output-dir", "-o", help="Parent folder of the run directory."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this run directory from its last complete epoch checkpoint."
    ),
    repeat: int = typer.Option(1, "--repeat", min=1, max=100, help="Run N times with seeds seed, seed+1, ...; report mean ± std."),
    repeat_splits: bool = typer.Option(False, "--repeat-splits", help="With --repeat: a different patient split each time too."),
    folds: Optional[int] = typer.Option(
        None, "--folds", min=2, max=20, help="K-fold cross-validation by patient (same as --set data.split.folds=K)."
    ),
) -> None:
    """Train a recipe's phases, then evaluate the best weights on the test split (or on every fold with --folds)."""
    from histofuse.crossval import run_cross_validation
    from histofuse.run import run_recipe

    if resume is not None:
        if repeat > 1 or folds is not None:
            raise typer.BadParameter(
                "--resume continues one run or cross-validation as it was started; it takes no --repeat or --folds",
                param_hint="--resume",
            )
        recipe = _resumable_recipe(resume, recipe, set_)
    elif recipe is None:
        raise typer.BadParameter("give a recipe file, or --resume RUN_DIR", param_hint="RECIPE")
    overrides = list(set_ or []) + ([f"data.split.folds={folds}"] if folds is not None else [])
    parsed, registry, _ = _load(recipe, overrides)
    if folds is not None and parsed.data.split.fold is not None:
        raise typer.BadParameter(
            f"the recipe trains only fold {parsed.data.split.fold} (data.split.fold); remove it to cross-validate",
            param_hint="--folds",
        )
    cross_validation = parsed.data.split.folds is not None and parsed.data.split.fold is None
    if cross_validation and repeat > 1 and parsed.data.split.seed is not None:
        console.print(f"note: data.split.seed = {parsed.data.split.seed} is not used: each repetition of the "
                      "cross-validation draws its own folds (seed, seed + 1, ...)", markup=False)
    if repeat > 1:
        _run_repeated(parsed, registry, output_dir, repeat, repeat_splits or cross_validation)
        return
    if cross_validation:
        if resume is not None:
            from histofuse.crossval.runner import check_resumable

            check_resumable(resume)
        run_dir = run_cross_validation(parsed, registry, output_dir, console, resume=resume)
    else:
        run_dir = run_recipe(parsed, registry, output_dir, console, resume=resume)
    if console.quiet:
        return
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    console.print(_metrics_table(metrics, cross_validation))
    for name, entry in metrics.items():
        if "error" in entry:
            err_console.print(Text.assemble((f"evaluation set '{name}' failed: ", "bold red"), entry["error"]))
    console.print(f"[green]done[/]: {escape(str(run_dir))}")


def _run_repeated(recipe, registry, output_dir: Path, count: int, vary_split: bool) -> None:
    from histofuse.repeats import repeated_recipes, summarize, summary_table, write_summary
    from histofuse.run import run_recipe

    from histofuse.crossval import run_cross_validation

    run_dirs = []
    folds = recipe.data.split.folds if recipe.data.split.fold is None else None
    for i, each in enumerate(repeated_recipes(recipe, count, vary_split)):
        own = f", its own {folds} folds" if folds else ", its own patient split" if vary_split else ""
        console.rule(f"run {i + 1}/{count}: seed {each.seed}{own}")
        run = run_cross_validation if folds else run_recipe
        run_dirs.append(run(each, registry, output_dir, console, last=i == count - 1))
    if console.quiet:
        return
    table, summary = summarize(run_dirs)
    console.print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"), markup=False, highlight=False)
    console.print(summary_table(summary, count))
    console.print(f"[green]done[/]: {escape(str(write_summary(output_dir, run_dirs[0].name, table, summary)))}")


def _resumable_recipe(run_dir: Path, recipe: Optional[Path], overrides: Optional[List[str]]) -> Path:
    """A resumed run keeps the recipe it was started with: the one saved in its directory."""
    if recipe is not None or overrides:
        raise typer.BadParameter(
            "--resume continues a run with the recipe saved in it; give no recipe file and no --set",
            param_hint="--resume",
        )
    saved = run_dir / "recipe.toml"
    if not saved.is_file():
        raise typer.BadParameter(f"'{run_dir}' is not a run directory (it has no recipe.toml)", param_hint="--resume")
    return saved


@app.command()
def predict(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    inputs: List[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    tta: str = typer.Option("none", "--tta", help=f"Test-time augmentation: {', '.join(TTA_MODES)}."),
    normalize: bool = typer.Option(False, "--normalize", help="Apply the run's fitted stain normalizer first."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write every prediction (and unreadable file) to this CSV."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, max=4096),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", min=0, max=64, help="Decoding workers (default: cores - 1)."),
    fold: Optional[int] = FoldOption,
) -> None:
    """Predict images with a finished run: its weights, classes, normalizer and validation-locked threshold.
    On a cross-validation folder: the mean of its fold models, at the threshold locked on their validation splits."""
    from histofuse.data.loading import default_num_workers
    from histofuse.inference import open_run
    from histofuse.predict_cli import predict_paths, predictions_table

    run = open_run(run_dir, fold)
    if tta in TTA_MODES and not run.calibrated(tta):
        where = f"each {run_dir}/fold-K" if hasattr(run, "members") else str(run_dir)
        err_console.print(
            f"warning: the run locked no threshold or temperature for TTA {tta}: probabilities use temperature 1 and "
            f"the decision is the most probable class. To lock them on its validation split, run histofuse evaluate "
            f"{where} --tta {tta} on any set.", markup=False,
        )
    workers = default_num_workers() if num_workers is None else num_workers
    result = predict_paths(run, inputs, tta=tta, normalize=normalize, batch_size=batch_size, num_workers=workers, console=console)
    console.print(predictions_table(result, run.classes))
    if out is not None:
        result.to_csv(out, index=False)
        console.print(f"wrote {len(result)} rows to {out}", markup=False)
    bad = result[result["error"] != ""]
    for row in bad.itertuples(index=False):
        err_console.print(f"unreadable: {row.path}: {row.error}", markup=False)
    summary = f"{len(result) - len(bad)} predicted, {len(bad)} unreadable"
    if normalize:
        for reason, count in result.loc[result["unnormalized"] != "", "unnormalized"].value_counts().items():
            err_console.print(f"left unnormalized: {count} image(s): {reason}", markup=False)
    threshold = run.calibration(tta)["threshold"]
    source = "the folds' validation splits pooled" if hasattr(run, "members") else "the run's validation split"
    console.print(summary + (f"; threshold {threshold:.3f} (from {source}, TTA {tta})" if threshold is not None else ""))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A finished run directory.")) -> None:
    """Render RUN_DIR/report.html (curves, ROC, confusion matrix, per-magnification/patient tables, QC, recipe)."""
    from histofuse.manifest import MANIFEST, MODEL_CARD, model_card
    from histofuse.report import write_report

    if not (run_dir / "metrics.json").is_file():
        raise typer.BadParameter(f"'{run_dir}' has no metrics.json: not a finished run directory", param_hint="RUN_DIR")
    page = write_report(run_dir)
    manifest, cross_validation = run_dir / MANIFEST, run_dir / "cv_metrics.json"
    if cross_validation.is_file():
        import json

        from histofuse.crossval.card import write_model_card

        write_model_card(run_dir, json.loads(cross_validation.read_text()))
    elif manifest.is_file():
        import json

        (run_dir / MODEL_CARD).write_text(model_card(json.loads(manifest.read_text())))
    console.print(f"wrote {page} (figures in {page.parent / 'report'})", markup=False)


@app.command("explain")
def explain_images(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    images: List[Path] = typer.Argument(..., help="Image files."),
    normalize: bool = typer.Option(False, "--normalize", help="Apply the run's fitted stain normalizer first."),
    out: Path = typer.Option(Path("explanations"), "--out", help="Folder for the heatmap overlays (PNG)."),
    fold: Optional[int] = FoldOption,
) -> None:
    """Heatmaps of where each branch looks: Grad-CAM (CNN branches), attention rollout (ViT branches).
    On a cross-validation folder: the fold ensemble's probabilities, each heatmap averaged over the folds."""
    import cv2

    from histofuse.data.decode import decode_image, decoded_images
    from histofuse.errors import ImageDecodeError
    from histofuse.explain import explain
    from histofuse.inference import open_run

    run = open_run(run_dir, fold)
    if normalize:
        run.adapt(rgb for _, rgb in decoded_images(images))  # the given images are the set, as in predict
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path, stem in zip(images, _unique_stems(images)):
        try:
            rgb = decode_image(path)
        except ImageDecodeError as exc:
            err_console.print(f"unreadable: {exc}", markup=False)
            failed += 1
            continue
        probs, explanations = explain(run, rgb, normalize=normalize)
        label = ", ".join(f"{c} {p:.3f}" for c, p in zip(run.classes, probs))
        for e in explanations:
            target = out / f"{stem}_{e.backbone}.png"
            cv2.imwrite(str(target), cv2.cvtColor(e.overlay, cv2.COLOR_RGB2BGR))
            console.print(f"{path}: {label}; {e.backbone} ({e.method}) -> {target}", markup=False)
    if failed:
        raise typer.Exit(1)


def _unique_stems(paths: List[Path]) -> List[str]:
    """File stems, numbered where two inputs share one (a/x.png, b/x.png: x, x-2), so no output overwrites another."""
    used: set[str] = set()
    stems = []
    for path in paths:
        stem, n = path.stem, 1
        while stem in used:
            n += 1
            stem = f"{path.stem}-{n}"
        used.add(stem)
        stems.append(stem)
    return stems


@app.command("serve")
def serve_run(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 exposes it to your network)."),
    port: int = typer.Option(7860, "--port", min=1, max=65535),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", min=1, max=2000, help="Largest upload accepted."),
    fold: Optional[int] = FoldOption,
) -> None:
    """Start the web app (Gradio, offline): upload an image, choose normalization and TTA, see probabilities and heatmaps."""
    from histofuse.inference import open_run
    from histofuse.serve import serve

    serve(open_run(run_dir, fold), host, port, max_upload_mb)


@app.command("export")
def export_run(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    fmt: str = typer.Option(..., "--format", help="onnx, torchscript, or space (a Hugging Face Space folder)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Output file, or folder for space (default: RUN_DIR/export/model.onnx, model.pt or space/)."
    ),
    fold: Optional[int] = FoldOption,
) -> None:
    """Export the model for deployment; its outputs are checked against PyTorch on the run's test images (1e-4)."""
    from histofuse.export import export, export_space
    from histofuse.inference import open_run

    if fmt not in ("onnx", "torchscript", "space"):
        raise typer.BadParameter(f"expected onnx, torchscript or space, got '{fmt}'", param_hint="--format")
    run = open_run(run_dir, fold)
    if fmt == "space":
        folder = out or run_dir / "export" / "space"
        result = export_space(run, folder)
        console.print(
            f"wrote a Space to {folder} (app.py, requirements.txt, model.onnx, README.md); max |difference| from "
            f"PyTorch {result['max_abs_diff']:.2e}. Try it: cd {folder} && pip install -r requirements.txt && python app.py",
            markup=False,
        )
        return
    target = out or run_dir / "export" / ("model.onnx" if fmt == "onnx" else "model.pt")
    result = export(run, fmt, target)
    console.print(
        f"wrote {target} ({fmt}); max |difference| from PyTorch {result['max_abs_diff']:.2e} on {result['checked_on']}; "
        f"preprocessing and classes in {target.name}.json",
        markup=False,
    )


@data_app.command("check")
def data_check(
    target: str = typer.Argument(..., help="A recipe file, or a dataset name followed by its ROOT."),
    root: Optional[Path] = typer.Argument(None, help="With a dataset name: the folder to scan."),
    set_: Optional[List[str]] = SetOption,
    option: Optional[List[str]] = typer.Option(None, "--option", help="With a dataset name: KEY=VALUE option (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write every finding to this CSV."),
) -> None:
    """Scan every image for what training would skip (missing, empty, truncated, not an image, too large),
    convert (unusual depth/channels) or leak (the same bytes in two splits). Exit 1 when training is not safe."""
    import pandas as pd

    from histofuse.data_check import UNREADABLE, check_images, verdict

    frame, max_pixels, max_failed = _images_to_check(target, root, set_, option)
    columns = (TextColumn("  checking"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("check", total=len(frame))
        findings = check_images(frame, max_pixels, progress=lambda: progress.advance(task))
    table = Table(title=f"{len(frame)} images checked")
    for column in ("kind", "files", "examples"):
        table.add_column(column, overflow="fold")
    by_kind: dict[str, list] = {}
    for f in findings:
        by_kind.setdefault(f.kind, []).append(f)
    for kind, items in sorted(by_kind.items(), key=lambda kv: (kv[0] not in UNREADABLE, kv[0])):
        examples = "\n".join(f"{f.path} ({f.split}): {f.detail}" for f in items[:3]) + (f"\n... {len(items) - 3} more" if len(items) > 3 else "")
        table.add_row(kind, str(len(items)), escape(examples))
    console.print(table)
    if out is not None:
        pd.DataFrame([vars(f) for f in findings], columns=["path", "split", "kind", "detail"]).to_csv(out, index=False)
        console.print(f"wrote {len(findings)} findings to {out}", markup=False)
    safe, message = verdict(findings, len(frame), max_failed)
    console.print(("[green]" if safe else "[bold red]") + escape(message) + "[/]")
    if not safe:
        raise typer.Exit(1)


def _images_to_check(target: str, root: Optional[Path], overrides, options):
    """(path/split frame, pixel limit, failure limit) for a recipe (its splits and [[evaluate]] sets) or a dataset."""
    import pandas as pd

    from histofuse.data.decode import MAX_PIXELS
    from histofuse.recipe import DataConfig

    if root is not None:
        from histofuse.evaluate_run import scan_dataset

        table = scan_dataset(_registry(), target, root, options or [])
        defaults = DataConfig.model_fields
        return table.assign(split="dataset")[["path", "split"]], MAX_PIXELS, defaults["max_failed_fraction"].default
    from histofuse.data.split import assign_folds, split_seed, split_table
    from histofuse.evaluation import load_external
    from histofuse.run import load_table

    recipe, registry, _ = _load(Path(target), overrides)
    table, classes = load_table(recipe, registry)
    split = recipe.data.split
    if split.folds is not None and split.fold is None:  # a cross-validation: each image's fold is its split
        table = assign_folds(table, split.folds, split_seed(split, recipe.seed))
        table["split"] = "fold-" + table["fold"].astype(str)
    else:
        table = split_table(table, split, recipe.seed)
    frames = [table[["path", "split"]]]
    for external in recipe.evaluate:
        frames.append(load_external(external, registry, classes).assign(split=f"evaluate:{external.name}")[["path", "split"]])
    # The same external set listed twice (raw, and with QC/normalization) is one set of files.
    frame = pd.concat(frames).drop_duplicates(subset="path", keep="first").reset_index(drop=True)
    return frame, recipe.data.max_image_pixels, recipe.data.max_failed_fraction


@recipe_app.command("check")
def recipe_check(
    recipe: Path = typer.Argument(..., help="Recipe TOML file, or a shipped recipe's name (histofuse recipe list)."),
    set_: Optional[List[str]] = SetOption,
    show_toml: bool = typer.Option(False, "--show-toml", help="Also print the resolved recipe, defaults filled in."),
) -> None:
    """Validate a recipe and show what it resolves to: plugins, model size, phases."""
    from histofuse.recipe import recipe_to_toml
    from histofuse.summary import describe_recipe

    parsed, registry, model = _load(recipe, set_)
    for table in describe_recipe(parsed, registry, model):
        console.print(table)
    console.print(f"[green]ok[/]: {escape(str(recipe))} is valid")
    if show_toml:
        console.print(recipe_to_toml(parsed), markup=False, highlight=False)


@recipe_app.command("list")
def recipe_list() -> None:
    """List the recipes shipped with histofuse: run one by name (histofuse run quickstart) or copy it to edit."""
    from histofuse.recipe_files import packaged_recipes

    recipes = packaged_recipes()
    width = max((len(r.name) for r in recipes), default=0)
    for r in recipes:
        console.print(f"{r.name:<{width}}  {r.description}", markup=False, highlight=False)


@recipe_app.command("copy")
def recipe_copy(
    name: str = typer.Argument(..., help="A shipped recipe's name (histofuse recipe list)."),
    dest: Optional[str] = typer.Argument(None, help="File or folder to write it to (default: ./NAME.toml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite DEST if it exists."),
) -> None:
    """Write a shipped recipe to a file of your own, to edit and run."""
    from histofuse.recipe_files import copy_recipe

    target = copy_recipe(name, dest, force)
    console.print(f"wrote {target}; run it with: histofuse run {target}", markup=False, highlight=False)


@app.command()
def plugins() -> None:
    """List installed plugins and the components they provide."""
    registry = _registry()
    table = Table(title="histofuse components")
    for column in ("kind", "name", "distribution", "plugin"):
        table.add_column(column, no_wrap=True)
    table.add_column("description")
    for entry in registry.entries():
        table.add_row(entry.kind, entry.name, entry.distribution, entry.plugin, entry.spec.description)
    # Piped output (grep, logs) gets full rows instead of 80 columns with names cut short.
    out = console if console.is_terminal else Console(width=200)
    out.print(table)
    if registry.failures:
        broken = Table(title="plugins that failed to load", title_style="bold red")
        for column in ("plugin", "distribution"):
            broken.add_column(column, no_wrap=True)
        broken.add_column("error")
        for failure in registry.failures:
            broken.add_row(failure.name, failure.distribution, failure.error)
        out.print(broken)


def _metrics_table(metrics: dict, cross_validation: bool = False) -> Table:
    """One column per evaluated set: the test split and each external set."""

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    sets = {k: v for k, v in metrics.items() if isinstance(v, dict) and "auc" in v}
    title = (
        "cross-validation: test = every fold's held-out patients pooled (each at its fold's threshold); "
        "external sets = the fold ensemble (threshold from the folds' validation predictions)"
        if cross_validation else "evaluation (threshold and temperature from the validation split)"
    )
    table = Table(title=title)
    table.add_column("metric")
    for name in sets:
        table.add_column(name, justify="right")
    rows = [
        ("images", lambda m: str(m["n"])),
        ("AUC", lambda m: fmt(m["auc"])),
        ("AUC 95% CI (by patient)", lambda m: "n/a" if not m.get("auc_ci95") else f"{m['auc_ci95'][0]:.3f}-{m['auc_ci95'][1]:.3f}"),
        ("accuracy", lambda m: fmt(m["accuracy"])),
        ("balanced accuracy", lambda m: fmt(m["balanced_accuracy"])),
        ("recall (sensitivity)", lambda m: fmt(m["recall"])),
        ("specificity", lambda m: fmt(m["specificity"])),
        ("precision", lambda m: fmt(m["precision"])),
        ("F1", lambda m: fmt(m["f1"])),
        ("ECE", lambda m: fmt(m.get("ece"))),
        ("patient AUC", lambda m: fmt(m["per_patient"]["auc"]) if "per_patient" in m else "n/a"),
        ("colour-only AUC", lambda m: fmt(m["color_baseline"]["auc"]) if "color_baseline" in m else "n/a"),
        ("QC removed", lambda m: f"{m['qc']['removed']} of {m['qc']['checked']}" if m.get("qc") else "-"),
        ("TTA / normalized", lambda m: f"{m['tta']} / {'yes' if m['normalized'] else 'no'}"),
        ("confusion (rows true)", lambda m: "\n".join(str(r) for r in m["confusion_matrix"])),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(m) for m in sets.values()))
    return table


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    dataset: str = typer.Option(..., "--dataset", help="Registered dataset, e.g. bach."),
    root: Path = typer.Option(..., "--root", help="Where the dataset is."),
    name: Optional[str] = typer.Option(None, "--name", help="Name of this evaluation (default: the dataset name)."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Dataset option KEY=VALUE (TOML value), repeatable."),
    label_map: Optional[List[str]] = typer.Option(None, "--map", help="Map a dataset label onto a class: FROM=TO, repeatable."),
    qc: bool = typer.Option(False, "--qc", help="Drop blurred images and images with little tissue first."),
    normalize: bool = typer.Option(False, "--normalize", help="Stain-normalize with the statistics fitted on the run's training split."),
    tta: str = typer.Option("none", "--tta", help=f"Test-time augmentation: {', '.join(TTA_MODES)}."),
) -> None:
    """Evaluate a finished run on another dataset, with the run's threshold, normalizer and baseline.
    On a cross-validation folder: every fold, then the fold ensemble (added to its cv_metrics.json)."""
    from histofuse.crossval import is_crossval_dir
    from histofuse.evaluate_run import evaluate_run

    settings = dict(dataset=dataset, root=root, name=name or dataset, options=option or [], label_map=label_map or [],
                    qc=qc, normalize=normalize, tta=tta, console=console)
    if is_crossval_dir(run_dir):
        import json

        from histofuse.crossval.pooling import pool_folds
        from histofuse.crossval.runner import finished_folds
        from histofuse.recipe import load_recipe

        for fold in finished_folds(run_dir):
            console.rule(fold.name)
            evaluate_run(fold, **settings)
        pool_folds(run_dir, load_recipe(run_dir / "recipe.toml"), console)
        metrics = json.loads((run_dir / "metrics.json").read_text())[settings["name"]]
        console.print(_metrics_table({metrics["name"]: metrics}, cross_validation=True))
        return
    metrics = evaluate_run(run_dir, **settings)
    console.print(_metrics_table({metrics["name"]: metrics}))


@app.command("qc")
def qc_command(
    dataset: str = typer.Argument(..., help="Registered dataset, e.g. bach."),
    root: Path = typer.Argument(..., help="Where the dataset is."),
    out: Path = typer.Option(Path("qc.csv"), "--out", help="CSV with each image's scores and verdict."),
    blur: float = typer.Option(75.0, min=0, help="Minimum variance of the Laplacian."),
    background: int = typer.Option(220, min=1, max=255, help="Grey level counted as background."),
    min_tissue: float = typer.Option(0.40, min=0, max=1, help="Minimum tissue fraction."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Dataset option KEY=VALUE, repeatable."),
) -> None:
    """Score every image for blur and tissue fraction; print a summary and write a CSV."""
    from histofuse.data.decode import decode_image
    from histofuse.evaluate_run import scan_dataset
    from histofuse.qc import QCThresholds, qc_summary, run_qc

    table = scan_dataset(_registry(), dataset, root, option or [])
    scored = run_qc(table, QCThresholds(blur, background, min_tissue), decode_image)
    scored.to_csv(out, index=False)
    summary = qc_summary(scored)
    result = Table(title=f"quality control: {dataset} at {root}")
    result.add_column("verdict")
    result.add_column("images", justify="right")
    result.add_row("passed", str(summary["passed"]))
    for reason, count in summary["reasons"].items():
        result.add_row(f"removed: {reason}", str(count))
    console.print(result)
    console.print(f"scores per image: {escape(str(out))}")


@app.command("stain-stats")
def stain_stats(
    dataset: str = typer.Argument(..., help="Registered dataset."),
    root: Path = typer.Argument(..., help="Where the dataset is."),
    out: Path = typer.Option(Path("stain_stats.json"), "--out", help="Where to save the statistics."),
    normalizer: str = typer.Option("reinhard", "--normalizer", help="Registered normalizer to fit."),
    sample: Optional[int] = typer.Option(None, "--sample", min=1, help="Fit on a random sample of N images."),
    tissue_only: bool = typer.Option(False, "--tissue-only", help="Statistics over tissue pixels only."),
    seed: int = typer.Option(0, "--seed", min=0),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Dataset option KEY=VALUE, repeatable."),
) -> None:
    """Fit a stain normalizer's statistics on a whole dataset (streaming) and save them as JSON."""
    import json

    from histofuse.evaluate_run import fit_normalizer_on

    registry = _registry()
    state = fit_normalizer_on(registry, dataset, root, normalizer, option or [], sample, tissue_only, seed)
    out.write_text(json.dumps(state, indent=2))
    console.print_json(data=state)
    console.print(f"saved: {escape(str(out))}")


def _add_plugin_commands() -> None:
    try:
        from histofuse.plugins import create_plugin_manager

        create_plugin_manager().hook.register_commands(app=app)
    except Exception as exc:  # a broken plugin must not take the CLI down
        err_console.print(f"[yellow]warning:[/] plugin commands unavailable: {escape(str(exc))}")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err_console, show_path=False)])
    _add_plugin_commands()
    try:
        app()
    except HistofuseError as exc:
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)), highlight=False)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]; files already written in the run directory are kept")
        raise SystemExit(130) from None
