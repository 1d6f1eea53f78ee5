"""What the learning benchmarks share: a recipe trained under several settings and seeds, and each evaluated set
summarised over the seeds beside the colour-only baseline."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable


def train_over_seeds(recipe_for: Callable, settings, seeds: list[int]) -> dict[str, list[tuple[dict, float]]]:
    """For each setting and seed, the run's metrics.json and the seconds it took; ``recipe_for(key, seed)``."""
    from histofuse.registry import default_registry
    from histofuse.run import run_recipe

    registry = default_registry()
    found: dict = {}
    with tempfile.TemporaryDirectory() as out:
        for key in settings:
            for seed in seeds:
                started = time.perf_counter()
                run_dir = run_recipe(recipe_for(key, seed), registry, Path(out))
                seconds = time.perf_counter() - started
                found.setdefault(key, []).append((json.loads((run_dir / "metrics.json").read_text()), seconds))
                print(f"trained {key}, seed {seed}: {seconds:.0f} s", flush=True)
    return found


def summarise_set(figures, key: str, name: str, runs: list[tuple[dict, float]]) -> str:
    """Records set ``name`` of setting ``key`` over the seeds (AUC and accuracy mean ± sd, colour-only AUC mean)
    and returns its table cell."""
    entries = [metrics[name] for metrics, _ in runs]
    auc = [e["auc"] for e in entries]
    accuracy = [e["accuracy"] for e in entries]
    stats = {
        "auc_mean": statistics.mean(auc), "auc_sd": statistics.stdev(auc) if len(auc) > 1 else 0.0,
        "accuracy_mean": statistics.mean(accuracy),
        "accuracy_sd": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
        "colour_only_auc_mean": statistics.mean(e["color_baseline"]["auc"] for e in entries),
    }
    for stat, value in stats.items():
        figures.add(f"{key}.{name}.{stat}", value, "accuracy" if stat.startswith("accuracy") else "AUC")
    return (f"{stats['auc_mean']:.3f}±{stats['auc_sd']:.3f} / {stats['accuracy_mean']:.2f}±{stats['accuracy_sd']:.2f}"
            f" ({stats['colour_only_auc_mean']:.2f})")
