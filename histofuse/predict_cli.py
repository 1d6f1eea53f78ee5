"""histofuse predict: a finished run's model on image files and folders, batched, to a table and a CSV."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from histofuse.errors import HistofuseError
from histofuse.recipe import TTA

TTA_MODES = get_args(TTA)  # what a recipe accepts; tests check histofuse.tta implements each


def predict_paths(run, inputs: list[Path], *, tta: str, normalize: bool, batch_size: int, num_workers: int, console) -> pd.DataFrame:
    """One row per input image: probabilities and the decided class, or the reason it could not be read; with
    ``normalize``, also why the normalizer left a tile unchanged (a background or flat tile, say)."""
    from histofuse.data.decode import decoded_images
    from histofuse.inference import expand_inputs

    if tta not in TTA_MODES:
        raise HistofuseError(f"--tta: expected one of {', '.join(TTA_MODES)}, got '{tta}'")
    if normalize and hasattr(run, "members"):
        return _ensemble_normalized(run, inputs, tta=tta, batch_size=batch_size, num_workers=num_workers, console=console)
    if normalize and run.normalizer is None:
        raise HistofuseError("--normalize: this run saved no stain normalizer (no [[evaluate]] set had normalize = true)")
    paths, failed = expand_inputs(inputs)
    if not paths and not failed:
        raise HistofuseError("no image files found in " + ", ".join(map(str, inputs)) + f" (looked for {', '.join(run_suffixes())})")
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    rows, unchanged = [], {}
    if paths:
        if normalize:
            run.adapt(rgb for _, rgb in decoded_images(frame["path"]))
        columns = (TextColumn("  predicting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("predict", total=len(paths))
            for batch in _batches(run, frame, tta, normalize, batch_size, num_workers, unchanged):
                failed += batch["failed"]
                if batch["image"] is not None:
                    probs = run.probabilities(batch["image"], tta)
                    decided = run.decide(probs, tta)
                    for index, p, d in zip(batch["index"].tolist(), probs, decided):
                        rows.append({"path": frame["path"][index], "predicted": run.classes[d], "error": "",
                                     "unnormalized": unchanged.get(index, ""), **{f"prob_{c}": float(v) for c, v in zip(run.classes, p)}})
                progress.advance(task, len(batch["failed"]) + (0 if batch["image"] is None else len(batch["image"])))
    rows += [{"path": path, "predicted": "", "error": reason, "unnormalized": ""} for path, reason in failed]
    names = ["path", "predicted", *[f"prob_{c}" for c in run.classes], "error"] + (["unnormalized"] if normalize else [])
    result = pd.DataFrame(rows, columns=names)
    order = {str(p): i for i, p in enumerate(paths)}
    return result.sort_values("path", key=lambda s: s.map(lambda p: order.get(p, len(order)))).reset_index(drop=True)


def _ensemble_normalized(run, inputs, *, tta: str, batch_size: int, num_workers: int, console) -> pd.DataFrame:
    """A fold ensemble with stain normalization: each fold predicts with its own normalizer (fitted on its own
    training patients), then the probabilities are averaged and decided at the ensemble's threshold."""
    frames = [predict_paths(m, inputs, tta=tta, normalize=True, batch_size=batch_size, num_workers=num_workers, console=console)
              for m in run.members]
    out = frames[0].copy()
    columns = [f"prob_{c}" for c in run.classes]
    out[columns] = sum(f[columns].to_numpy() for f in frames) / len(frames)
    readable = out["error"] == ""
    out.loc[readable, "predicted"] = [run.classes[i] for i in run.decide(out.loc[readable, columns].to_numpy(), tta)]
    # A tile one fold's normalizer left unchanged is reported once, with that reason.
    out["unnormalized"] = [next((r for r in reasons if r), "") for reasons in zip(*(f["unnormalized"] for f in frames))]
    return out


def _batches(run, frame: pd.DataFrame, tta: str, normalize: bool, batch_size: int, num_workers: int, unchanged: dict):
    """The loader's batches; normalizing, each tile the normalizer left unchanged lands in ``unchanged`` by index
    (the normalizer runs in the workers, whose own counts never reach this process)."""
    from histofuse.evaluation import collect_unchanged, make_eval_loader

    loader = make_eval_loader(frame, run.classes, run.transform_for(tta), run.normalizer if normalize else None,
                              batch_size, num_workers, max_pixels=run.recipe.data.max_image_pixels)
    return collect_unchanged(loader, unchanged)


def run_suffixes() -> tuple[str, ...]:
    from histofuse.inference import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def predictions_table(result: pd.DataFrame, classes: list[str], limit: int = 30) -> Table:
    table = Table(title=f"predictions ({len(result)} files)")
    table.add_column("file", overflow="fold")
    table.add_column("predicted")
    for c in classes:
        table.add_column(f"p({c})", justify="right")
    for row in result.head(limit).to_dict("records"):
        if row["error"]:
            table.add_row(row["path"], "[red]unreadable[/]", *["-" for _ in classes])
        else:
            table.add_row(row["path"], row["predicted"], *[f"{row[f'prob_{c}']:.4f}" for c in classes])
    if len(result) > limit:
        table.caption = f"... and {len(result) - limit} more (all of them in the CSV with --out)"
    return table
