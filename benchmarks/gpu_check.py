"""The paper's recipe at its real sizes on one GPU: what a full BreaKHis run will cost before it is started.

EfficientNetV2-S + ViT-B/16 (random weights), 224 px, batch 32, the recipe's three phases (head only; last 3
stages / 4 blocks; everything):
  - training images/s per phase in bf16 and in fp32 (model only: batches already on the device);
  - the full phase with torch.compile against without (bf16);
  - loader images/s on a BreaKHis-sized synthetic set (700x460 PNGs), decoding every file against the warm
    decode cache, with the recipe's augmentation and default worker count;
  - the projected time of the paper's 30 epochs (7 + 10 + 13 over 70 % of 7,909 images, plus validation on 15 %),
    each phase at the slower of its model rate and the loader rate.
Every figure goes to a JSON file beside the printed table.

    bash benchmarks/gpu_check.sh                       # on a GPU machine: under 8 minutes
    python benchmarks/gpu_check.py --smoke             # the same code path on a CPU in a minute (tiny sizes)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import Figures

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

BREAKHIS_IMAGES = 7909
PAPER_EPOCHS = {"head": 7, "partial": 10, "full": 13}


def build_model(smoke: bool):
    from histofuse.model import build_model as build
    from histofuse.recipe import load_recipe
    from histofuse.registry import default_registry

    overrides = ["model.backbones[0].pretrained=false", "model.backbones[1].pretrained=false"]
    if smoke:
        overrides += ["model.backbones[0].model=test_efficientnet", "model.backbones[1].model=test_vit",
                      "data.image_size=64", "phases[1].unfreeze.cnn=1", "phases[1].unfreeze.vit=1"]
    recipe = load_recipe(REPO / "recipes" / "breakhis_phased.toml", overrides)
    return recipe, build(recipe, default_registry(), 2, pretrained=False)


def images_per_second(model, phase, device, batch: int, size: int, precision: str, steps: int, compile_: bool = False) -> float:
    """Training steps of one phase (its unfrozen groups, AdamW) on random batches already on the device."""
    from histofuse.phase_plan import apply_phase

    plan = apply_phase(model, phase, "phase")
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for group in plan.param_groups for p in group["params"]], lr=1e-5)
    step_model = torch.compile(model) if compile_ else model
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(step_model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3 if not compile_ else 5):  # warm-up; compilation happens here
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_rates(count: int, batch: int, size: int, resize: int, workers: int) -> dict:
    """(images/s decoding every PNG, images/s from the warm decode cache) through the training loader."""
    import cv2
    import pandas as pd
    from reinhard import render_images

    from histofuse.data.cache import DecodeCache
    from histofuse.data.loading import ImageTable, make_loader
    from histofuse_builtins.defaults import build_transforms

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    tiles = render_images(min(count, 64), 700, 460)
    paths = []
    for i in range(count):  # distinct files, rendered once and reused: decoding cost is what is measured
        path = folder / f"tile-{i:05d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(tiles[i % len(tiles)], cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    table = pd.DataFrame({"path": paths, "label": ["benign", "malignant"] * (count // 2) + ["benign"] * (count % 2)})
    transform = build_transforms("train", "strong", size, resize, 0.0)
    rates = {}
    cache = DecodeCache(folder / "cache", resize)
    for name, use_cache in (("decode every file", None), ("decode cache, warm", cache)):
        if use_cache is not None:
            for path in paths:
                cache.load(path)
        dataset = ImageTable(table, ["benign", "malignant"], transform, cache=use_cache)
        loader = make_loader(dataset, batch, train=True, num_workers=workers)
        start = time.perf_counter()
        seen = sum(len(b["label"]) for b in loader)
        rates[name] = seen / (time.perf_counter() - start)
    return rates


def projected_minutes(rates: dict, loader: float, inference: float) -> dict:
    train, val = 0.70 * BREAKHIS_IMAGES, 0.15 * BREAKHIS_IMAGES
    minutes = {}
    for phase, epochs in PAPER_EPOCHS.items():
        per_epoch = train / min(rates[phase], loader) + val / min(inference, loader)
        minutes[phase] = epochs * per_epoch / 60
    minutes["total"] = sum(minutes.values())
    return minutes


def inference_rate(model, device, batch: int, size: int, steps: int) -> float:
    model.to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for _ in range(2):
            model(x)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models and sets: check the script on a CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per measurement")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "gpu_check.json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (2 if args.smoke else 30)
    batch = 4 if args.smoke else 32
    recipe, model = build_model(args.smoke)
    size, resize = recipe.data.image_size, recipe.data.resize_to
    figures: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                     "torch": torch.__version__, "batch": batch, "image_size": size, "smoke": args.smoke,
                     "date": time.strftime("%Y-%m-%d"), "training_images_per_s": {}}
    for precision in ("bf16", "fp32"):
        figures["training_images_per_s"][precision] = {
            phase.name: images_per_second(model, phase, device, batch, size, precision, steps) for phase in recipe.phases
        }
    full = recipe.phases[-1]
    figures["compile_full_phase_bf16"] = {
        "eager": figures["training_images_per_s"]["bf16"][full.name],
        "compiled": images_per_second(model, full, device, batch, size, "bf16", steps, compile_=True),
    }
    workers = min(8, max(0, (os.cpu_count() or 1) - 1))
    figures["loader_images_per_s"] = loader_rates(64 if args.smoke else 2048, batch, size, resize, workers)
    figures["loader_workers"] = workers
    figures["inference_images_per_s_bf16"] = inference_rate(model, device, batch, size, steps)
    best_loader = max(figures["loader_images_per_s"].values())
    figures["projected_minutes_paper_30_epochs_bf16"] = projected_minutes(
        figures["training_images_per_s"]["bf16"], best_loader, figures["inference_images_per_s_bf16"])
    args.out.write_text(json.dumps(figures, indent=2))
    record(figures)
    report(figures, args)


def record(figures: dict) -> None:
    """The same figures for benchmarks/results.json, when run by run_all.sh (``bash benchmarks/run_all.sh gpu_check``)."""
    kept = Figures("gpu_check")
    for precision, phases in figures["training_images_per_s"].items():
        for phase, rate in phases.items():
            kept.add(f"training.{precision}.{phase}.images_per_s", rate, "images/s")
    compiled = figures["compile_full_phase_bf16"]
    kept.add("compile.full_bf16.images_per_s", compiled["compiled"], "images/s")
    kept.add("compile.full_bf16.x_eager", compiled["compiled"] / compiled["eager"], "x")
    for name, rate in figures["loader_images_per_s"].items():
        key = re.sub(r"\W+", "_", name).strip("_")  # "decode cache, warm" -> decode_cache_warm
        kept.add(f"loader.{key}.images_per_s", rate, "images/s")
    kept.add("inference.bf16.images_per_s", figures["inference_images_per_s_bf16"], "images/s")
    for name, minutes in figures["projected_minutes_paper_30_epochs_bf16"].items():
        kept.add(f"projected_minutes.{name}", minutes, "min")
    kept.save()


def report(figures: dict, args) -> None:
    print(f"# paper recipe on {figures['device']}, torch {figures['torch']}, batch {figures['batch']}, "
          f"{figures['image_size']} px{' (smoke: tiny models)' if args.smoke else ''}")
    print(f"{'phase':>10} {'bf16 img/s':>11} {'fp32 img/s':>11} {'x fp32':>7}")
    for phase, rate in figures["training_images_per_s"]["bf16"].items():
        fp32 = figures["training_images_per_s"]["fp32"][phase]
        print(f"{phase:>10} {rate:11.1f} {fp32:11.1f} {rate / fp32:7.2f}")
    c = figures["compile_full_phase_bf16"]
    print(f"torch.compile, full phase, bf16: {c['compiled']:.1f} img/s vs eager {c['eager']:.1f} ({c['compiled'] / c['eager']:.2f}x)")
    for name, rate in figures["loader_images_per_s"].items():
        print(f"loader ({figures['loader_workers']} workers), {name}: {rate:.1f} img/s")
    minutes = figures["projected_minutes_paper_30_epochs_bf16"]
    print("projected paper run (30 epochs, bf16): " + ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items()))
    print(f"figures: {args.out}")
    print("rerun: bash benchmarks/run_all.sh gpu_check" if not args.smoke else "rerun: python benchmarks/gpu_check.py --smoke")


if __name__ == "__main__":
    main()
