"""Framework overhead per epoch: `histofuse run` against a bare Accelerate loop on the same model, data and batch.

Both train the quick-start architecture (everything unfrozen) on the same generated images with the same loader
(same transforms, sampler, batch size, workers) and validate on the same split; the figure is the median
seconds per epoch after the first, from history.csv for histofuse. histofuse's epoch adds its bookkeeping:
per-sample augmentation seeds, the NaN check, failure tracking, metrics and the best-weights file. The epoch
checkpoint is written after history.csv's row and is not in these figures (on this model it is a few ms).

Rerun:
    python benchmarks/overhead.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _results import Figures

REPO = Path(__file__).resolve().parents[1]


def settings(root: Path) -> list[str]:
    return ["--set", f"data.root={root}", "--set", "evaluate=[]", "--set", "evaluation.compare_normalizers=[]",
            "--set", "evaluation.bootstrap=0", "--set", "evaluation.color_baseline=false", "--set", "data.num_workers=1"]


def histofuse_epochs(folder: Path, epochs: int) -> np.ndarray:
    phases = f'phases=[{{name="full", epochs={epochs}, unfreeze="all", lr={{head=5e-4, backbone=5e-4}}, augment="light"}}]'
    subprocess.run([sys.executable, "-m", "histofuse", "run", str(REPO / "recipes" / "quickstart.toml"), "-o", str(folder / "runs"),
                    *settings(folder / "data"), "--set", phases, "--set", "training.early_stopping.enabled=false"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = next(p for p in (folder / "runs").iterdir() if p.is_dir())
    return pd.read_csv(run_dir / "history.csv")["seconds"].to_numpy()[1:]


def bare_epochs(folder: Path, epochs: int) -> np.ndarray:
    import torch
    from accelerate import Accelerator

    from histofuse.data.loading import ImageTable, make_loader
    from histofuse.data.split import split_table
    from histofuse.data.eval_loader import make_eval_transform
    from histofuse.model import build_model
    from histofuse.phase_plan import apply_phase
    from histofuse.recipe import load_recipe
    from histofuse.registry import default_registry
    from histofuse.data.scanning import load_table

    recipe = load_recipe(REPO / "recipes" / "quickstart.toml", settings(folder / "data")[1::2])
    registry = default_registry()
    table, classes = load_table(recipe, registry)
    table = split_table(table, recipe.data.split, recipe.seed)
    train, val = (table[table["split"] == s].reset_index(drop=True) for s in ("train", "val"))
    data = recipe.data
    hooks = registry.pm.hook
    transform = hooks.make_transforms(stage="train", strength="light", image_size=data.image_size, resize=data.resize_to,
                                      stain_jitter=0.0, stain_jitter_method="hestain")
    model = build_model(recipe, registry, len(classes), pretrained=False)
    plan = apply_phase(model, recipe.phases[-1])
    optimizer = torch.optim.AdamW(plan.param_groups, weight_decay=recipe.training.weight_decay)
    accelerator = Accelerator()
    train_loader = make_loader(ImageTable(train, classes, transform), data.batch_size, train=True, balanced=True, num_workers=1)
    val_loader = make_loader(ImageTable(val, classes, make_eval_transform(hooks, data)), data.batch_size, train=False, num_workers=1)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=recipe.training.label_smoothing)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for batch in train_loader:
            loss = criterion(model(batch["image"]), batch["label"])
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), recipe.training.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            for batch in val_loader:
                model(batch["image"])
        times.append(time.perf_counter() - start)
    return np.array(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="overhead-"))
    ours = histofuse_epochs(folder, args.epochs)  # also generates the data the bare loop reads
    bare = bare_epochs(folder, args.epochs)
    figures = Figures("overhead")
    bare = figures.add("bare.seconds_per_epoch", np.median(bare), "s")
    ours = figures.add("histofuse.seconds_per_epoch", np.median(ours), "s")
    ratio = figures.add("histofuse_vs_bare", ours / bare, "x")
    print(f"# seconds per epoch (train + validation), quick-start model and data, median of epochs 2..{args.epochs}")
    print(f"bare Accelerate loop: {bare:.2f} s   histofuse run: {ours:.2f} s   -> {ratio:.3f}x (target <= 1.05x)")
    print("\nrerun: bash benchmarks/run_all.sh overhead")
    figures.save()


if __name__ == "__main__":
    main()
