"""histofuse: histopathology classifiers from several pretrained backbones fused into one model.

This module is the public API: plugins import from here and nowhere else in
histofuse. Heavy pieces (torch, OpenCV) load on first use, so ``histofuse --help``
and plugin discovery stay quick.
"""

from __future__ import annotations

import importlib

from histofuse.components import BackboneSpec, DatasetSpec, FusionSpec, NormalizerSpec
from histofuse.errors import (
    DataError,
    HistofuseError,
    ImageDecodeError,
    PluginError,
    RecipeError,
    WeightsError,
)
from histofuse.hookspecs import hookimpl
from histofuse.reporting import log  # the logger plugins report through, as the core does

__version__ = "0.1.0"


class NotFittedError(HistofuseError):
    """A fitted component (e.g. a stain normalizer) was used before ``fit`` or ``load_state``."""


_LAZY = {
    "decode_image": "histofuse.data.decode",
    "load_weights_file": "histofuse.weights",
    "read_state_dict": "histofuse.weights",
    "HybridModel": "histofuse.model",
    "load_recipe": "histofuse.recipe",
    "Recipe": "histofuse.recipe",
    "Registry": "histofuse.registry",
    "create_plugin_manager": "histofuse.plugins",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'histofuse' has no attribute '{name}'")


__all__ = [
    "BackboneSpec",
    "DataError",
    "DatasetSpec",
    "FusionSpec",
    "HistofuseError",
    "ImageDecodeError",
    "NormalizerSpec",
    "NotFittedError",
    "PluginError",
    "RecipeError",
    "WeightsError",
    "hookimpl",
    "log",
    *_LAZY,
]
