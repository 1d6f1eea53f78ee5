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


def unwrap(accelerator: Accelerator, prepared: nn.Module, *, keep_autocast: bool = True) -> nn.Module:
    """The model itself, without the distributed and ``torch.compile`` wrappers.

    ``keep_torch_compile=False``: Accelerate otherwise hands back the compiled
    wrapper, whose state dict prefixes every key with ``_orig_mod.`` (files that
    a plain model cannot load) and whose forward still calls the distributed
    wrapper it was built around. ``keep_autocast`` keeps the mixed-precision
    forward, for a model that goes on being used in its phase.
    """
    return accelerator.unwrap_model(prepared, keep_fp32_wrapper=keep_autocast, keep_torch_compile=False)


def release(accelerator: Accelerator, prepared: nn.Module) -> nn.Module:
    """Return the plain model after a phase, ready for :func:`prepare_phase` again.

    Dropping the autocast forward too means the next ``prepare`` applies it once,
    not on top of this one. Accelerate marks a prepared single-process model as
    prepared and would then return it untouched, leaving the next phase without
    autocast; clearing that mark makes the next ``prepare`` apply mixed precision again.
    """
    model = unwrap(accelerator, prepared, keep_autocast=False)
    if getattr(model, "_is_accelerate_prepared", False):
        del model._is_accelerate_prepared
    accelerator.free_memory()
    return model
