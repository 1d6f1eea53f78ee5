"""Preparing a model for one phase and releasing it afterwards, without stacking Accelerate's wrappers."""

from __future__ import annotations

from accelerate import Accelerator
from torch import nn


def prepare_phase(accelerator: Accelerator, model: nn.Module, *objects):
    """Prepare ``model`` and ``objects`` for a phase: device placement, autocast, distributed wrapper.

    Called at every phase boundary so a distributed wrapper registers the
    parameters that this phase unfroze.
    """
    return accelerator.prepare(model, *objects)


def release(accelerator: Accelerator, prepared: nn.Module) -> nn.Module:
    """Return the plain model after a phase, ready for :func:`prepare_phase` again.

    ``unwrap_model(keep_fp32_wrapper=False)`` drops the distributed wrapper and
    restores the model's own ``forward`` (removing autocast). Accelerate marks a
    prepared single-process model as prepared and would then return it untouched,
    leaving the next phase without autocast; clearing that mark makes the next
    ``prepare`` apply mixed precision again.
    """
    model = accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    if getattr(model, "_is_accelerate_prepared", False):
        del model._is_accelerate_prepared
    accelerator.free_memory()
    return model
