"""What a run leaves for the record: a machine-readable manifest and a Markdown model card."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from histofuse.rundir import RunDir

PACKAGES = ("histofuse", "torch", "torchvision", "timm", "accelerate", "numpy", "pandas", "scikit-learn",
            "opencv-python-headless", "albumentations", "safetensors")


def split_hash(table: pd.DataFrame) -> str:
    """SHA-256 of (file name, patient, split) rows, sorted: the same split on any machine, whatever the data's folder."""
    rows = sorted(f"{Path(p).name},{g},{s}" for p, g, s in zip(table["path"], table["group"].astype(str), table["split"]))
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def build_manifest(*, recipe, table: pd.DataFrame, classes: list[str], metrics: dict, run_dir: Path, started: datetime,
                   wall_seconds: float, accelerator) -> dict:
    evaluation = RunDir(run_dir).evaluation
    normalizer = json.loads(evaluation.read_text()).get("normalizer") if evaluation.is_file() else None
    return {
        "recipe": recipe.model_dump(mode="json"),
        "classes": classes,
        "created": started.isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 1),
        "split_sha256": split_hash(table),
        "dataset": {"name": recipe.data.dataset, "root": recipe.data.root, "options": recipe.data.options},
        "images": {s: {c: int(((table["split"] == s) & (table["label"] == c)).sum()) for c in classes} for s in ("train", "val", "test")},
        "patients": {s: int(table.loc[table["split"] == s, "group"].nunique()) for s in ("train", "val", "test")},
        "qc": {name: m.get("qc") for name, m in metrics.items() if m.get("qc")},
        "stain_normalizer": normalizer,
        "metrics": {name: _headline(m) for name, m in metrics.items()},
        "versions": _versions(),
        "hardware": _hardware(accelerator),
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }


INTENDED_USE = (
    "Research on histopathology image classification: reproducing and comparing methods, and studying domain "
    "shift between sites. Not a medical device; not for diagnosis or treatment decisions."
)
LIMITATIONS = [
    "Trained and validated on one dataset's images and label definitions; performance on other sites, scanners, "
    "stains or magnifications is only known for the external sets listed under metrics.",
    "The decision threshold was fixed on the validation split's un-normalized images; it may not transfer to another "
    "population, nor to a stain-normalized set, and patient-level figures apply that image-level cut to each "
    "patient's mean probability (threshold_fitted_on in metrics.json).",
    "Image-level metrics on few patients are noisy: read the patient-bootstrap confidence intervals.",
]


def _headline(m: dict) -> dict:
    if "error" in m:
        return {"error": m["error"]}
    keys = ("n", "auc", "auc_ci95", "accuracy", "balanced_accuracy", "recall", "specificity", "f1", "ece", "threshold", "tta", "normalized")
    out = {k: m.get(k) for k in keys}
    out["patient_auc"] = m.get("per_patient", {}).get("auc")
    out["colour_only_auc"] = (m.get("color_baseline") or {}).get("auc")  # the floor, beside every result
    return out


def _versions() -> dict:
    import torch

    versions = {"python": platform.python_version(), **{p: _version(p) for p in PACKAGES}}
    versions["torch"] = torch.__version__  # the build tag (+cu130, +cpu) matters for reproducing numbers
    versions["cuda"] = torch.version.cuda
    return versions


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _hardware(accelerator) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    description = f"{os.cpu_count()} CPU cores ({cpu})" + (f", {len(gpus)} × {gpus[0]}" if gpus else ", no GPU")
    return {
        "description": description, "platform": platform.platform(), "cpu_count": os.cpu_count(), "gpus": gpus,
        "processes": accelerator.num_processes, "mixed_precision": str(accelerator.mixed_precision),
    }


def write_manifest(run_dir: Path, manifest: dict) -> None:
    RunDir(run_dir).manifest.write_text(json.dumps(manifest, indent=2))


def record_evaluated_set(run_dir: Path, name: str, metrics: dict) -> None:
    """Add (or replace) a set evaluated after the run in its manifest and model card, so both list every set."""
    path = RunDir(run_dir).manifest
    if not path.is_file():  # the run's records failed to write; histofuse report says how to get them
        return
    manifest = json.loads(path.read_text())
    manifest["metrics"][name] = _headline(metrics)
    manifest["qc"].pop(name, None)
    if metrics.get("qc"):
        manifest["qc"][name] = metrics["qc"]
    write_manifest(run_dir, manifest)
    RunDir(run_dir).model_card.write_text(model_card(manifest))


def model_card(manifest: dict) -> str:
    recipe = manifest["recipe"]
    model = recipe["model"]
    backbones = ", ".join(f"{b['name']}: {b['model']} ({b['source']})" for b in model["backbones"])
    lines = [
        f"# {recipe['name']}", "", recipe.get("description", ""), "",
        "## Model", "",
        f"- Backbones: {backbones}; fusion: `{model['fusion']}`; classes: {', '.join(manifest['classes'])}.",
        f"- Input: {_input(recipe['data'])}",
        "- Training: " + "; ".join(f"{p['name']} ({p['epochs']} epoch{'s' if p['epochs'] != 1 else ''}, unfreeze {p['unfreeze']})" for p in recipe["phases"]) + ".",
        "",
        "## Data", "",
        f"- Dataset `{manifest['dataset']['name']}`, split by patient (split hash `{manifest['split_sha256'][:16]}…`).",
        "- Images (patients): " + "; ".join(
            f"{s} {sum(manifest['images'][s].values())} ({manifest['patients'][s]})" for s in ("train", "val", "test")
        ) + ".",
        "",
        "## Results", "",
        "| set | images | AUC (95% CI, patient bootstrap) | colour-only AUC | accuracy | sensitivity | specificity | patient AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in manifest["metrics"].items():
        if "error" in m:
            lines.append(f"| {name} | failed: {m['error']} | | | | | | |")
            continue
        ci = m.get("auc_ci95")
        auc = "n/a" if m["auc"] is None else f"{m['auc']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")
        lines.append(
            f"| {name} | {m['n']} | {auc} | {_f(m.get('colour_only_auc'))} | {_f(m['accuracy'])} | {_f(m['recall'])} "
            f"| {_f(m['specificity'])} | {_f(m['patient_auc'])} |"
        )
    lines += [
        "", "## Intended use", "", manifest["intended_use"], "",
        "## Limitations", "", *[f"- {item}" for item in manifest["limitations"]], "",
        "## Provenance", "",
        f"- Created {manifest['created']}, {manifest['wall_seconds']} s on {manifest['hardware']['description']}.",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items() if v) + ".",
        "- Everything above is in `manifest.json`; curves and ROC in `report.html`.",
        "",
    ]
    return "\n".join(lines)


def _input(data: dict) -> str:
    """What the model is shown. The data section is read without validation: a manifest from another histofuse
    version may carry keys this one no longer accepts, and only the image keys matter here."""
    size = data["image_size"]
    if data.get("mpp") is None and data.get("tiles") is None:
        from histofuse.recipe import DataConfig

        return f"RGB, resized to {DataConfig.model_construct(**data).resize_to} px (short side) and centre-cropped to {size} px."
    scale = f"brought to {data['mpp']:g} µm per pixel" if data.get("mpp") is not None else "at its own scale"
    if data.get("tiles") is None:
        return f"RGB, {scale} and centre-cropped to {size} px."
    tile = data["tiles"].get("size") or size
    if data["tiles"].get("pooling") == "attention":
        how = "bags of them per image in training; in evaluation a grid whose tiles' features are pooled by attention"
    else:
        how = "one per image in training; a grid whose tiles' probabilities are averaged in evaluation"
    return f"RGB, {scale}; {tile}-px tissue tiles ({how}), each fed at {size} px."


def _f(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def started_now() -> datetime:
    return datetime.now(timezone.utc)
