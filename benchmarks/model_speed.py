"""Model-side speed on this machine (both cores), each against its baseline in the same run:

  - phase-1 training step (backbones frozen: no autograd through them, eval mode) vs the inference forward of the
    same batch, on the paper's architecture (EfficientNetV2-S + ViT-B/16, random weights);
  - a full training step (everything unfrozen) in bf16 + channels-last (recipe options) vs fp32;
  - TTA: the views in one batched forward vs one forward per view, at several batch sizes (quick-start model);
  - `histofuse --help` start-up time.

Rerun:
    python benchmarks/model_speed.py [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _results import Figures

REPO = Path(__file__).resolve().parents[1]


def median_seconds(fn, repeats: int, warmup: int = 1) -> np.ndarray:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return np.array(times)


def build(recipe_path: Path, image_size: int | None = None):
    from histofuse.model import build_model
    from histofuse.recipe import load_recipe
    from histofuse.registry import default_registry

    overrides = [f"data.image_size={image_size}"] if image_size else []
    recipe = load_recipe(recipe_path, overrides)
    for backbone in recipe.model.backbones:
        backbone.pretrained = False
    return recipe, build_model(recipe, default_registry(), 2, pretrained=False)


def training_step(model, optimizer, x, y, autocast: bool):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def phase1_vs_inference(figures: Figures, batch: int, repeats: int) -> list[str]:
    from histofuse.phase_plan import apply_phase

    recipe, model = build(REPO / "recipes" / "breakhis_phased.toml")
    x, y = torch.rand(batch, 3, 224, 224), torch.randint(0, 2, (batch,))
    plan = apply_phase(model, recipe.phases[0])
    model.train()
    optimizer = torch.optim.AdamW(plan.param_groups)
    step = median_seconds(training_step(model, optimizer, x, y, False), repeats)
    model.eval()
    with torch.no_grad():
        forward = median_seconds(lambda: model(x), repeats)
    step = figures.add("phase1.step.seconds", np.median(step), "s")
    forward = figures.add("phase1.inference.seconds", np.median(forward), "s")
    ratio = figures.add("phase1.step_vs_inference", step / forward, "x")
    return [f"phase-1 step (frozen backbones), batch {batch}: {step:.2f} s vs inference forward "
            f"{forward:.2f} s -> {ratio:.3f}x (target <= 1.15x)"]


def cached_features_epoch(figures: Figures, images: int, batch: int) -> list[str]:
    """A phase-1 epoch over ``images`` in-memory images (decoding excluded, which favours the uncached side)."""
    from histofuse.phase_plan import apply_phase

    recipe, model = build(REPO / "recipes" / "breakhis_phased.toml")
    plan = apply_phase(model, recipe.phases[0])
    optimizer = torch.optim.AdamW(plan.param_groups)
    data = torch.rand(images, 3, 224, 224)
    labels = torch.randint(0, 2, (images,))

    def epoch(step_on):
        model.train()
        for start in range(0, images, batch):
            loss = torch.nn.functional.cross_entropy(step_on(start), labels[start : start + batch])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    uncached = median_seconds(lambda: epoch(lambda s: model(data[s : s + batch])), 1, warmup=0)
    started = time.perf_counter()
    model.eval()
    with torch.no_grad():
        bank = [torch.cat(parts) for parts in zip(*(model.features(data[s : s + batch]) for s in range(0, images, batch)))]
    build_seconds = time.perf_counter() - started
    cached = median_seconds(lambda: epoch(lambda s: model.classify([f[s : s + batch] for f in bank])), 5)
    uncached, cached = np.median(uncached), np.median(cached)
    figures.add("cached_features.backbones.seconds", uncached, "s")
    figures.add("cached_features.cached.ms", cached * 1000, "ms")
    speedup = figures.add("cached_features.speedup", uncached / cached, "x")
    figures.add("cached_features.build.seconds", build_seconds, "s")
    return [f"phase-1 epoch, {images} images, batch {batch}: {uncached:.2f} s through the backbones vs "
            f"{cached * 1000:.1f} ms on cached features -> {speedup:.0f}x "
            f"(target >= 50x; computing the features once took {build_seconds:.1f} s)"]


def bf16_channels_last_vs_fp32(figures: Figures, batch: int, repeats: int) -> list[str]:
    from histofuse.phase_plan import apply_phase

    lines, results = [], {}
    for name, key, autocast, channels_last in (("fp32", "fp32", False, False),
                                               ("bf16 + channels-last", "bf16_channels_last", True, True)):
        recipe, model = build(REPO / "recipes" / "breakhis_phased.toml")
        plan = apply_phase(model, recipe.phases[-1])  # everything trains
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.AdamW(plan.param_groups)
        x, y = torch.rand(batch, 3, 224, 224), torch.randint(0, 2, (batch,))
        seconds = np.median(median_seconds(training_step(model, optimizer, x, y, autocast), repeats))
        results[key] = figures.add(f"{key}.step.seconds", seconds, "s")
        rate = figures.add(f"{key}.images_per_s", batch / seconds, "images/s")
        lines.append(f"full training step, batch {batch}, {name}: {seconds:.2f} s ({rate:.2f} images/s)")
    speedup = figures.add("bf16_channels_last.speedup", results["fp32"] / results["bf16_channels_last"], "x")
    lines.append(f"bf16 + channels-last speed-up: {speedup:.2f}x (target >= 2.5x; needs a CPU with AVX-512-BF16/AMX)")
    return lines


def tta_batched_vs_looped(figures: Figures, repeats: int) -> list[str]:
    from histofuse.tta import MODES, predict_logits, view

    _, model = build(REPO / "recipes" / "quickstart.toml", image_size=112)
    model.eval()
    lines = []
    for batch in (1, 4, 16):
        x = torch.rand(batch, 3, 112, 112)

        def looped():
            probs = torch.stack([model(view(x, name)).softmax(1) for name in MODES["d4"]]).mean(0)
            return probs.log()

        with torch.no_grad():
            batched = np.median(median_seconds(lambda: predict_logits(model, x, "d4"), repeats)) * 1000
            loop = np.median(median_seconds(looped, repeats)) * 1000
        figures.add(f"tta.batch{batch}.batched_ms", batched, "ms")
        figures.add(f"tta.batch{batch}.looped_ms", loop, "ms")
        speedup = figures.add(f"tta.batch{batch}.speedup", loop / batched, "x")
        lines.append(f"TTA d4, batch {batch:>2}: batched {batched:.1f} ms, looped {loop:.1f} ms -> batched is {speedup:.2f}x as fast")
    return lines


def help_time(figures: Figures, repeats: int) -> list[str]:
    times = median_seconds(lambda: subprocess.run([sys.executable, "-m", "histofuse", "--help"], check=True,
                                                  capture_output=True), repeats)
    median = figures.add("help.seconds", np.median(times), "s")
    return [f"histofuse --help: {median:.2f} s (min {times.min():.2f}; target <= 0.5 s)"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures = Figures("model_speed")
    print(f"# model speed, {torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeats} repeats")
    for section in (phase1_vs_inference(figures, args.batch, args.repeats),
                    cached_features_epoch(figures, 4 * args.batch, args.batch),
                    bf16_channels_last_vs_fp32(figures, max(2, args.batch // 2), args.repeats),
                    tta_batched_vs_looped(figures, max(args.repeats, 5)), help_time(figures, 5)):
        print("\n".join(section))
    print("\nrerun: bash benchmarks/run_all.sh model_speed")
    figures.save()


if __name__ == "__main__":
    main()
