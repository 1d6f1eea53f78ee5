"""What a plugin hands to the registry: one spec per component.

Specs are plain data; nothing here imports torch, so listing plugins stays fast.
The objects a spec's factory builds must satisfy the contracts documented on
each spec (and in docs/hooks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel


@dataclass(frozen=True)
class BackboneSpec:
    """A family of feature extractors, e.g. every timm model.

    ``build(model=..., pretrained=..., image_size=..., **options)`` returns a
    ``torch.nn.Module`` that has ``num_features`` (int), ``mean`` and ``std``
    (RGB tuples for inputs in [0, 1]), ``parameter_groups()`` (ordered lists of
    parameters, input side first, used for "unfreeze the last N") and whose
    ``forward`` maps a normalised ``(B, 3, H, W)`` batch to ``(B, num_features)``;
    ``forward_tokens`` (for token-consuming fusions) maps it to ``(B, N, token_features)``,
    where ``token_features`` defaults to ``num_features`` (a backbone whose pooled
    embedding concatenates several tokens sets it to one token's width).
    Optional: ``export_state_dict()`` (weights in the family's own names, for
    ``histofuse weights export``), ``weights_report`` (what loading a file did),
    ``foundation_model`` (True: a head-only phase without augmentation caches its
    features unless the recipe says otherwise), and ``attention_maps(x)`` with
    ``prefix_tokens`` (each block's attention, for attention rollout in ``explain``).
    """

    name: str
    build: Callable[..., Any]
    description: str
    options: type[BaseModel] | None = None


@dataclass(frozen=True)
class FusionSpec:
    """Combines the backbones' features into one vector.

    ``build(in_features=[...], **options)`` returns a module with
    ``out_features`` whose ``forward`` takes a list with one tensor per backbone.
    ``inputs`` says whether those tensors are pooled vectors or token sequences.
    """

    name: str
    build: Callable[..., Any]
    description: str
    inputs: Literal["pooled", "tokens"] = "pooled"
    options: type[BaseModel] | None = None


@dataclass(frozen=True)
class NormalizerSpec:
    """A stain normalizer.

    ``build(**options)`` returns an object with ``fit(images) -> state``,
    ``transform(rgb) -> rgb`` (uint8 RGB in and out), ``state`` (plain JSON
    data) and ``load_state(state)``; ``transform`` before ``fit`` raises
    :class:`histofuse.NotFittedError`. Optional: ``normalize(rgb) -> (rgb, reason
    or None)``, saying why a tile was left unchanged (evaluation and predict count
    it), and ``adapt(images)`` with ``adapted``, for a normalizer that measures
    each evaluated set before transforming it.
    """

    name: str
    build: Callable[..., Any]
    description: str
    options: type[BaseModel] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Turns a folder into a sample table without decoding any pixel.

    ``scan(root, **options)`` returns a ``pandas.DataFrame`` with at least the
    columns ``path`` (absolute), ``label`` and ``group`` (the patient: the unit
    of splitting); more columns (``subtype``, ``magnification``, ...) are kept.
    ``source`` tells a user where to get the data when ``root`` is missing;
    ``generated`` says that ``scan`` creates the data itself when ``root`` does not exist.
    """

    name: str
    scan: Callable[..., Any]
    description: str
    options: type[BaseModel] | None = None
    source: str = ""
    generated: bool = False


ComponentSpec = BackboneSpec | FusionSpec | NormalizerSpec | DatasetSpec

KINDS: dict[str, type] = {
    "backbone": BackboneSpec,
    "fusion": FusionSpec,
    "normalizer": NormalizerSpec,
    "dataset": DatasetSpec,
}
