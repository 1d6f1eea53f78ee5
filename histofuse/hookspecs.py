"""Hook specifications: the whole plugin contract of histofuse.

Names tell how answers are used: ``register_*`` answers are merged by name,
``validate_*`` problems are merged, ``make_*`` takes the first answer (the
built-in defaults are ``trylast``), ``on_*`` are notifications. Details live in
docs/hooks.md, which a test keeps in step with this file.
"""

from __future__ import annotations

import pluggy

PROJECT = "histofuse"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# ---------------------------------------------------------------- components


@hookspec
def register_backbones():
    """Return a list of BackboneSpec this plugin provides."""


@hookspec
def register_fusions():
    """Return a list of FusionSpec this plugin provides."""


@hookspec
def register_normalizers():
    """Return a list of NormalizerSpec this plugin provides."""


@hookspec
def register_datasets():
    """Return a list of DatasetSpec this plugin provides."""


# --------------------------------------------------------------- command line


@hookspec
def register_commands(app):
    """Add sub-commands to the typer application ``app``."""


@hookspec
def validate_recipe(recipe):
    """Return a list of problems (strings, each starting with its key path) found in a parsed recipe."""


# ------------------------------------------------------------------ factories


@hookspec(firstresult=True)
def make_transforms(stage, strength, image_size, resize, stain_jitter, stain_jitter_method):
    """Return a callable ``image -> float tensor (3, H, W) in [0, 1]`` for ``stage`` ('train' or 'eval'); None defers.
    ``resize`` 0: the image keeps its scale (data.mpp, data.tiles), so crop without resizing."""


@hookspec(firstresult=True)
def make_optimizer(param_groups, training):
    """Return a torch optimizer over ``param_groups`` (each with its own 'lr'); None defers."""


@hookspec(firstresult=True)
def make_scheduler(optimizer, training):
    """Return an epoch-level scheduler whose ``step(metric)`` follows the monitored metric; None defers."""


# -------------------------------------------------------------- notifications


@hookspec
def on_fit_start(run_dir, recipe):
    """Called once before the first training step."""


@hookspec
def on_epoch_end(run_dir, record):
    """Called after each validated epoch with that epoch's history record (a dict)."""


@hookspec
def on_phase_end(run_dir, phase_index, phase, model, process_index):
    """Called on every process after a phase, with the plain (unwrapped) model as that phase left it."""


@hookspec
def on_fit_end(run_dir, metrics):
    """Called once after the test split was evaluated, with its metrics."""
