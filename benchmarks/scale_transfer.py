"""Transfer between sites that photograph tissue at other scales: whole images, tiles, tiles at one µm per pixel.

The quick start's model (tiny CNN + tiny ViT, three phases) is trained on synthetic tissue drawn at 0.5 µm per
pixel, 256 x 192 pixels (a field of 128 x 96 µm), and tested on its own test split and on two other sites, whose
patients it never saw, drawn with the same stains at other scales:

- ``wide``: 0.42 µm per pixel over a 2.5 times wider field (760 x 570 pixels), as BACH is to BreaKHis at 40X.
  Resizing whole images to one size shrinks its nuclei 2.5 times more than the training images'.
- ``zoomed``: 0.25 µm per pixel over a 1.5 times wider field (768 x 576 pixels). Tiles cut at each image's own
  scale show its nuclei twice as wide as in training.

Three ways to show the images to the model, each trained with the same seeds:

- whole image, resized (the paper's): ``data.resize``, centre crop;
- tiles at each image's own scale: ``data.tiles``, no ``data.mpp``;
- tiles at 0.5 µm per pixel: ``data.mpp = 0.5`` and ``data.tiles``.

Reported per set: AUC and accuracy at the threshold locked on the validation split, mean ± sd over the seeds,
beside the colour-only baseline (6 LAB statistics) on the same images. The data is generated once under data/.

Rerun:
    python benchmarks/scale_transfer.py [--seeds 1 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _results import Figures
from _seeds import summarise_set, train_over_seeds

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "quickstart.toml"
SITES = {
    "wide": {"seed": 7, "mpp": 0.42, "width": 760, "height": 570},
    "zoomed": {"seed": 8, "mpp": 0.25, "width": 768, "height": 576},
}
SETTINGS = {
    "whole": ("whole image, resized", {}),
    "tiles": ("tiles, each image's own scale", {"tiles": {"min_tissue": 0.5}}),
    "tiles_mpp": ("tiles at 0.5 µm per pixel", {"mpp": 0.5, "tiles": {"min_tissue": 0.5}}),
}


def recipe_for(seed: int, data: dict):
    from histofuse.recipe import parse_recipe, read_toml

    raw = read_toml(RECIPE)
    raw["name"], raw["seed"] = "scale_transfer", seed
    raw["data"]["root"] = str(REPO / "data" / "synthetic_scale_train")
    raw["data"]["options"] = {**raw["data"]["options"], "mpp": 0.5, "width": 256, "height": 192}
    raw["data"].update(data)
    raw["evaluation"].pop("compare_normalizers", None)
    raw["evaluate"] = [
        {"name": name, "dataset": "synthetic", "root": str(REPO / "data" / f"synthetic_scale_{name}"),
         "options": {**site, "patients_per_class": 10, "images_per_magnification": 1}}
        for name, site in SITES.items()
    ]
    return parse_recipe(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    figures = Figures("scale_transfer")
    found = train_over_seeds(lambda key, seed: recipe_for(seed, SETTINGS[key][1]), SETTINGS, args.seeds)
    print(f"\nAUC and accuracy (threshold locked on validation), mean ± sd over seeds {args.seeds}; colour-only AUC in brackets")
    print(f"{'images shown as':32s} | " + " | ".join(f"{s:28s}" for s in ("test (0.5 µm/px)", *(f"{n} ({SITES[n]['mpp']} µm/px)" for n in SITES))))
    for key, (title, _) in SETTINGS.items():
        cells = [summarise_set(figures, key, name, found[key]) for name in ("test", *SITES)]
        print(f"{title:32s} | " + " | ".join(f"{c:28s}" for c in cells))
    print("\nrerun: bash benchmarks/run_all.sh scale_transfer")
    figures.save()


if __name__ == "__main__":
    main()
