"""Rich tables the commands print: metrics per evaluated set, predictions, a recipe resolved, repeated runs,
the stain normalization comparison."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from histofuse.recipe import Recipe
from histofuse.registry import Registry

if TYPE_CHECKING:  # pandas costs `histofuse --help` a third of a second
    import pandas as pd


def metrics_table(metrics: dict, cross_validation: bool = False) -> Table:
    """One column per evaluated set: the test split and each external set."""

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    sets = {k: v for k, v in metrics.items() if isinstance(v, dict) and "auc" in v}
    title = (
        "cross-validation: test = every fold's held-out patients pooled (each at its fold's threshold); "
        "external sets = the fold ensemble (threshold from the folds' validation predictions)"
        if cross_validation else "evaluation (threshold and temperature from the validation split)"
    )
    table = Table(title=title)
    table.add_column("metric")
    for name in sets:
        table.add_column(name, justify="right")
    rows = [
        ("images", lambda m: str(m["n"])),
        ("AUC", lambda m: fmt(m["auc"])),
        ("AUC 95% CI (by patient)", lambda m: "n/a" if not m.get("auc_ci95") else f"{m['auc_ci95'][0]:.3f}-{m['auc_ci95'][1]:.3f}"),
        ("accuracy", lambda m: fmt(m["accuracy"])),
        ("balanced accuracy", lambda m: fmt(m["balanced_accuracy"])),
        ("recall (sensitivity)", lambda m: fmt(m["recall"])),
        ("specificity", lambda m: fmt(m["specificity"])),
        ("precision", lambda m: fmt(m["precision"])),
        ("F1", lambda m: fmt(m["f1"])),
        ("ECE", lambda m: fmt(m.get("ece"))),
        ("patient AUC", lambda m: fmt(m["per_patient"]["auc"]) if "per_patient" in m else "n/a"),
        ("colour-only AUC", lambda m: fmt(m["color_baseline"]["auc"]) if "color_baseline" in m else "n/a"),
        ("QC removed", lambda m: f"{m['qc']['removed']} of {m['qc']['checked']}" if m.get("qc") else "-"),
        ("TTA / normalized", lambda m: f"{m['tta']} / {'yes' if m['normalized'] else 'no'}"),
        ("confusion (rows true)", lambda m: "\n".join(str(r) for r in m["confusion_matrix"])),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(m) for m in sets.values()))
    return table


def predictions_table(result: pd.DataFrame, classes: list[str], limit: int = 30) -> Table:
    table = Table(title=f"predictions ({len(result)} files)")
    table.add_column("file", overflow="fold")
    table.add_column("predicted")
    for c in classes:
        table.add_column(f"p({c})", justify="right")
    for row in result.head(limit).to_dict("records"):
        if row["error"]:
            table.add_row(row["path"], "[red]unreadable[/]", *["-" for _ in classes])
        else:
            table.add_row(row["path"], row["predicted"], *[f"{row[f'prob_{c}']:.4f}" for c in classes])
    if len(result) > limit:
        table.caption = f"... and {len(result) - limit} more (all of them in the CSV with --out)"
    return table


def describe_recipe(recipe: Recipe, registry: Registry, model) -> list[Table]:
    """What ``recipe check`` shows: the components and who provides them, the model's parts, the phases, the data
    and the sets evaluated."""
    return [
        _components(recipe, registry), _model_parts(recipe, model), _phases(recipe, model), _data(recipe, registry),
        _evaluation(recipe, registry),
    ]


def _components(recipe: Recipe, registry: Registry) -> Table:
    components = Table(title=f"recipe '{recipe.name}': components")
    for column in ("role", "kind", "name", "provided by"):
        components.add_column(column)
    dataset = registry.entry("dataset", recipe.data.dataset)
    components.add_row("data", "dataset", dataset.name, dataset.distribution)
    for cfg in recipe.model.backbones:
        entry = registry.entry("backbone", cfg.source)
        components.add_row(cfg.name, "backbone", f"{entry.name}: {cfg.model}", entry.distribution)
    fusion = registry.entry("fusion", recipe.model.fusion)
    components.add_row("fusion", "fusion", fusion.name, fusion.distribution)
    return components


def _model_parts(recipe: Recipe, model) -> Table:
    from histofuse.model import count_parameters

    sizes = Table(title=f"model: {count_parameters(model) / 1e6:.1f}M parameters")
    for column in ("part", "parameters", "features", "groups", "pretrained"):
        sizes.add_column(column, justify="right" if column in ("parameters", "features", "groups") else "left")
    for cfg in recipe.model.backbones:
        backbone = model.backbones[cfg.name]
        sizes.add_row(
            cfg.name, f"{count_parameters(backbone) / 1e6:.2f}M", str(backbone.num_features),
            str(len(backbone.parameter_groups())), str(cfg.pretrained),
        )
    sizes.add_row("fusion + head", f"{sum(p.numel() for p in model.head_parameters()) / 1e6:.2f}M", "", "", "")
    return sizes


def _phases(recipe: Recipe, model) -> Table:
    from histofuse.phase_plan import apply_phase, describe_rates

    phases = Table(title=f"phases: {recipe.total_epochs} epochs at most")
    for column in ("#", "name", "epochs", "unfreeze", "lr head", "lr backbone", "trainable", "augment"):
        phases.add_column(column)
    for i, phase in enumerate(recipe.phases):
        plan = apply_phase(model, phase, f"phases[{i}]")
        unfreeze = ", ".join(f"{k} last {v}" for k, v in plan.unfrozen_groups.items() if v) or "none"
        trainable = sum(plan.trainable.values())
        phases.add_row(
            str(i + 1), phase.name, str(phase.epochs), unfreeze, f"{phase.lr.head:g}",
            describe_rates(plan.param_groups, skip_head=True) or "-",
            f"{trainable / 1e6:.2f}M", phase.augment,
        )
    return phases


def _data(recipe: Recipe, registry: Registry) -> Table:
    dataset = registry.entry("dataset", recipe.data.dataset)
    data = Table(title="data")
    data.add_column("key")
    data.add_column("value")
    root = Path(recipe.data.root).expanduser() if recipe.data.root else None
    state = "not set" if root is None else (str(root) if root.exists() else f"{root} (missing: {dataset.spec.source})")
    data.add_row("root", state)
    data.add_row("image size", _image_size(recipe.data))
    split = recipe.data.split
    held_out = f"test {split.test:g}" if split.folds is None else f"{split.folds} folds" + (f", fold {split.fold} only" if split.fold else "")
    data.add_row("split (by patient)", f"val {split.val:g}, {held_out}, seed {recipe.seed if split.seed is None else split.seed}")
    data.add_row("batch size", str(recipe.data.batch_size))
    return data


def _image_size(data) -> str:
    if not data.keeps_scale:
        return f"resize {data.resize_to}, crop {data.image_size}"
    scale = f"at {data.mpp:g} µm/px" if data.mpp is not None else "at each image's own scale"
    if data.tiles is None:
        return f"{scale}, crop {data.image_size}"
    tiles = data.tiles.resolved(data.image_size)
    drawn = "one" if tiles.pooling == "mean" else f"bags of {tiles.bag}"
    pooled = "mean probability" if tiles.pooling == "mean" else "attention pooling"
    return (f"{scale}, tiles of {tiles.size} px (training: {drawn} with {tiles.min_tissue:g} tissue; evaluation: a grid "
            f"every {tiles.stride} px, at most {tiles.max_tiles}, {pooled})")


def _evaluation(recipe: Recipe, registry: Registry) -> Table:
    cfg = recipe.evaluation
    evaluation = Table(title=f"evaluation: threshold {cfg.threshold} and temperature from validation, TTA {cfg.tta}")
    for column in ("set", "dataset", "root", "QC", "normalize", "TTA"):
        evaluation.add_column(column)
    evaluation.add_row("test", recipe.data.dataset, "(test split)", "-", "no", cfg.tta)
    for external in recipe.evaluate:
        spec = registry.get("dataset", external.dataset)
        root = Path(external.root).expanduser() if external.root else None
        where = "not set" if root is None else (str(root) if root.exists() or spec.generated else f"{root} (missing)")
        normalize = f"{cfg.normalizer.name} {cfg.normalizer.options}" if external.normalize else "no"
        evaluation.add_row(
            external.name, external.dataset, where, "yes" if external.qc.enabled else "no", normalize, external.tta or cfg.tta
        )
    return evaluation


def summary_table(summary: dict, runs: int) -> Table:
    from histofuse.repeats import HEADLINE

    table = Table(title=f"{runs} runs: mean ± standard deviation (sample)")
    table.add_column("metric")
    for name in summary:
        table.add_column(name, justify="right")
    for k in HEADLINE:
        cells = []
        for name in summary:
            s = summary[name][k]
            cells.append("n/a" if s["mean"] is None else f"{s['mean']:.4f} ± {s['std']:.4f}" if s["std"] is not None else f"{s['mean']:.4f}")
        table.add_row(k, *cells)
    return table


def comparison_table(comparison: dict) -> Table:
    """The stain normalization comparison of a run (stain_comparison.json): one column per method."""
    from histofuse.evaluation.comparison import comparison_cell, unchanged_reasons

    methods = list(next(iter(comparison.values())))
    table = Table(title="stain normalization side by side (AUC / accuracy, colour-only AUC, tiles left unchanged; no QC, no TTA; "
                        "threshold from validation)")
    table.add_column("set")
    for method in methods:
        table.add_column(method, justify="right")
    for name, row in comparison.items():
        table.add_row(name, *(comparison_cell(row[method]) for method in methods))
    reasons = unchanged_reasons(comparison)
    if reasons:
        table.caption = "left unchanged: " + "; ".join(f"{name} {method}: {reason} ({count})" for name, method, reason, count in reasons)
    return table
