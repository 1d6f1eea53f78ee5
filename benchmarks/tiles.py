"""What tiles cost: images per second through the training loader, and evaluation time per image against tiles.

Synthetic images the size of BreaKHis at 40X (700 x 460 pixels at 0.49 µm per pixel) go through the training
loader three ways, in the same run: resized whole (the paper's: shorter side 256, random 224 crop), one random
tissue tile of 224 pixels at 0.5 µm per pixel decoded each time, and the same from the decode cache. Then the
evaluation loader with a grid of tiles against whole images, over images from one tile to many, with the quick
start's two tiny backbones: milliseconds per image, and the ratio to a whole image.

Rerun:
    python benchmarks/tiles.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from _results import Figures

REPO = Path(__file__).resolve().parents[1]
WORKERS = max(0, min(8, (os.cpu_count() or 1) - 1))


def data_config(**extra):
    from histofuse.recipe import DataConfig

    return DataConfig(dataset="synthetic", image_size=224, resize=256, batch_size=16, **extra)


def loader_rate(frame, data, train: bool, transform, cache=None, epochs: int = 3) -> tuple[float, float]:
    """(images/s, tiles/s) over ``epochs`` passes, the first one warming the workers and the cache."""
    from histofuse.data.loading import ImageTable, make_loader
    from histofuse.data.tiles import table_options

    table = ImageTable(frame, ["benign", "malignant"], transform, cache=cache, **table_options(data, frame, train, "bench"))
    loader = make_loader(table, 16, train=train, num_workers=WORKERS, seed=0)
    images = tiles = 0
    for epoch in range(epochs):
        if epoch == 1:
            started, images, tiles = time.perf_counter(), 0, 0
        if train:
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            images += len(batch["label"])
            tiles += len(batch["image"])
    seconds = time.perf_counter() - started
    return images / seconds, tiles / seconds


def main() -> None:
    from histofuse.data.cache import DecodeCache
    from histofuse.data.eval_loader import make_eval_loader, make_eval_transform
    from histofuse.data.tiles import scale_factors, table_options
    from histofuse.model import build_model
    from histofuse.recipe import load_recipe
    from histofuse.registry import default_registry
    from histofuse.training.predict import predict
    from histofuse_builtins.data_synthetic import scan_synthetic
    from accelerate import Accelerator

    figures = Figures("tiles")
    hooks = default_registry().pm.hook
    frame = scan_synthetic(REPO / "data" / "synthetic_breakhis_40x", patients_per_class=4, images_per_magnification=4,
                           magnifications=[40], mpp=0.49, width=700, height=460)
    print(f"{len(frame)} synthetic images of 700 x 460 pixels at 0.49 µm/px; {WORKERS} loader workers, "
          f"{torch.get_num_threads()} torch threads")
    whole, tiled = data_config(), data_config(mpp=0.5, tiles={"min_tissue": 0.5})

    def train_transform(data):
        return hooks.make_transforms(stage="train", strength="medium", image_size=224, resize=0 if data.keeps_scale else 256,
                                     stain_jitter=0.0, stain_jitter_method="hestain")

    print("\ntraining loader (medium augmentation)        images/s   x whole")
    base, _ = loader_rate(frame, whole, True, train_transform(whole))
    rows = [("whole image, resized", "whole", base)]
    rows.append(("random tile at 0.5 µm/px", "tile", loader_rate(frame, tiled, True, train_transform(tiled))[0]))
    with tempfile.TemporaryDirectory() as folder:
        cache = DecodeCache(Path(folder), 256)
        scales = scale_factors(frame, 0.5, "bench")
        for path, scale in zip(frame["path"], scales):
            cache.load(path, scale)
        rows.append(("random tile, decode cache", "tile_cached", loader_rate(frame, tiled, True, train_transform(tiled), cache)[0]))
    for title, key, rate in rows:
        figures.add(f"loader.{key}.images_per_s", rate, "images/s")
        ratio = figures.add(f"loader.{key}.x_whole", rate / base, "x")
        print(f"  {title:40s} {rate:8.1f}   {ratio:5.2f}x")

    recipe = load_recipe(REPO / "recipes" / "quickstart.toml")
    model = build_model(recipe, default_registry(), 2, pretrained=False).eval()
    accelerator = Accelerator(cpu=True)
    print("\nevaluation at 224 px, quick-start backbones    tiles/image   ms/image (whole)   x whole")
    for width, height in ((224, 224), (448, 336), (700, 460), (1024, 768), (1600, 1200)):
        sized = scan_synthetic(REPO / "data" / f"synthetic_eval_{width}x{height}", patients_per_class=3,
                               images_per_magnification=1, magnifications=[40], mpp=0.5, width=width, height=height)
        ms, tiles = {}, 0.0
        for data, key in ((whole, "whole"), (tiled, "grid")):
            loader = make_eval_loader(sized, ["benign", "malignant"], make_eval_transform(hooks, data), None, 8, WORKERS,
                                      **table_options(data, sized, False, "bench"))
            predict(accelerator, model, loader, 2)  # warm
            started = time.perf_counter()
            predict(accelerator, model, loader, 2)
            ms[key] = (time.perf_counter() - started) / len(sized) * 1000
            if key == "grid":
                tiles = sum(len(b["image"]) for b in loader) / len(sized)
        name = f"eval.{width}x{height}"
        figures.add(f"{name}.tiles_per_image", tiles, "tiles")
        figures.add(f"{name}.whole.ms_per_image", ms["whole"], "ms")
        figures.add(f"{name}.grid.ms_per_image", ms["grid"], "ms")
        ratio = figures.add(f"{name}.grid.x_whole", ms["grid"] / ms["whole"], "x")
        print(f"  grid, {width:4d} x {height:4d} at 0.5 µm/px          {tiles:10.1f}   {ms['grid']:7.1f} ({ms['whole']:5.1f})   {ratio:6.2f}x")
    print("\nrerun: bash benchmarks/run_all.sh tiles")
    figures.save()


if __name__ == "__main__":
    main()
