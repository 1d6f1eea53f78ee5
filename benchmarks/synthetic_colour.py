"""What colour alone achieves on the quick start's synthetic data, without training a model.

Generates (or reuses) the quick start's data, splits it by patient as `histofuse run` does, fits the colour-only
baseline (mean and std of L, a, b; logistic regression) on the training split and reports its AUC on the test
split and on site b, with the time generation took. With --seeds, the same for other generator seeds (written
next to the quick start's data): with 4 + 4 test patients the AUC of a class-blind feature still spreads widely.

Rerun:
    python benchmarks/synthetic_colour.py [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from _results import Figures

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.toml"
EXTERNAL = "site_b"


def load(seed: int | None):
    """The quick-start recipe; for another generator seed, both data sets moved to their own folders."""
    from histofuse.recipe import load_recipe, read_toml

    if seed is None:
        return load_recipe(RECIPE)
    raw = read_toml(RECIPE)
    index = next(i for i, e in enumerate(raw["evaluate"]) if e["name"] == EXTERNAL)
    external = raw["evaluate"][index]
    return load_recipe(RECIPE, [
        f'data.root="{raw["data"]["root"]}-seed{seed}"', f"data.options.seed={seed}",
        # Site b keeps its offset from the training seed, as in the quick start (0 and 1).
        f'evaluate[{index}].root="{external["root"]}-seed{seed}"',
        f"evaluate[{index}].options.seed={seed + external['options'].get('seed', 0)}",
    ])


def colour_aucs(recipe) -> tuple[float, float, float]:
    """Seconds to generate (about 0 when reused), colour-only AUC on the test split and on site b."""
    from histofuse.color_baseline import lab_stats
    from histofuse.data.decode import decode_image
    from histofuse.data.split import split_table
    from histofuse.evaluation.fitting import fit_on_training_split
    from histofuse.evaluation.sets import load_external
    from histofuse.metrics import classification_metrics
    from histofuse.registry import default_registry
    from histofuse.data.scanning import load_table

    registry = default_registry()
    start = time.perf_counter()
    table, classes = load_table(recipe, registry)
    external = next(e for e in recipe.evaluate if e.name == EXTERNAL)
    site_b = load_external(external, registry, classes)
    generated = time.perf_counter() - start
    split = recipe.data.split
    table = split_table(table, split, recipe.seed)
    _, baseline = fit_on_training_split(recipe, registry, table[table["split"] == "train"], classes, False)

    def auc(frame) -> float:
        stats = np.stack([lab_stats(decode_image(p)) for p in frame["path"]])
        labels = np.array([classes.index(label) for label in frame["label"]])
        return classification_metrics(labels, baseline.predict_proba(stats, len(classes)), classes)["auc"]

    return generated, auc(table[table["split"] == "test"]), auc(site_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", help="generator seeds (default: the quick start's data as it is)")
    args = parser.parse_args()
    os.chdir(REPO)  # the recipe's data roots are relative to the repository
    seeds = args.seeds or [None]
    figures = Figures("synthetic_colour")
    print(f"# colour-only baseline (6 LAB numbers, logistic regression on the training split), {RECIPE.name}")
    print("# generate s: seconds to write the training data and site b (about 0 when they were already there)\n")
    print(f"{'seed':>6} {'generate s':>11} {'test AUC':>9} {'site b AUC':>11}")
    rows = []
    for seed in seeds:
        key = "recipe" if seed is None else f"seed{seed}"
        generated, test, site_b = colour_aucs(load(seed))
        figures.add(f"{key}.generate.seconds", generated, "s")
        rows.append((figures.add(f"{key}.test_auc", test, "AUC"), figures.add(f"{key}.site_b_auc", site_b, "AUC")))
        print(f"{'recipe' if seed is None else seed:>6} {generated:11.1f} {test:9.3f} {site_b:11.3f}", flush=True)
    if len(rows) > 1:
        aucs = np.array(rows)
        for label, summarize in (("mean", np.mean), ("max", np.max)):
            test = figures.add(f"{label}.test_auc", summarize(aucs[:, 0]), "AUC")
            site_b = figures.add(f"{label}.site_b_auc", summarize(aucs[:, 1]), "AUC")
            print(f"{label:>6} {'':>11} {test:9.3f} {site_b:11.3f}")
    print("\nrerun: bash benchmarks/run_all.sh synthetic_colour")
    figures.save()


if __name__ == "__main__":
    main()
