"""HybridModel = backbones + fusion + classifier head (+ pooling of an image's tiles), built from a recipe."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from histofuse.errors import RecipeError
from histofuse.tile_pooling import TILE_CHUNK, AttentionPooling


class ClassifierHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear, the paper's head."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.7):
        super().__init__()
        self.layers = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class InputNormalization(nn.Module):
    """Maps [0, 1] RGB to a backbone's own mean/std, so each backbone sees what it was trained on."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class HybridModel(nn.Module):
    """Several backbones see the same image; their features are fused and classified.

    Inputs are RGB in [0, 1]; each backbone normalises them its own way. A backbone
    with no trainable parameter runs without building a graph, and it costs inference
    only. Frozen means frozen: in training mode every normalization layer with running
    statistics whose own parameters are frozen stays in eval mode, so its statistics
    stay what pretraining measured, whatever else in its backbone trains. With
    ``batchnorm = "frozen"`` (set per phase; "auto" means so for a pretrained
    backbone) the unfrozen ones keep theirs too.
    """

    def __init__(
        self,
        backbones: dict[str, nn.Module],
        fusion: nn.Module,
        head: nn.Module,
        inputs: str = "pooled",
        magnification: nn.Module | None = None,
        pretrained: set[str] | None = None,
        tile_pooling: nn.Module | None = None,
    ):
        super().__init__()
        self.inputs = inputs  # what the fusion consumes: pooled vectors or token sequences
        self.magnification = magnification
        self.backbones = nn.ModuleDict(backbones)
        self.normalize = nn.ModuleDict(
            {name: InputNormalization(tuple(b.mean), tuple(b.std)) for name, b in backbones.items()}
        )
        # Backbones whose weights are held in lower precision (frozen ones, to save memory) get inputs to match.
        self.weight_dtypes = {
            name: dtype for name, b in backbones.items()
            if (dtype := next((p.dtype for p in b.parameters()), torch.float32)) != torch.float32
        }
        self.fusion = fusion
        self.head = head
        # Pools the fused features of an image's tiles into one (attention); None: each row is an image.
        self.tile_pooling = tile_pooling
        self.batchnorm: Literal["auto", "frozen", "train"] = "auto"
        # Backbones that start from learned weights: their batch-norm statistics are worth keeping.
        self.pretrained = set(backbones) if pretrained is None else set(pretrained)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for name, backbone in self.backbones.items():
            inputs = self.normalize[name](x)
            run = backbone.forward_tokens if self.inputs == "tokens" else backbone
            low = self.weight_dtypes.get(name)
            if low is None:
                out.append(_run(run, inputs, is_frozen(backbone)))
                continue
            # Weights and inputs already in their own dtype: autocast to another (fp16) would mix the two.
            with torch.autocast(inputs.device.type, enabled=False):
                out.append(_run(run, inputs.to(low), is_frozen(backbone)).float())
        return out

    @property
    def pools_tiles(self) -> bool:
        """Whether an image's tiles are pooled inside the model (attention) rather than by their mean probability."""
        return self.tile_pooling is not None

    def forward(
        self, x: torch.Tensor, magnification: torch.Tensor | None = None, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits per row of ``x``; with ``counts`` (a model that pools tiles) the rows are tiles, ``counts[i]`` of
        them image i's, and the logits are per image."""
        if counts is None:
            return self.classify(self.features(x), magnification)
        return self._head(self._pooled(self.fused(x), counts), magnification)

    def fused(self, tiles: torch.Tensor) -> torch.Tensor:
        """Fused features per tile. Without gradients, ``TILE_CHUNK`` tiles per forward (an evaluation batch of
        large photos holds thousands); in training in one, as batch norm expects."""
        step = len(tiles) if torch.is_grad_enabled() else TILE_CHUNK
        return torch.cat([self.fusion(self.features(tiles[i : i + step])) for i in range(0, len(tiles), max(step, 1))])

    def classify(
        self, features: list[torch.Tensor], magnification: torch.Tensor | None = None, counts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fusion and head on the backbones' outputs: what a phase with cached features trains."""
        fused = self.fusion(features)
        return self._head(fused if counts is None else self._pooled(fused, counts), magnification)

    def one_image(self, tiles: torch.Tensor) -> torch.Tensor:
        """The logits (1, C) of one image from all its tiles, pooled without per-image bookkeeping: what an
        exported model of a run with attention pooling computes. One forward, so a trace keeps every tile."""
        return self._head(self.tile_pooling(self.fusion(self.features(tiles))), None)

    def _pooled(self, fused: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if self.tile_pooling is None:
            raise ValueError("this model has no tile pooling: give it one row per image, without counts")
        return self.tile_pooling(fused, counts)

    def _head(self, fused: torch.Tensor, magnification: torch.Tensor | None) -> torch.Tensor:
        if self.magnification is not None:
            fused = torch.cat([fused, self.magnification(magnification, len(fused), fused.device)], dim=1)
        return self.head(fused)

    def train(self, mode: bool = True) -> "HybridModel":
        super().train(mode)
        if mode:
            for name, backbone in self.backbones.items():
                if is_frozen(backbone):
                    backbone.eval()
                    continue
                keep_all = self.batchnorm == "frozen" or (self.batchnorm == "auto" and name in self.pretrained)
                for module in backbone.modules():
                    if has_running_stats(module) and (keep_all or _norm_is_frozen(module)):
                        module.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        extra = [m for m in (self.magnification, self.tile_pooling) if m is not None]
        return [*self.fusion.parameters(), *self.head.parameters(), *(p for m in extra for p in m.parameters())]


def _run(run, inputs: torch.Tensor, frozen: bool) -> torch.Tensor:
    # A backbone with no trainable parameter runs without building a graph.
    if frozen:
        with torch.no_grad():
            return run(inputs)
    return run(inputs)


class MagnificationEmbedding(nn.Module):
    """A learned vector per magnification, plus one for "unknown" (index 0).

    Samples carry the index of their magnification (0 when the dataset has none, e.g.
    an external set). During training a share of known magnifications is hidden as
    unknown, so the unknown vector is learned too and such sets still work.
    """

    def __init__(self, values: list[int], dim: int, unknown_rate: float):
        super().__init__()
        self.values = list(values)
        self.embed = nn.Embedding(len(values) + 1, dim)
        self.unknown_rate = unknown_rate
        self.dim = dim

    def forward(self, index: torch.Tensor | None, batch: int, device) -> torch.Tensor:
        if index is None:
            index = torch.zeros(batch, dtype=torch.long, device=device)
        index = index.to(device)
        if self.training and self.unknown_rate > 0:
            hide = torch.rand(index.shape, device=device) < self.unknown_rate
            index = index.masked_fill(hide, 0)
        return self.embed(index)


def is_frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


def has_running_stats(module: nn.Module) -> bool:
    """Batch norm (torch's, timm's fused BatchNormAct, instance norm that tracks statistics, ...)."""
    return getattr(module, "running_mean", None) is not None and getattr(module, "track_running_stats", True)


def _norm_is_frozen(module: nn.Module) -> bool:
    # A norm without an affine transform has nothing to freeze: it follows its trained neighbours.
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def build_model(recipe, registry, num_classes: int, *, pretrained: bool = True) -> HybridModel:
    """Build the recipe's model from registered components.

    ``pretrained=False`` ignores the recipe's weights (used to count parameters
    and to rebuild a model whose trained weights are loaded next).
    """
    from histofuse.recipe import validate_options

    backbones = {}
    for i, cfg in enumerate(recipe.model.backbones):
        spec = registry.get("backbone", cfg.source)
        try:
            backbones[cfg.name] = spec.build(
                model=cfg.model,
                pretrained=cfg.pretrained if pretrained else False,
                image_size=recipe.data.image_size,
                **validate_options(spec, cfg.options),
            )
            if cfg.dtype != "float32":
                backbones[cfg.name].to(getattr(torch, cfg.dtype))
        except (TypeError, ValueError) as exc:
            # Options are passed through to the factory (e.g. timm.create_model), which rejects unknown ones.
            raise RecipeError(
                "recipe", [f"model.backbones[{i}].options: '{cfg.source}' cannot build '{cfg.model}' with {cfg.options}: {exc}"]
            ) from None
    fusion_spec = registry.get("fusion", recipe.model.fusion)
    fusion = fusion_spec.build(
        in_features=[_fused_width(b, fusion_spec.inputs) for b in backbones.values()],
        **validate_options(fusion_spec, recipe.model.fusion_options),
    )
    mag = recipe.model.magnification
    embedding = MagnificationEmbedding(mag.values, mag.dim, mag.unknown_rate) if mag.enabled else None
    width = fusion.out_features + (mag.dim if mag.enabled else 0)
    head = ClassifierHead(width, num_classes, recipe.model.head.hidden, recipe.model.head.dropout)
    pretrained_names = {cfg.name for cfg in recipe.model.backbones if cfg.pretrained is not False}
    tiles = recipe.data.tiles
    pooling = AttentionPooling(fusion.out_features) if tiles is not None and tiles.pooling == "attention" else None
    return HybridModel(backbones, fusion, head, inputs=fusion_spec.inputs, magnification=embedding,
                       pretrained=pretrained_names, tile_pooling=pooling)


def _fused_width(backbone: nn.Module, inputs: str) -> int:
    # A pooled embedding may be wider than one token (Virchow's class token + mean patch token).
    return int(getattr(backbone, "token_features", backbone.num_features) if inputs == "tokens" else backbone.num_features)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


