"""Commands on a finished run: predict, evaluate, explain, report, serve, export."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from histofuse.cli.app import TTA_MODES, FoldOption, app, console, err_console
from histofuse.cli.tables import metrics_table, predictions_table
from histofuse.rundir import RunDir


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
    mpp: Optional[float] = typer.Option(
        None, "--mpp", min=0.01, max=20, help="The images' µm per pixel, for a run trained at one scale (data.mpp)."
    ),
) -> None:
    """Predict images with a finished run: its weights, classes, normalizer and validation-locked threshold.
    On a cross-validation folder: the mean of its fold models, at the threshold locked on their validation splits."""
    from histofuse.data.loading import default_num_workers
    from histofuse.inference import open_run, predict_paths

    run = open_run(run_dir, fold)
    if tta in TTA_MODES and not run.calibrated(tta):
        where = f"each {run_dir}/fold-K" if hasattr(run, "members") else str(run_dir)
        err_console.print(
            f"warning: the run locked no threshold or temperature for TTA {tta}: probabilities use temperature 1 and "
            f"the decision is the most probable class. To lock them on its validation split, run histofuse evaluate "
            f"{where} --tta {tta} on any set.", markup=False,
        )
    _check_scale(run, mpp)
    workers = default_num_workers() if num_workers is None else num_workers
    columns = (TextColumn("  predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("predict", total=None)
        result = predict_paths(run, inputs, tta=tta, normalize=normalize, batch_size=batch_size, num_workers=workers, mpp=mpp,
                               progress=lambda done, total: progress.update(task, advance=done, total=total))
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
    from histofuse.evaluation.finished_run import evaluate_run

    settings = dict(dataset=dataset, root=root, name=name or dataset, options=option or [], label_map=label_map or [],
                    qc=qc, normalize=normalize, tta=tta)
    if is_crossval_dir(run_dir):
        import json

        from histofuse.crossval.pooling import pool_folds
        from histofuse.crossval.runner import finished_folds
        from histofuse.recipe import load_recipe

        for fold in finished_folds(run_dir):
            console.rule(fold.name)
            evaluate_run(fold, **settings)
        pool_folds(run_dir, load_recipe(RunDir(run_dir).recipe_file))
        metrics = json.loads(RunDir(run_dir).metrics.read_text())[settings["name"]]
        console.print(metrics_table({metrics["name"]: metrics}, cross_validation=True))
        return
    metrics = evaluate_run(run_dir, **settings)
    console.print(metrics_table({metrics["name"]: metrics}))


@app.command("explain")
def explain_images(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    images: List[Path] = typer.Argument(..., help="Image files."),
    normalize: bool = typer.Option(False, "--normalize", help="Apply the run's fitted stain normalizer first."),
    out: Path = typer.Option(Path("explanations"), "--out", help="Folder for the heatmap overlays (PNG)."),
    fold: Optional[int] = FoldOption,
    mpp: Optional[float] = typer.Option(
        None, "--mpp", min=0.01, max=20, help="The images' µm per pixel, for a run trained at one scale (data.mpp)."
    ),
) -> None:
    """Heatmaps of where each branch looks: Grad-CAM (CNN branches), attention rollout (ViT branches); for a run
    trained on tiles, also each tile's probability over the image (<image>_tiles.png).
    On a cross-validation folder: the fold ensemble's probabilities, each heatmap averaged over the folds."""
    import cv2

    from histofuse.data.decode import decode_image, decoded_images
    from histofuse.errors import ImageDecodeError
    from histofuse.explain import explain
    from histofuse.inference import open_run

    run = open_run(run_dir, fold)
    _check_scale(run, mpp)
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
        probs, explanations = explain(run, rgb, normalize=normalize, mpp=mpp)
        label = ", ".join(f"{c} {p:.3f}" for c, p in zip(run.classes, probs))
        for e in explanations:
            target = out / f"{stem}_{e.backbone}.png"
            cv2.imwrite(str(target), cv2.cvtColor(e.overlay, cv2.COLOR_RGB2BGR))
            console.print(f"{path}: {label}; {e.backbone} ({e.method}) -> {target}", markup=False)
    if failed:
        raise typer.Exit(1)


def _check_scale(run, mpp: Optional[float]) -> None:
    """--mpp means something only to a run trained at one scale; such a run says what it assumes without it."""
    trained_at = run.recipe.data.mpp
    if mpp is not None and trained_at is None:
        raise typer.BadParameter("this run was trained without data.mpp: it never brought images to one scale, so it "
                                 "takes them as they are; leave out --mpp", param_hint="--mpp")
    if mpp is None and trained_at is not None:
        err_console.print(f"note: the run was trained at {trained_at:g} µm per pixel; the images are taken to be at that "
                          "scale (give theirs with --mpp)", markup=False)


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


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A finished run directory.")) -> None:
    """Render RUN_DIR/report.html (curves, ROC, confusion matrix, per-magnification/patient tables, QC, recipe)."""
    from histofuse.manifest import model_card
    from histofuse.report import write_report

    if not RunDir(run_dir).metrics.is_file():
        raise typer.BadParameter(f"'{run_dir}' has no metrics.json: not a finished run directory", param_hint="RUN_DIR")
    page = write_report(run_dir)
    manifest, cross_validation = RunDir(run_dir).manifest, RunDir(run_dir).cv_metrics
    if cross_validation.is_file():
        import json

        from histofuse.crossval.card import write_model_card

        write_model_card(run_dir, json.loads(cross_validation.read_text()))
    elif manifest.is_file():
        import json

        RunDir(run_dir).model_card.write_text(model_card(json.loads(manifest.read_text())))
    console.print(f"wrote {page} (figures in {page.parent / 'report'})", markup=False)


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
        folder = out or RunDir(run_dir).exports / "space"
        result = export_space(run, folder)
        console.print(
            f"wrote a Space to {folder} (app.py, requirements.txt, model.onnx, README.md); max |difference| from "
            f"PyTorch {result['max_abs_diff']:.2e}. Try it: cd {folder} && pip install -r requirements.txt && python app.py",
            markup=False,
        )
        return
    target = out or RunDir(run_dir).exports / ("model.onnx" if fmt == "onnx" else "model.pt")
    result = export(run, fmt, target)
    console.print(
        f"wrote {target} ({fmt}); max |difference| from PyTorch {result['max_abs_diff']:.2e} on {result['checked_on']}; "
        f"preprocessing and classes in {target.name}.json",
        markup=False,
    )

