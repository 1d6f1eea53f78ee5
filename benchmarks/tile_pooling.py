"""Pooling tiles where the lesion is focal: the mean of the tiles' probabilities against attention pooling.

Synthetic tissue at 0.5 µm per pixel, 336 x 224 pixels (168 x 112 µm), in which a malignant image shows
malignant tissue over only a share of its field (the synthetic dataset's ``focal`` option), the rest benign
tissue of the same patient: 24 + 24 patients, 12 images each. Tiles of 112 pixels, a grid of six per image. The
quick start's model and three phases, trained twice with the same seeds:

- ``mean``: one random tissue tile per training image, labelled with its image's diagnosis; an image's
  prediction is the mean of its grid tiles' probabilities;
- ``attention``: a bag of four random tissue tiles per training image; the model pools their fused features
  by gated attention, trained with the head in every phase.

Reported per set (the test split, and 20 + 20 patients the runs never saw): AUC and accuracy at the threshold
locked on the validation split, mean ± sd over the seeds, beside the colour-only baseline (6 LAB statistics)
on the same images; and each run's training time. The data is generated once under data/.

Rerun:
    python benchmarks/tile_pooling.py [--seeds 0 1 2] [--focal 0.2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from _results import Figures
from _seeds import summarise_set, train_over_seeds

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.toml"
IMAGE = {"mpp": 0.5, "width": 336, "height": 224}
SETTINGS = {
    "mean": ("mean of tile probabilities", {"pooling": "mean"}),
    "attention": ("attention pooling (bags of 4)", {"pooling": "attention", "bag": 4}),
}
SETS = ("test", "unseen")


def recipe_for(seed: int, focal: float, tiles: dict):
    from histofuse.recipe import parse_recipe, read_toml

    options = {**IMAGE, "focal": focal, "patients_per_class": 24, "images_per_magnification": 3}
    raw = read_toml(RECIPE)
    raw["name"], raw["seed"] = "tile_pooling", seed
    raw["data"]["root"] = str(REPO / "data" / f"synthetic_focal_{focal:g}")
    raw["data"]["options"] = options
    raw["data"].update(mpp=0.5, tiles={"min_tissue": 0.5, **tiles})
    raw["evaluation"].pop("compare_normalizers", None)
    raw["evaluate"] = [{
        "name": "unseen", "dataset": "synthetic", "root": str(REPO / "data" / f"synthetic_focal_{focal:g}_unseen"),
        "options": {**options, "seed": 5, "patients_per_class": 20, "images_per_magnification": 1},
    }]
    return parse_recipe(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--focal", type=float, default=0.2, help="share of a malignant image's field that is malignant")
    args = parser.parse_args()
    figures = Figures("tile_pooling")
    found = train_over_seeds(lambda key, seed: recipe_for(seed, args.focal, SETTINGS[key][1]), SETTINGS, args.seeds)
    print(f"\nfocal share {args.focal:g}: AUC and accuracy (threshold locked on validation), mean ± sd over seeds "
          f"{args.seeds}; colour-only AUC in brackets")
    print(f"{'pooling':32s} | " + " | ".join(f"{s:28s}" for s in SETS) + " | run time")
    mean_time = {key: statistics.mean(s for _, s in runs) for key, runs in found.items()}
    for key, (title, _) in SETTINGS.items():
        cells = [summarise_set(figures, key, name, found[key]) for name in SETS]
        seconds = figures.add(f"{key}.seconds_mean", mean_time[key], "s")
        print(f"{title:32s} | " + " | ".join(f"{c:28s}" for c in cells) + f" | {seconds:.0f} s")
    ratio = figures.add("attention_over_mean_time", mean_time["attention"] / mean_time["mean"], "x")
    print(f"attention pooling's run time: {ratio:.2f}x the mean's")
    print("\nrerun: bash benchmarks/run_all.sh tile_pooling")
    figures.save()


if __name__ == "__main__":
    main()
