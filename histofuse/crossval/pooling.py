"""What K finished folds say together: out-of-fold predictions, per-fold spread, pooled AUC, fold ensembles.

Every number here is read from the folds' own files (predictions, metrics);
nothing is re-predicted, so pooling is cheap and can be redone at any time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.calibration import expected_calibration_error, youden_threshold
from histofuse.data.split import split_seed
from histofuse.errors import HistofuseError
from histofuse.evaluation.fitting import EvaluationState
from histofuse.metrics import bootstrap_auc_ci, classification_metrics, patient_level
from histofuse.reporting import log
from histofuse.rundir import RunDir

# Per-fold figures reported as mean ± sd; colour_only_auc is the floor each is read against.
PER_FOLD = ("auc", "colour_only_auc", "patient_auc", "accuracy", "balanced_accuracy", "recall", "specificity", "ece")


def pool_folds(parent: Path, recipe) -> dict:
    """Write oof_predictions.csv, cv_metrics.json, metrics.json (pooled test folds, fold ensembles of every
    external set), ensemble.json (the ensemble's locked thresholds), the report and the model card."""
    from histofuse.crossval.runner import finished_folds

    dirs = finished_folds(parent)
    fold_metrics = [json.loads(RunDir(d).metrics.read_text()) for d in dirs]
    classes = json.loads(RunDir(dirs[0]).model_info.read_text())["classes"]
    cfg = recipe.evaluation
    oof = pd.concat([pd.read_csv(RunDir(d).predictions("test")).assign(fold=k) for k, d in enumerate(dirs, 1)], ignore_index=True)
    check_out_of_fold(oof, pd.read_csv(RunDir(parent).folds), fold_metrics)
    oof.to_csv(RunDir(parent).oof_predictions, index=False)
    thresholds = {k: m["test"].get("threshold") for k, m in enumerate(fold_metrics, 1)}
    pooled = pooled_metrics("test", oof, classes, thresholds, cfg.bootstrap, recipe.seed)
    pooled.update(tta=fold_metrics[0]["test"]["tta"], normalized=False, qc=None,
                  failed_images=_union(m["test"].get("failed_images") for m in fold_metrics))
    split = recipe.data.split
    report = {
        "protocol": protocol(recipe),
        "folds": split.folds,
        "split_seed": split_seed(split, recipe.seed),
        "test": {"per_fold": [fold_row(k, m["test"]) for k, m in enumerate(fold_metrics, 1)], "pooled": _headline(pooled)},
    }
    report["test"]["summary"] = spread(report["test"]["per_fold"])
    metrics = {"test": pooled}
    # Every TTA mode all folds calibrated on validation (the test split's, each external set's): the ensemble's cut
    # for it is locked now, so predict, serve and an export decide alike.
    modes = set.intersection(*(set(EvaluationState.load(d).calibration) for d in dirs))
    ensemble = {tta: {"threshold": ensemble_threshold(dirs, tta, classes, cfg.threshold), "temperature": 1.0}
                for tta in sorted(modes)}
    # The recipe's [[evaluate]] sets, then any set added later to every fold (histofuse evaluate on the parent).
    names = [e.name for e in recipe.evaluate]
    names += [n for n in fold_metrics[0] if n != "test" and n not in names and all(n in m for m in fold_metrics)]
    for name in names:
        per_fold = [m.get(name, {"error": "not evaluated"}) for m in fold_metrics]
        failed = [f"fold-{k}: {m['error']}" for k, m in enumerate(per_fold, 1) if "error" in m]
        if failed:
            metrics[name] = {"name": name, "error": "; ".join(failed)}
            report[name] = {"error": metrics[name]["error"]}
            continue
        first = per_fold[0]
        threshold = ensemble[first["tta"]]["threshold"]
        frames = [pd.read_csv(RunDir(d).predictions(name)) for d in dirs]
        mean = ensemble_predictions(frames, classes, threshold)
        mean.to_csv(RunDir(parent).predictions(name), index=False)
        entry = pooled_metrics(name, mean, classes, threshold, cfg.bootstrap, recipe.seed)
        entry.update(tta=first["tta"], normalized=first["normalized"], qc=first.get("qc"), ensemble_of=len(dirs),
                     failed_images=_union(m.get("failed_images") for m in per_fold))
        metrics[name] = entry
        rows = [fold_row(k, m) for k, m in enumerate(per_fold, 1)]
        report[name] = {"per_fold": rows, "summary": spread(rows), "ensemble": _headline(entry)}
    RunDir(parent).cv_metrics.write_text(json.dumps(report, indent=2))
    RunDir(parent).metrics.write_text(json.dumps(metrics, indent=2))
    RunDir(parent).ensemble.write_text(json.dumps({"folds": [d.name for d in dirs], "calibration": ensemble}, indent=2))
    log.info(cv_summary_text(report))
    _write_records(parent, report)
    return report


def check_out_of_fold(oof: pd.DataFrame, folds: pd.DataFrame, fold_metrics: list[dict]) -> None:
    """Every image of the fold assignment predicted exactly once, by the fold that held it out (unreadable
    images, reported by their fold, excepted)."""
    repeated = oof["path"][oof["path"].duplicated()]
    if len(repeated):
        raise HistofuseError(f"out-of-fold predictions: {len(repeated)} image(s) predicted by two folds, e.g. {repeated.iloc[0]}")
    held_by = dict(zip(folds["path"].astype(str), folds["fold"]))
    wrong = oof[oof["path"].astype(str).map(held_by) != oof["fold"]]
    if len(wrong):
        raise HistofuseError(f"out-of-fold predictions: {len(wrong)} image(s) predicted by a fold that trained on them, "
                             f"e.g. {wrong['path'].iloc[0]}")
    unreadable = set(_union(m["test"].get("failed_images") for m in fold_metrics))
    missing = set(held_by) - set(oof["path"].astype(str)) - unreadable
    if missing:
        raise HistofuseError(f"out-of-fold predictions: {len(missing)} image(s) were never predicted, e.g. {sorted(missing)[0]}")


def pooled_metrics(name: str, frame: pd.DataFrame, classes: list[str], thresholds, bootstrap: int, seed: int) -> dict:
    """Metrics of predictions pooled from several models. ``thresholds``: one cut for all rows, or
    {fold: cut} when each row was decided at its own fold's cut (out-of-fold predictions)."""
    labels = frame["label"].astype(str).map(classes.index).to_numpy()
    probs = frame[[f"prob_{c}" for c in classes]].to_numpy()
    groups = frame["group"].astype(str).to_numpy()
    decided = frame["predicted"].astype(str).map(classes.index).to_numpy()
    metrics = classification_metrics(labels, probs, classes, decided=decided)
    per_fold_cut = isinstance(thresholds, dict)
    metrics.update(
        name=name, threshold=None if per_fold_cut else thresholds, loss=None,
        auc_ci95=bootstrap_auc_ci(labels, probs, groups, bootstrap, seed), ece=expected_calibration_error(labels, probs),
    )
    if per_fold_cut:
        metrics["thresholds_by_fold"] = {str(k): v for k, v in thresholds.items()}
    patient_labels, patient_probs = patient_level(labels, probs, groups)
    patient_cut = _patient_cuts(frame, thresholds) if per_fold_cut else thresholds
    metrics["per_patient"] = classification_metrics(
        patient_labels, patient_probs, classes, decided=_decide(patient_probs, patient_cut)
    )
    metrics["per_patient"]["patients"] = int(len(np.unique(groups)))
    colour = [f"colour_prob_{c}" for c in classes]
    if all(c in frame for c in colour):
        colour_probs = frame[colour].to_numpy()
        base = classification_metrics(labels, colour_probs, classes)
        metrics["color_baseline"] = {k: base[k] for k in ("auc", "accuracy", "balanced_accuracy")}
        metrics["color_baseline"]["auc_ci95"] = bootstrap_auc_ci(labels, colour_probs, groups, bootstrap, seed)
    return metrics


def _patient_cuts(frame: pd.DataFrame, thresholds: dict) -> np.ndarray:
    """Each patient's cut: its fold's (a patient is held out by exactly one fold), in patient_level's order."""
    fold_of = frame.assign(group=frame["group"].astype(str)).groupby("group", sort=True)["fold"].first()
    return np.array([np.nan if thresholds.get(f) is None else thresholds[f] for f in fold_of], dtype=float)


def _decide(probs: np.ndarray, cut) -> np.ndarray:
    cuts = np.broadcast_to(np.asarray(np.nan if cut is None else cut, dtype=float), (len(probs),))
    decided = probs.argmax(1)
    if probs.shape[1] == 2:
        has_cut = ~np.isnan(cuts)
        decided[has_cut] = (probs[has_cut, 1] >= cuts[has_cut]).astype(int)
    return decided


def ensemble_threshold(dirs: list[Path], tta: str, classes: list[str], rule) -> float | None:
    """The fold ensemble's cut, locked on the folds' validation predictions pooled (each fold's validation
    patients predicted by that fold's model): no test fold and no external image is looked at."""
    if len(classes) != 2 or rule is None or rule == "argmax":
        return None
    if isinstance(rule, float):
        return rule
    frames = []
    for d in dirs:
        path = RunDir(d).validation_predictions(tta)
        if not path.is_file():
            raise HistofuseError(f"{path} is missing: the fold ensemble's threshold needs every fold's validation predictions")
        frames.append(pd.read_csv(path))
    val = pd.concat(frames, ignore_index=True)
    return youden_threshold(val["label"].astype(str).map(classes.index).to_numpy(), val[f"prob_{classes[1]}"].to_numpy())


def ensemble_predictions(frames: list[pd.DataFrame], classes: list[str], threshold: float | None) -> pd.DataFrame:
    """The mean probability of every fold model for each image all of them predicted; decided at ``threshold``."""
    prob = [f"prob_{c}" for c in classes]
    colour = [f"colour_prob_{c}" for c in classes]
    averaged = [c for c in prob + colour if all(c in f for f in frames)]
    keys = [c for c in frames[0].columns if c not in averaged and c != "predicted"]
    common = set.intersection(*(set(f["path"]) for f in frames))
    aligned = [f[f["path"].isin(common)].sort_values("path").reset_index(drop=True) for f in frames]
    out = aligned[0][keys].copy()
    for column in averaged:
        out[column] = np.mean([f[column].to_numpy() for f in aligned], axis=0)
    out["predicted"] = [classes[i] for i in _decide(out[prob].to_numpy(), threshold)]
    return out


def fold_row(fold: int, m: dict) -> dict:
    return {
        "fold": fold, "n": m["n"], "patients": m.get("per_patient", {}).get("patients"), "auc": m["auc"],
        "colour_only_auc": (m.get("color_baseline") or {}).get("auc"), "patient_auc": m.get("per_patient", {}).get("auc"),
        "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"], "recall": m.get("recall"),
        "specificity": m.get("specificity"), "ece": m.get("ece"), "threshold": m.get("threshold"),
    }


def spread(rows: list[dict]) -> dict:
    """{metric: {mean, sd (sample), values}} over the folds; a fold where a metric is undefined is left out of it."""
    out = {}
    for key in PER_FOLD:
        values = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
        out[key] = {
            "mean": float(values.mean()) if len(values) else None,
            "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
            "values": values.tolist(),
        }
    return out


def _headline(m: dict) -> dict:
    keys = ("n", "auc", "auc_ci95", "accuracy", "balanced_accuracy", "recall", "specificity", "ece", "threshold")
    out = {k: m.get(k) for k in keys}
    out["patient_auc"] = m["per_patient"]["auc"]
    out["patients"] = m["per_patient"]["patients"]
    colour = m.get("color_baseline") or {}
    out["colour_only_auc"], out["colour_only_auc_ci95"] = colour.get("auc"), colour.get("auc_ci95")
    return out


def protocol(recipe) -> str:
    """The cross-validation protocol in words, for the model card and the report."""
    split = recipe.data.split
    seed = split_seed(split, recipe.seed)
    external = (
        " External sets are scored by every fold model and by their ensemble (mean probability), whose threshold "
        "is locked on the folds' validation predictions pooled." if recipe.evaluate else ""
    )
    return (
        f"{split.folds}-fold cross-validation by patient (scikit-learn StratifiedGroupKFold, shuffled, seed {seed}): "
        f"every patient is in exactly one test fold. In each fold, {split.val:g} of the remaining patients "
        "(stratified by class) are the validation split that selects the epoch, drives early stopping and locks the "
        "threshold; the test fold is seen only once, after training. Out-of-fold predictions pool the test folds, "
        "each image predicted by the one model that never saw its patient; the AUC's 95% CI resamples patients. "
        "The colour-only baseline is fitted on each fold's training split and pooled the same way." + external
    )


def cv_summary_text(report: dict) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    def ci(v):
        return "" if not v else f" [{v[0]:.3f}, {v[1]:.3f}]"

    lines = [f"cross-validation, {report['folds']} folds:"]
    for name, entry in report.items():
        if not isinstance(entry, dict) or name in ("protocol",):
            continue
        if "error" in entry:
            lines.append(f"  {name}: failed: {entry['error']}")
            continue
        s = entry["summary"]
        head = entry.get("pooled") or entry.get("ensemble")
        kind = "pooled out-of-fold" if "pooled" in entry else "fold ensemble"
        lines.append(
            f"  {name}: AUC per fold {fmt(s['auc']['mean'])} ± {fmt(s['auc']['sd'])} (colour-only "
            f"{fmt(s['colour_only_auc']['mean'])} ± {fmt(s['colour_only_auc']['sd'])}); {kind} AUC "
            f"{fmt(head['auc'])}{ci(head['auc_ci95'])} (colour-only {fmt(head['colour_only_auc'])}{ci(head['colour_only_auc_ci95'])})"
        )
    return "\n".join(lines)


def _union(failures) -> dict:
    out: dict = {}
    for part in failures:
        out.update(part or {})
    return dict(sorted(out.items()))


def _write_records(parent: Path, report: dict) -> None:
    from histofuse.crossval.card import write_model_card
    from histofuse.report import write_report

    try:
        write_model_card(parent, report)
        page = write_report(parent)
    except Exception as exc:  # the pooled numbers are already on disk; a plotting bug must not hide that
        log.warning(f"the report could not be written ({type(exc).__name__}: {exc}); try again with histofuse report {parent}")
        return
    log.info(f"report: {page}")
