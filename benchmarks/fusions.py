"""Fusion heads at the paper's widths (EfficientNetV2-S 1280 + ViT-B/16 768 -> 1024): parameters and cost.

Times forward + backward of the fusion alone on batches of pooled features, one
thread, median of several repeats, as a ratio to `concat` measured in the same run.
The backbones dominate a full step (39 GFLOP per image); this isolates what the
fusion choice adds.

Rerun:
    python benchmarks/fusions.py
"""

from __future__ import annotations

import time

import numpy as np
import torch

from _results import Figures

torch.set_num_threads(1)


def main(batch: int = 32, repeats: int = 30) -> None:
    from histofuse.registry import default_registry

    registry = default_registry()
    figures = Figures("fusions")
    widths = [1280, 768]
    pooled = [torch.randn(batch, w) for w in widths]
    # At 224 x 224: EfficientNetV2-S ends in a 7 x 7 map, ViT-B/16 has 196 patch tokens + 1 class token.
    tokens = [torch.randn(batch, 49, 1280), torch.randn(batch, 197, 768)]
    print(f"# fusion heads at widths {widths} -> 1024, batch {batch}, one thread, median of {repeats}")
    print("# token fusions see 49 CNN positions and 197 ViT tokens (224 x 224 input); defaults otherwise\n")
    print(f"{'fusion':>16} {'parameters':>12} {'us/image':>10} {'min-max':>15} {'x concat':>9}")
    results = {}
    for name in registry.names("fusion"):
        spec = registry.get("fusion", name)
        features = tokens if spec.inputs == "tokens" else pooled
        fusion = spec.build(in_features=widths, dim=1024)
        times = []
        for _ in range(repeats + 3):
            start = time.perf_counter()
            fusion(features).sum().backward()
            times.append((time.perf_counter() - start) / batch * 1e6)
        results[name] = (sum(p.numel() for p in fusion.parameters()), np.array(times[3:]))
    base = np.median(results["concat"][1])
    for name, (params, t) in results.items():
        millions = figures.add(f"{name}.params_m", params / 1e6, "M")
        median = figures.add(f"{name}.us_per_image", np.median(t), "us")
        ratio = figures.add(f"{name}.x_concat", median / base, "x")
        print(f"{name:>16} {millions:11.2f}M {median:10.1f} {t.min():7.1f}-{t.max():<7.1f} {ratio:9.2f}")
    print("\nrerun: bash benchmarks/run_all.sh fusions")
    figures.save()


if __name__ == "__main__":
    main()
