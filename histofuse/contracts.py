"""Every component a recipe names, run once on a tiny input before anything trains.

A third party's contract mistake (a fusion whose ``forward`` takes ``*features``,
a backbone whose output is not ``num_features`` wide, a normalizer that returns
floats) then stops ``recipe check`` and ``run`` with an error naming the
component, the plugin and distribution that provide it, and what it returned,
instead of a bare ``TypeError`` in the first training step. The model runs on the
meta device: shapes without storage, so a 1B-parameter backbone costs nothing.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

SAMPLE = 2  # images in the tiny batch


def check_contracts(recipe: Any, registry: Any, model: Any) -> list[str]:
    """Problems found by running the recipe's model (built on the meta device) and normalizers once."""
    return _model_problems(recipe, registry, model) + _normalizer_problems(recipe, registry)


def _who(registry: Any, kind: str, name: str, path: str) -> str:
    entry = registry.entry(kind, name)
    return f"{path}: {kind} '{name}' from plugin {entry.plugin} ({entry.distribution})"


def _said(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _model_problems(recipe: Any, registry: Any, model: Any) -> list[str]:
    import torch

    size = recipe.data.image_size
    x = torch.empty(SAMPLE, 3, size, size, device="meta")
    tokens = model.inputs == "tokens"
    model.eval()
    features, problems = [], []
    for i, cfg in enumerate(recipe.model.backbones):
        backbone = model.backbones[cfg.name]
        who = _who(registry, "backbone", cfg.source, f"model.backbones[{i}]")
        width = int(getattr(backbone, "token_features", backbone.num_features) if tokens else backbone.num_features)
        method = "forward_tokens" if tokens else "forward"
        inputs = model.normalize[cfg.name](x).to(model.weight_dtypes.get(cfg.name, torch.float32))
        try:
            with torch.no_grad():
                out = getattr(backbone, method)(inputs)
        except NotImplementedError:
            return []  # an operation with no meta kernel: shapes cannot be traced without real weights
        except Exception as exc:
            problems.append(f"{who}: {method} on a {tuple(x.shape)} batch raised {_said(exc)}")
            continue
        fits = isinstance(out, torch.Tensor) and (
            out.ndim == 3 and out.shape[0] == SAMPLE and out.shape[2] == width if tokens else tuple(out.shape) == (SAMPLE, width)
        )
        if not fits:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            expected = f"({SAMPLE}, N, {width})" if tokens else f"({SAMPLE}, {width})"
            problems.append(f"{who}: {method} returned {shape} for a batch of {SAMPLE}; its declared width says {expected}")
            continue
        features.append(out.float())
    if problems:
        return problems
    return _fusion_problems(recipe, registry, model, features)


def _fusion_problems(recipe: Any, registry: Any, model: Any, features: list) -> list[str]:
    import torch

    who = _who(registry, "fusion", recipe.model.fusion, "model.fusion")
    try:
        with torch.no_grad():
            fused = model.fusion(features)
    except NotImplementedError:
        return []
    except Exception as exc:
        return [
            f"{who}: forward(features) raised {_said(exc)}; a fusion's forward takes one list holding one tensor "
            "per backbone (docs/hooks.md)"
        ]
    width = model.fusion.out_features
    if not isinstance(fused, torch.Tensor) or tuple(fused.shape) != (SAMPLE, width):
        shape = tuple(fused.shape) if isinstance(fused, torch.Tensor) else type(fused).__name__
        return [f"{who}: forward returned {shape} for a batch of {SAMPLE}; its out_features says ({SAMPLE}, {width})"]
    return []


def stained_tiles(count: int = 3, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """H&E-like uint8 tiles by Beer-Lambert: eosin everywhere, haematoxylin in round nuclei."""
    rng = np.random.default_rng(seed)
    haematoxylin, eosin = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
    yy, xx = np.mgrid[:size, :size]
    tiles = []
    for _ in range(count):
        nuclei = np.zeros((size, size))
        for cy, cx in rng.uniform(0, size, (12, 2)):
            nuclei = np.maximum(nuclei, ((yy - cy) ** 2 + (xx - cx) ** 2 < 16) * rng.uniform(0.8, 1.4))
        density = nuclei[..., None] * haematoxylin + rng.uniform(0.2, 0.6, (size, size, 1)) * eosin
        tiles.append(np.clip(255 * np.exp(-density), 0, 255).astype(np.uint8))
    return tiles


def _normalizer_problems(recipe: Any, registry: Any) -> list[str]:
    from histofuse.recipe import validate_options

    named = {name: ({}, f"evaluation.compare_normalizers[{i}]") for i, name in enumerate(recipe.evaluation.compare_normalizers)}
    if any(e.normalize for e in recipe.evaluate):
        named[recipe.evaluation.normalizer.name] = (recipe.evaluation.normalizer.options, "evaluation.normalizer")
    problems = []
    tiles = stained_tiles()
    for name, (options, path) in named.items():
        spec = registry.get("normalizer", name)
        who = _who(registry, "normalizer", name, path)
        try:
            problem = _round_trip(spec, validate_options(spec, options), tiles)
        except Exception as exc:
            problem = f"raised {_said(exc)}"
        if problem:
            problems.append(f"{who}: on three generated H&E tiles, {problem}")
    return problems


def _round_trip(spec: Any, options: dict, tiles: list[np.ndarray]) -> str | None:
    """fit → JSON state → a fresh instance's load_state → the same transform; None when all hold."""
    normalizer = spec.build(**options)
    normalizer.fit(tiles)
    if hasattr(normalizer, "adapt"):  # one that measures each evaluated set first
        normalizer.adapt(tiles)
    try:
        state = json.loads(json.dumps(normalizer.state))
    except TypeError as exc:
        return f"its state is not plain JSON data ({_said(exc)})"
    out = normalizer.transform(tiles[0])
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != tiles[0].shape:
        got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        return f"transform returned {got}; expected uint8 RGB of the input's shape {tiles[0].shape}"
    again = spec.build(**options)
    again.load_state(state)
    if hasattr(again, "adapt"):
        again.adapt(tiles)
    if np.abs(again.transform(tiles[0]).astype(int) - out.astype(int)).max() > 1:
        return "a fresh instance given its state by load_state transforms differently: the state does not hold the fit"
    return None
