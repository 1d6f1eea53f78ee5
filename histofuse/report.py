"""The run report: one self-contained HTML page (PNG figures embedded, and saved beside it) from a run directory."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse import report_plots as plots
from histofuse.rundir import RunDir


def write_report(run_dir: Path) -> Path:
    """Render ``RUN_DIR/report.html`` and its figures under ``RUN_DIR/report/``; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    layout = RunDir(run_dir)
    figures_dir = layout.report_figures
    figures_dir.mkdir(exist_ok=True)
    metrics = _json(layout.metrics) or {}
    sections = [f"<h1>{_e(layout.path.name)}</h1>"]
    manifest = _json(layout.manifest)
    if manifest:
        sections.append(_summary(manifest))
    history = layout.history
    if history.is_file():
        sections.append("<h2>Training</h2>" + _figure(figures_dir, "training_curves.png", plots.curves(pd.read_csv(history))))
    cross_validation = _json(layout.cv_metrics)
    if cross_validation:
        sections.append(_cross_validation(layout.path, figures_dir, cross_validation))
    for name, entry in metrics.items():
        sections.append(_set_section(layout.path, figures_dir, name, entry))
    comparison = _json(layout.stain_comparison)
    if comparison:
        sections.append(_comparison(comparison))
    evaluation = _json(layout.evaluation)
    if evaluation and evaluation.get("normalizer"):
        sections.append("<h2>Stain normalizer (fitted on the training split)</h2><pre>" + _e(json.dumps(evaluation["normalizer"], indent=1)) + "</pre>")
    recipe = layout.recipe_file
    if recipe.is_file():
        sections.append("<h2>Resolved recipe</h2><pre>" + _e(recipe.read_text()) + "</pre>")
    page = layout.report
    page.write_text(_page(layout.path.name, "\n".join(sections)))
    return page


def _json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _e(text) -> str:
    return html.escape(str(text))


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _e(value)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(folder: Path, name: str, figure) -> str:
    """Save ``figure`` as PNG beside the page and embed the same bytes, so the page works alone."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    data = buffer.getvalue()
    (folder / name).write_bytes(data)
    return f'<img alt="{_e(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _summary(manifest: dict) -> str:
    counts = manifest.get("images", {})
    rows = [[split, *(counts.get(split, {}).get(c, 0) for c in manifest["classes"])] for split in ("train", "val", "test")]
    return (
        "<h2>Run</h2>"
        + _table(["", "value"], [
            ["recipe", manifest["recipe"]["name"]], ["started", manifest.get("created")], ["wall time (s)", manifest.get("wall_seconds")],
            ["hardware", manifest["hardware"].get("description")], ["split hash (sha256)", manifest.get("split_sha256")],
        ])
        + "<h3>Images by split (split by patient)</h3>" + _table(["split", *manifest["classes"]], rows)
    )


def _set_section(run_dir: Path, figures_dir: Path, name: str, m: dict) -> str:
    if "error" in m:
        return f"<h2>{_e(name)}</h2><p class=error>evaluation failed: {_e(m['error'])}</p>"
    ci = m.get("auc_ci95")
    rows = [
        ["images", m["n"]], ["AUC", m["auc"]], ["AUC 95% CI (patient bootstrap)", f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else "n/a"],
        ["accuracy", m["accuracy"]], ["balanced accuracy", m["balanced_accuracy"]], ["sensitivity", m.get("recall")],
        ["specificity", m.get("specificity")], ["F1", m.get("f1")], ["ECE", m.get("ece")],
        ["threshold (validation-locked)", m.get("threshold")], ["TTA", m.get("tta")], ["stain-normalized", m.get("normalized")],
        ["patient-level AUC", m.get("per_patient", {}).get("auc")],
        ["colour-only baseline AUC", (m.get("color_baseline") or {}).get("auc")],
    ]
    parts = [f"<h2>{_e(name)}</h2>", _table(["metric", "value"], rows)]
    figures = []
    predictions = RunDir(run_dir).predictions(name)
    if name == "test" and RunDir(run_dir).oof_predictions.is_file():
        predictions = RunDir(run_dir).oof_predictions
    if predictions.is_file() and len(m.get("classes", [])) == 2:
        figures.append(_figure(figures_dir, f"roc_{name}.png", plots.roc(pd.read_csv(predictions), m)))
    if m.get("confusion_matrix"):
        figures.append(_figure(figures_dir, f"confusion_{name}.png", plots.confusion(np.array(m["confusion_matrix"]), m["classes"])))
    parts.append("<div class=row>" + "".join(figures) + "</div>")
    for key, value in m.items():
        if key.startswith("per_") and key != "per_patient" and isinstance(value, dict) and value:
            column = key[4:]
            parts.append(f"<h3>By {_e(column)}</h3>" + _table(
                [column, "images", "AUC", "accuracy", "sensitivity", "specificity"],
                [[k, v["n"], v["auc"], v["accuracy"], v.get("recall"), v.get("specificity")] for k, v in value.items()],
            ))
    patients = m.get("per_patient", {})
    if patients:
        parts.append("<h3>Per patient (mean probability over the patient's images)</h3>" + _table(
            ["patients", "AUC", "accuracy", "sensitivity", "specificity"],
            [[patients.get("patients", patients.get("n")), patients.get("auc"), patients.get("accuracy"), patients.get("recall"), patients.get("specificity")]],
        ))
    if m.get("qc"):
        qc = m["qc"]
        reasons = ", ".join(f"{k}: {v}" for k, v in qc.get("reasons", {}).items()) or "none"
        parts.append("<h3>Quality control</h3>" + _table(["checked", "passed", "removed", "reasons"], [[qc["checked"], qc["passed"], qc["removed"], reasons]]))
    if m.get("normalization"):
        parts.append(_normalization(m["normalization"]))
    if m.get("failed_images"):
        parts.append(f"<h3>Unreadable images, skipped ({len(m['failed_images'])})</h3>" + _table(
            ["file", "why"], [[path, reason] for path, reason in m["failed_images"].items()]
        ))
    return "\n".join(parts)


def _cross_validation(run_dir: Path, figures_dir: Path, cv: dict) -> str:
    """Protocol, the per-fold table beside the colour-only floor, fold ROCs over the pooled one, and the spread."""
    columns = ["fold", "images", "patients", "AUC", "colour-only AUC", "patient AUC", "balanced accuracy", "threshold"]
    rows = [[r["fold"], r["n"], r["patients"], r["auc"], r["colour_only_auc"], r["patient_auc"], r["balanced_accuracy"], r["threshold"]]
            for r in cv["test"]["per_fold"]]
    summary = cv["test"]["summary"]
    for label, stat in (("mean", "mean"), ("sd", "sd")):
        rows.append([label, "", "", summary["auc"][stat], summary["colour_only_auc"][stat], summary["patient_auc"][stat],
                     summary["balanced_accuracy"][stat], ""])
    parts = [f"<h2>Cross-validation ({cv['folds']} folds)</h2><p>{_e(cv['protocol'])}</p>",
             "<h3>Test folds</h3>" + _table(columns, rows)]
    figures = []
    oof = RunDir(run_dir).oof_predictions
    classes = (_json(RunDir(run_dir).metrics) or {}).get("test", {}).get("classes", [])
    if oof.is_file() and len(classes) == 2:
        figures.append(_figure(figures_dir, "cv_roc.png", plots.fold_rocs(pd.read_csv(oof), classes[1], cv["test"]["pooled"])))
    figures.append(_figure(figures_dir, "cv_spread.png", plots.fold_spread(cv)))
    parts.append("<div class=row>" + "".join(figures) + "</div>")
    for name, entry in cv.items():
        if isinstance(entry, dict) and "ensemble" in entry:
            e, s = entry["ensemble"], entry["summary"]
            parts.append(f"<h3>{_e(name)}: every fold model and their ensemble</h3>" + _table(
                ["model", "AUC", "colour-only AUC", "patient AUC", "balanced accuracy"],
                [[f"fold {r['fold']}", r["auc"], r["colour_only_auc"], r["patient_auc"], r["balanced_accuracy"]] for r in entry["per_fold"]]
                + [["mean ± sd of folds", _mean_sd(s["auc"]), _mean_sd(s["colour_only_auc"]), _mean_sd(s["patient_auc"]),
                    _mean_sd(s["balanced_accuracy"])],
                   ["ensemble", e["auc"], e["colour_only_auc"], e["patient_auc"], e["balanced_accuracy"]]],
            ))
    return "\n".join(parts)


def _mean_sd(entry: dict) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.3f}" + ("" if entry["sd"] is None else f" ± {entry['sd']:.3f}")


def _normalization(summary: dict) -> str:
    """Which normalizer, how many tiles it left unchanged and why, and what it measured on the set itself."""
    unchanged = summary.get("unchanged") or {}
    reasons = ", ".join(f"{reason}: {count}" for reason, count in unchanged.items()) or "none"
    adapted = summary.get("adapted")
    measured = "; ".join(f"{key} {json.dumps(value)}" for key, value in adapted.items()) if adapted else "n/a (per tile)"
    return "<h3>Stain normalization</h3>" + _table(
        ["method", "source", "tiles left unchanged", "reasons", "measured on this set"],
        [[summary.get("method"), summary.get("source"), sum(unchanged.values()), reasons, measured]],
    )


def _comparison(comparison: dict) -> str:
    from histofuse.evaluation.comparison import comparison_cell, unchanged_reasons

    methods = list(next(iter(comparison.values())))
    rows = [[name, *(comparison_cell(row[m]) for m in methods)] for name, row in comparison.items()]
    page = "<h2>Stain normalization side by side (AUC / accuracy, tiles left unchanged)</h2>" + _table(["set", *methods], rows)
    reasons = unchanged_reasons(comparison)
    if reasons:
        page += "<h3>Tiles the normalizers left unchanged</h3>" + _table(["set", "method", "reason", "tiles"], [list(r) for r in reasons])
    return page


def _page(title: str, body: str) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "img{max-width:100%;margin:4px}.row{display:flex;flex-wrap:wrap}pre{background:#f6f6f6;padding:1em;overflow:auto}"
        ".error{color:#b00}"
    )
    return f"<!doctype html><html><head><meta charset=utf-8><title>{_e(title)}</title><style>{style}</style></head><body>{body}</body></html>"
