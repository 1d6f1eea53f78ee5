"""What one phase trains, and at which learning rate: requires_grad, the batch-norm rule, the optimizer's groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from histofuse.errors import RecipeError
from histofuse.model import HybridModel
from histofuse.recipe import PhaseConfig


@dataclass(frozen=True)
class PhasePlan:
    """What one phase trains, and at which learning rate; parameter groups ready for an optimizer."""

    param_groups: list[dict]
    trainable: dict[str, int]  # part name -> trainable parameter count
    unfrozen_groups: dict[str, int]  # backbone name -> number of trailing groups trained


def apply_phase(
    model: HybridModel, phase: PhaseConfig, phase_path: str = "phase", previous: PhaseConfig | None = None
) -> PhasePlan:
    """Set ``requires_grad`` and the batch-norm rule for a phase; return the optimizer's parameter groups.

    Fusion and head always train at ``lr.head``. The last N parameter groups of
    each backbone (as the backbone orders them, input side first) train, each as
    one optimizer group named after its backbone: the top one at ``lr.<backbone
    name>`` if given, else ``lr.backbone``, each one below at ``layer_decay``
    times the one above. A group that ``previous`` (the phase before) kept frozen
    is marked ``warmup``. Everything else is frozen.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    model.batchnorm = phase.batchnorm
    head_params = model.head_parameters()
    for p in head_params:
        p.requires_grad_(True)
    param_groups = [{"name": "head", "params": head_params, "lr": phase.lr.head, "warmup": False}]
    trainable = {"head": sum(p.numel() for p in head_params)}
    unfrozen: dict[str, int] = {}
    problems = []
    for name, backbone in model.backbones.items():
        groups = backbone.parameter_groups()
        n = _groups_to_unfreeze(phase.unfreeze, name, len(groups))
        if n > len(groups):
            problems.append(
                f"{phase_path}.unfreeze.{name}: asks for the last {n} parameter groups but "
                f"backbone '{name}' has {len(groups)}; use at most {len(groups)} or \"all\""
            )
            continue
        trained_before = _groups_to_unfreeze(previous.unfreeze, name, len(groups)) if previous else 0
        chosen = groups[len(groups) - n :] if n else []
        for depth, group in enumerate(reversed(chosen)):  # depth 0: the group nearest the output
            for p in group:
                p.requires_grad_(True)
            if group:
                rate = phase.lr.for_backbone(name) * phase.layer_decay**depth
                param_groups.append({"name": name, "params": list(group), "lr": rate, "warmup": depth >= trained_before})
        unfrozen[name] = n
        trainable[name] = sum(p.numel() for group in chosen for p in group)
    if problems:
        raise RecipeError("recipe", problems)
    return PhasePlan(param_groups, trainable, unfrozen)


def describe_trainable(trainable: dict[str, int]) -> str:
    return ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in trainable.items())


def describe_rates(param_groups: list[dict], skip_head: bool = False) -> str:
    """One entry per part: its top learning rate, and the lowest one where layer-wise decay spreads them."""
    rates: dict[str, list[float]] = {}
    for group in param_groups:
        rates.setdefault(group["name"], []).append(group["lr"])
    return ", ".join(
        f"{name} {max(r):g}" + (f"..{min(r):g}" if min(r) != max(r) else "")
        for name, r in rates.items() if not (skip_head and name == "head")
    )


def _groups_to_unfreeze(unfreeze: Literal["none", "all"] | dict[str, int], name: str, available: int) -> int:
    if unfreeze == "all":
        return available
    if unfreeze == "none":
        return 0
    return unfreeze.get(name, 0)
