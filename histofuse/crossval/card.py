"""MODEL_CARD.md of a cross-validation: the protocol in words, the spread over folds, the pooled and ensemble results."""

from __future__ import annotations

import json
from pathlib import Path

from histofuse.rundir import RunDir


def write_model_card(parent: Path, report: dict) -> Path:
    from histofuse.crossval.runner import fold_dir

    first = json.loads(RunDir(fold_dir(parent, 1)).manifest.read_text())
    recipe = first["recipe"]
    model = recipe["model"]
    backbones = ", ".join(f"{b['name']}: {b['model']} ({b['source']})" for b in model["backbones"])
    lines = [
        f"# {recipe['name']} ({report['folds']}-fold cross-validation)", "", recipe.get("description", ""), "",
        "## Protocol", "", report["protocol"], "",
        "## Model", "",
        f"- Backbones: {backbones}; fusion: `{model['fusion']}`; classes: {', '.join(first['classes'])}.",
        "- Training: " + "; ".join(f"{p['name']} ({p['epochs']} epochs, unfreeze {p['unfreeze']})" for p in recipe["phases"]) + ".",
        f"- {report['folds']} models, one per fold (`fold-1/` … `fold-{report['folds']}/`, each a complete run with its "
        "own model card); `histofuse predict` on this folder averages them.",
        "", "## Results", "",
        "Per fold: mean ± sd over the folds (sample sd). Pooled: all out-of-fold predictions at once; "
        "ensemble: the mean probability of the fold models. 95% CIs resample patients.", "",
        "| set | AUC per fold | colour-only per fold | pooled / ensemble AUC (95% CI) | colour-only (95% CI) | patient AUC |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report.items():
        if not isinstance(entry, dict) or name == "protocol":
            continue
        if "error" in entry:
            lines.append(f"| {name} | failed: {entry['error']} | | | | |")
            continue
        s = entry["summary"]
        head = entry.get("pooled") or entry["ensemble"]
        kind = "pooled" if "pooled" in entry else "ensemble"
        lines.append(
            f"| {name} | {_mean_sd(s['auc'])} | {_mean_sd(s['colour_only_auc'])} | {kind} {_with_ci(head['auc'], head['auc_ci95'])} "
            f"| {_with_ci(head['colour_only_auc'], head['colour_only_auc_ci95'])} | {_f(head['patient_auc'])} |"
        )
    lines += [
        "", "## Per fold (test fold)", "",
        "| fold | images | patients | AUC | colour-only AUC | patient AUC | balanced accuracy | threshold |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['fold']} | {r['n']} | {r['patients']} | {_f(r['auc'])} | {_f(r['colour_only_auc'])} | {_f(r['patient_auc'])} "
            f"| {_f(r['balanced_accuracy'])} | {_f(r['threshold'])} |"
            for r in report["test"]["per_fold"]
        ],
        "", "## Intended use", "", first["intended_use"], "",
        "## Limitations", "", *[f"- {item}" for item in first["limitations"]], "",
        "## Provenance", "",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in first["versions"].items() if v) + ".",
        "- Fold assignment in `folds.csv`; every number above in `cv_metrics.json`; figures in `report.html`.", "",
    ]
    path = RunDir(parent).model_card
    path.write_text("\n".join(lines))
    return path


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mean_sd(entry: dict) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.3f}" + ("" if entry["sd"] is None else f" ± {entry['sd']:.3f}")


def _with_ci(value, ci) -> str:
    return _f(value) + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
