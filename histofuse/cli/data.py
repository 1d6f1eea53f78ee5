"""Commands on images and datasets: data check, qc, stain-stats."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from histofuse.cli.app import SetOption, app, console, data_app, registry
from histofuse.preflight import preflight


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

    frame, max_pixels, max_failed = images_to_check(target, root, set_, option)
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


def images_to_check(target: str, root: Optional[Path], overrides, options):
    """(path/split frame, pixel limit, failure limit) for a recipe (its splits and [[evaluate]] sets) or a dataset."""
    import pandas as pd

    from histofuse.data.decode import MAX_PIXELS
    from histofuse.recipe import DataConfig

    if root is not None:
        from histofuse.evaluation.finished_run import scan_dataset

        table = scan_dataset(registry(), target, root, options or [])
        defaults = DataConfig.model_fields
        return table.assign(split="dataset")[["path", "split"]], MAX_PIXELS, defaults["max_failed_fraction"].default
    from histofuse.data.split import assign_folds, split_seed, split_table
    from histofuse.evaluation.sets import load_external
    from histofuse.data.scanning import load_table

    recipe, components, _ = preflight(Path(target), overrides)
    table, classes = load_table(recipe, components)
    split = recipe.data.split
    if split.folds is not None and split.fold is None:  # a cross-validation: each image's fold is its split
        table = assign_folds(table, split.folds, split_seed(split, recipe.seed))
        table["split"] = "fold-" + table["fold"].astype(str)
    else:
        table = split_table(table, split, recipe.seed)
    frames = [table[["path", "split"]]]
    for external in recipe.evaluate:
        frames.append(load_external(external, components, classes).assign(split=f"evaluate:{external.name}")[["path", "split"]])
    # The same external set listed twice (raw, and with QC/normalization) is one set of files.
    frame = pd.concat(frames).drop_duplicates(subset="path", keep="first").reset_index(drop=True)
    return frame, recipe.data.max_image_pixels, recipe.data.max_failed_fraction


@app.command("qc")
def qc_command(
    dataset: str = typer.Argument(..., help="Registered dataset, e.g. bach."),
    root: Path = typer.Argument(..., help="Where the dataset is."),
    out: Path = typer.Option(Path("qc.csv"), "--out", help="CSV with each image's scores and verdict."),
    blur: float = typer.Option(75.0, min=0, help="Minimum variance of the Laplacian."),
    background: int = typer.Option(220, min=1, max=255, help="Grey level counted as background."),
    min_tissue: float = typer.Option(0.40, min=0, max=1, help="Minimum tissue fraction."),
    option: Optional[List[str]] = typer.Option(None, "--option", help="Dataset option KEY=VALUE, repeatable."),
    mpp: Optional[float] = typer.Option(
        None, "--mpp", min=0.01, max=20, help="Score each image at this µm per pixel, as a run with data.mpp sees it."
    ),
) -> None:
    """Score every image for blur and tissue fraction; print a summary and write a CSV."""
    from histofuse.data.decode import decode_image
    from histofuse.data.tiles import decoder_at
    from histofuse.evaluation.finished_run import scan_dataset
    from histofuse.qc import QCThresholds, qc_summary, run_qc

    table = scan_dataset(registry(), dataset, root, option or [])
    decode = decode_image if mpp is None else decoder_at(table, mpp, f"{dataset} at {root}", "--mpp")
    scored = run_qc(table, QCThresholds(blur, background, min_tissue), decode)
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

    from histofuse.evaluation.finished_run import fit_normalizer_on

    state = fit_normalizer_on(registry(), dataset, root, normalizer, option or [], sample, tissue_only, seed)
    out.write_text(json.dumps(state, indent=2))
    console.print_json(data=state)
    console.print(f"saved: {escape(str(out))}")

