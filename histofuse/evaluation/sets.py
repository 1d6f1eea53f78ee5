"""Evaluating one set (the test split, an external set) with what was fitted: QC, normalization, TTA, metrics,
predictions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from histofuse.calibration import expected_calibration_error, softmax
from histofuse.color_baseline import ColorBaseline
from histofuse.data.decode import decode_image, decoded_images
from histofuse.data.eval_loader import collect_unchanged, make_eval_loader, make_eval_transform
from histofuse.data.tiles import decoder_at, table_options
from histofuse.errors import DataError
from histofuse.evaluation.fitting import EvaluationState, build_normalizer, calibrate
from histofuse.metrics import bootstrap_auc_ci, classification_metrics, patient_level
from histofuse.qc import QCThresholds, qc_summary, run_qc
from histofuse.recipe import ExternalSetConfig, Recipe
from histofuse.reporting import log
from histofuse.rundir import RunDir


def load_external(external: ExternalSetConfig, registry, classes: list[str], where: str | None = None) -> pd.DataFrame:
    """Scan an external set, map its labels onto the training classes, and check them. ``where`` names the set in
    messages (evaluate[0], as the recipe's key); by default, by its name."""
    from histofuse.data.scanning import scan
    from histofuse.data.table import check_table

    spec = registry.get("dataset", external.dataset)
    table = scan(spec, external.root, external.options, f"{where}.root" if where else f"evaluate '{external.name}' root")
    where = where or f"evaluate '{external.name}'"
    bad_targets = sorted(set(external.label_map.values()) - set(classes))
    if bad_targets:
        raise DataError(f"{where}: label map targets {bad_targets} are not classes of this model {classes}")
    if external.label_map:
        table = table.copy()
        table["label"] = table["label"].astype(str).map(lambda v: external.label_map.get(v, v))
    found = set(table["label"].astype(str))
    unknown = sorted(found - set(classes))
    if unknown:
        raise DataError(
            f"{where}: labels {unknown} of dataset '{spec.name}' are not classes of this model "
            f"{classes}; map them with label_map (--map FROM=TO) or a dataset option such as label = \"binary\""
        )
    # An external set may lack a class (e.g. tumour-only, to measure sensitivity): metrics handle it.
    table, _ = check_table(table, spec.name, None)
    return table


def evaluate_frame(
    *,
    name: str,
    frame: pd.DataFrame,
    classes: list[str],
    calibration: dict,
    color_baseline: dict | None,
    predict_frame,
    tta: str,
    normalize: bool,
    qc: QCThresholds | None,
    bootstrap: int,
    seed: int,
    run_dir: Path | None,
    by: list[str] = ("magnification",),
    write: bool,
    mpp: float | None = None,
) -> dict:
    """Metrics for one set; writes predictions (and QC scores) under ``run_dir`` when ``write``. ``mpp``: the
    run's data.mpp, at which quality control scores each image."""
    qc_info = None
    if qc is not None:
        frame, qc_info = _quality_controlled(name, frame, qc, run_dir if write else None, mpp)
    result, normalization = predict_frame(frame, tta, normalize)
    threshold, temperature = calibration["threshold"], calibration["temperature"]
    probs = softmax(result.logits, temperature)
    labels = result.labels
    rows = frame.iloc[result.indices].reset_index(drop=True)
    groups = rows["group"].to_numpy()
    metrics = classification_metrics(labels, probs, classes, threshold)
    metrics.update(
        name=name, loss=result.loss, tta=tta, normalized=normalize, temperature=temperature,
        auc_ci95=bootstrap_auc_ci(labels, probs, groups, bootstrap, seed), ece=expected_calibration_error(labels, probs),
        failed_images=dict(result.failed), qc=qc_info, normalization=normalization,
    )
    metrics["threshold_fitted_on"] = threshold_provenance(tta, normalize)
    metrics["per_patient"] = classification_metrics(*patient_level(labels, probs, groups), classes, threshold)
    metrics["per_patient"]["patients"] = int(len(np.unique(groups)))
    metrics["per_patient"]["threshold_fitted_on"] = "the image-level threshold, applied to each patient's mean probability"
    for column in by:
        if column in rows:
            values = rows[column].astype(str).to_numpy()
            metrics[f"per_{column}"] = {
                value: classification_metrics(labels[values == value], probs[values == value], classes, threshold)
                for value in sorted(set(values))
            }
    if color_baseline is not None and result.color is not None:
        baseline = ColorBaseline.from_json(color_baseline)
        color_probs = baseline.predict_proba(result.color, len(classes))
        metrics["color_baseline"] = {k: v for k, v in classification_metrics(labels, color_probs, classes).items() if k in ("auc", "accuracy", "balanced_accuracy")}
    else:
        color_probs = None
    if write and run_dir is not None:
        _write_predictions(RunDir(run_dir).predictions(name), rows, by, classes, probs, threshold, color_probs)
    return metrics


def _quality_controlled(
    name: str, frame: pd.DataFrame, qc: QCThresholds, run_dir: Path | None, mpp: float | None = None
) -> tuple[pd.DataFrame, dict]:
    """The images that pass QC and its summary; every image's scores are written under ``run_dir`` when given.
    With ``mpp`` each image is scored at that scale, as the model sees it: sharpness changes with the scale."""
    scored = run_qc(frame, qc, decode_image if mpp is None else decoder_at(frame, mpp, f"evaluate '{name}'"))
    if run_dir is not None:
        scored.to_csv(RunDir(run_dir).qc_scores(name), index=False)
    summary = qc_summary(scored)
    kept = scored[scored["qc_pass"]].drop(columns=["blur", "tissue", "qc_pass", "qc_reason"]).reset_index(drop=True)
    if kept.empty:
        raise DataError(f"evaluate '{name}': quality control removed every image ({summary['reasons']})")
    return kept, summary


def _write_predictions(path: Path, rows: pd.DataFrame, by, classes: list[str], probs, threshold, color_probs) -> None:
    keep = ["path", "group", "label", "subtype", *[c for c in by if c not in ("path", "group", "label", "subtype")]]
    out = rows[[c for c in keep if c in rows]].copy()
    for i, cls in enumerate(classes):
        out[f"prob_{cls}"] = probs[:, i]
    predicted = probs.argmax(1) if threshold is None else (probs[:, 1] >= threshold).astype(int)
    out["predicted"] = [classes[i] for i in predicted]
    if color_probs is not None:  # so that folds and repeats can pool the colour-only floor as they pool the model
        for i, cls in enumerate(classes):
            out[f"colour_prob_{cls}"] = color_probs[:, i]
    out.to_csv(path, index=False)


def write_validation_predictions(run_dir: Path, tta: str, frame: pd.DataFrame, result, classes: list[str], temperature: float):
    """The validation probabilities the threshold was fitted on: cross-validation pools them over folds to lock
    the fold ensemble's threshold without touching any test fold or external set."""
    out = frame.iloc[result.indices][["path", "group", "label"]].reset_index(drop=True)
    probs = softmax(result.logits, temperature)
    for i, cls in enumerate(classes):
        out[f"prob_{cls}"] = probs[:, i]
    out.to_csv(RunDir(run_dir).validation_predictions(tta), index=False)


def normalization_summary(method: str, normalizer, reasons: dict, accelerator) -> dict:
    """What the normalizer did to one set, for its metrics: unchanged tiles by reason, what adapt() measured."""
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        reasons = {i: r for part in gather_object([reasons]) for i, r in part.items()}
    unchanged = dict(Counter(reasons.values()))
    if accelerator.is_main_process:
        for reason, count in unchanged.items():
            log.warning("%s left %d tile(s) unchanged: %s", method, count, reason)
    return {
        "method": method, "source": getattr(normalizer, "source", "image"), "unchanged": unchanged,
        "adapted": getattr(normalizer, "adapted", None),
    }


class Evaluator:
    """Evaluates one trained model on any table of images, with the run's fitted state."""

    def __init__(
        self, *, accelerator, model, recipe: Recipe, registry, classes, state: EvaluationState, val_frame, run_dir
    ):
        from histofuse.data.loading import default_num_workers

        self.accelerator = accelerator
        self.model = accelerator.prepare(model)
        self.recipe = recipe
        self.registry = registry
        self.classes = classes
        self.state = state
        self.val_frame = val_frame
        self.run_dir = run_dir
        self.normalizer = build_normalizer(registry, state.normalizer)
        data = recipe.data
        self.workers = data.num_workers if data.num_workers is not None else default_num_workers()
        self.transforms = {tta: make_eval_transform(registry.pm.hook, data, tta) for tta in ("none", "crops5")}

    def predict_frame(self, frame: pd.DataFrame, tta: str, normalize: bool, normalizer=None, method: str | None = None):
        """(predictions, normalization summary or None) for ``frame``; ``normalize`` uses the run's normalizer,
        or ``normalizer`` (called ``method``) when given."""
        from histofuse.training.predict import predict

        if normalizer is None:
            normalizer, method = self.normalizer, (self.state.normalizer or {}).get("name")
        if normalize and normalizer is None:
            raise DataError("this run has no fitted stain normalizer; add normalize = true to an [[evaluate]] block of the recipe")
        if normalize and hasattr(normalizer, "adapt"):
            normalizer.adapt(rgb for _, rgb in decoded_images(frame["path"]))
        reasons: dict[int, str] = {}
        loader = collect_unchanged(self.accelerator.prepare(self._loader(frame, tta, normalizer if normalize else None)), reasons)
        predictions = predict(self.accelerator, self.model, loader, len(self.classes), tta, crop_size=self.recipe.data.image_size)
        return predictions, normalization_summary(method, normalizer, reasons, self.accelerator) if normalize else None

    def _loader(self, frame: pd.DataFrame, tta: str, normalizer):
        return make_eval_loader(
            frame, self.classes, self.transforms["crops5" if tta == "crops5" else "none"], normalizer,
            self.recipe.data.eval_batch_size or self.recipe.data.batch_size, self.workers,
            color_stats=self.state.color_baseline is not None,
            magnifications=self.recipe.model.magnification.values if self.recipe.model.magnification.enabled else None,
            max_pixels=self.recipe.data.max_image_pixels, **table_options(self.recipe.data, frame, False, "the evaluated set"),
        )

    def calibration(self, tta: str) -> dict:
        """Threshold and temperature for this TTA mode, fitted on the validation split the first time."""
        if tta not in self.state.calibration:
            val, _ = self.predict_frame(self.val_frame, tta, normalize=False)
            self.state.calibration[tta] = calibrate(self.recipe, val.logits, val.labels, len(self.classes))
            if self.accelerator.is_main_process and self.run_dir is not None:
                write_validation_predictions(self.run_dir, tta, self.val_frame, val, self.classes,
                                             self.state.calibration[tta]["temperature"])
            found = self.state.calibration[tta]
            if len(self.classes) == 2 and found["threshold"] is None and self.recipe.evaluation.threshold == "youden":
                log.warning("no validation threshold beats chance; predicting the most probable class")
            if self.accelerator.is_main_process and self.run_dir is not None:
                self.state.save(self.run_dir)
        return self.state.calibration[tta]

    def evaluate(self, name: str, frame: pd.DataFrame, *, tta: str, normalize: bool, qc: QCThresholds | None) -> dict:
        metrics = evaluate_frame(
            name=name, frame=frame, classes=self.classes, calibration=self.calibration(tta),
            color_baseline=self.state.color_baseline, predict_frame=self.predict_frame, tta=tta,
            normalize=normalize, qc=qc, bootstrap=self.recipe.evaluation.bootstrap, seed=self.recipe.seed,
            by=self.recipe.evaluation.by, run_dir=self.run_dir, write=self.accelerator.is_main_process,
            mpp=self.recipe.data.mpp,
        )
        log.info(summary_line(metrics))
        return metrics

    def evaluate_external(self, external: ExternalSetConfig) -> dict:
        with self.accelerator.main_process_first():
            frame = load_external(external, self.registry, self.classes)
        qc = QCThresholds(external.qc.blur, external.qc.background, external.qc.min_tissue) if external.qc.enabled else None
        return self.evaluate(
            external.name, frame, tta=external.tta or self.recipe.evaluation.tta, normalize=external.normalize, qc=qc
        )


def threshold_provenance(tta: str, normalize: bool) -> str:
    """What a set's cut was locked on, in words: the validation split's images, under this set's TTA, never normalized."""
    said = f"validation-split images, TTA {tta}, not stain-normalized"
    if normalize:
        said += " (this set is normalized: its scores may sit elsewhere than the cut assumes)"
    return said


def summary_line(m: dict) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    ci = m.get("auc_ci95")
    parts = [f"{m['name']}: {m['n']} images", f"AUC {fmt(m['auc'])}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")]
    if m["auc"] is None and m["n"]:
        parts.append("(one class only)")
    parts.append(f"accuracy {fmt(m['accuracy'])}")
    if m.get("threshold") is not None:
        parts.append(f"threshold {m['threshold']:.3f}")
    parts.append(f"patient AUC {fmt(m['per_patient']['auc'])}")
    if "color_baseline" in m:
        parts.append(f"colour-only AUC {fmt(m['color_baseline']['auc'])}")
    if m.get("qc"):
        parts.append(f"QC removed {m['qc']['removed']} of {m['qc']['checked']}")
    parts.append(f"TTA {m['tta']}" + (", stain-normalized (threshold from un-normalized validation images)" if m["normalized"] else ""))
    unchanged = sum(((m.get("normalization") or {}).get("unchanged") or {}).values())
    if unchanged:
        parts.append(f"{unchanged} tile(s) left unchanged by the normalizer")
    return "  " + ", ".join(parts)
