"""What K-fold cross-validation costs against one run, with and without sharing cached features across folds.

The quick start's recipe and data as a linear probe: one head-only phase on cached backbone features (frozen
backbones, no augmentation), no external sets. Three measurements in one process, in this order: one run (one
patient split), a K-fold cross-validation whose folds share one feature store (the default), and the same
cross-validation with a store per fold (each fold passes its own training and validation images through the
backbones and decodes its training images for the colour-only baseline, as before the store existed). Each
prints its wall time and the images passed through the backbones; the ratios are to the median of three one-off
runs. The claim checked: K folds on cached features cost no more than K one-off runs.

Rerun:
    python benchmarks/crossval_cost.py [--folds 5] [--epochs 12] [--backbones resnet18 efficientnet_b0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from _results import Figures

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.toml"


def probe_recipe(data_root: Path, epochs: int, folds: int | None, backbones: list[str] | None = None):
    from histofuse.recipe import parse_recipe, read_toml

    raw = read_toml(RECIPE)
    for backbone, model in zip(raw["model"]["backbones"], backbones or []):
        backbone["model"] = model  # random weights, as the quick start's: the cost is what is measured
    head = {**raw["phases"][0], "epochs": epochs, "augment": "none", "stain_jitter": 0.0, "cache_features": True}
    raw.update(phases=[head], evaluate=[])
    raw["evaluation"]["compare_normalizers"] = []
    raw["data"]["root"] = str(data_root)
    if folds:
        raw["data"]["split"] = {"val": raw["data"]["split"]["val"], "folds": folds}
    return parse_recipe(raw)


def counting_store(shared: bool, counter: list[int]):
    """A FeatureStore class whose instances add the images they pass through the backbones to ``counter``;
    unshared, every bank is computed from scratch and every run measures its own colour statistics."""
    from histofuse.training.feature_cache import FeatureBank, FeatureStore

    class Counted(FeatureStore):
        def __getattribute__(self, name):
            if name == "colour" and not shared:
                return {}
            return super().__getattribute__(name)

        def bank(self, model, dataset, batch_size, num_workers, device):
            if shared:
                before = self.computed
                bank = super().bank(model, dataset, batch_size, num_workers, device)
                counter[0] += self.computed - before
                return bank
            counter[0] += len(dataset)
            self.computed += len(dataset)
            return FeatureBank.compute(model, dataset, batch_size, num_workers, device)

    return Counted


def timed(figures: Figures, key: str, label: str, work, counter: list[int]) -> tuple[float, int]:
    counter[0] = 0
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the runs' epoch lines; only the figures are printed
        work()
    seconds = figures.add(f"{key}.seconds", time.perf_counter() - start, "s")
    images = figures.add(f"{key}.backbone_images", counter[0], "count")
    print(f"{label:<44} {seconds:7.1f} s   {images:5d} images through the backbones", flush=True)
    return seconds, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--backbones", nargs=2, metavar="TIMM_NAME", help="two timm CNNs instead of the quick start's "
                        "tiny pair, e.g. resnet18 efficientnet_b0: backbones whose forward pass costs what real ones do")
    args = parser.parse_args()

    import torch

    import histofuse.training.feature_cache as feature_cache
    from histofuse.crossval import run_cross_validation
    from histofuse.registry import default_registry
    from histofuse.run import run_recipe

    figures = Figures("crossval_cost_cnns" if args.backbones else "crossval_cost")
    registry = default_registry()
    data = REPO / "data" / "synthetic"
    counter = [0]
    print(f"quick-start data ({data.relative_to(REPO)}), backbones {' + '.join(args.backbones or ['test_efficientnet', 'test_vit'])}, "
          f"head-only phase of {args.epochs} epochs on cached features; "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as out:
        feature_cache.FeatureStore = counting_store(True, counter)
        with contextlib.redirect_stdout(io.StringIO()):  # data generated, imports warm
            run_recipe(probe_recipe(data, 1, None, args.backbones), registry, Path(out) / "warm")
        # The denominator of every ratio: the median of three runs, so one slow run does not flatter the folds.
        ones = [timed(figures, f"one_run.run{i + 1}", f"one run (one patient split), {i + 1} of 3", lambda: run_recipe(
            probe_recipe(data, args.epochs, None, args.backbones), registry, Path(out) / "one"), counter)[0]
            for i in range(3)]
        one = figures.add("one_run.seconds", statistics.median(ones), "s")
        shared, shared_images = timed(
            figures, "shared", f"{args.folds}-fold cross-validation, shared store", lambda: run_cross_validation(
                probe_recipe(data, args.epochs, args.folds, args.backbones), registry, Path(out) / "shared"), counter)
        feature_cache.FeatureStore = counting_store(False, counter)
        alone, alone_images = timed(
            figures, "per_fold", f"{args.folds}-fold cross-validation, store per fold", lambda: run_cross_validation(
                probe_recipe(data, args.epochs, args.folds, args.backbones), registry, Path(out) / "alone"), counter)
    shared_ratio = figures.add("shared.x_one_run", shared / one, "x")
    alone_ratio = figures.add("per_fold.x_one_run", alone / one, "x")
    saved = figures.add("shared.time_saved", 1 - shared / alone, "fraction")
    passes_saved = figures.add("shared.backbone_images_saved", alone_images - shared_images, "count")
    print(f"\ncross-validation / one run (median {one:.1f} s): shared store {shared_ratio:.2f}x, store per fold {alone_ratio:.2f}x "
          f"(limit {args.folds}x); sharing saves {saved:.0%} of the time and "
          f"{passes_saved} of {alone_images} backbone passes")
    print(f"rerun: bash benchmarks/run_all.sh {figures.benchmark}")
    figures.save()


if __name__ == "__main__":
    main()
