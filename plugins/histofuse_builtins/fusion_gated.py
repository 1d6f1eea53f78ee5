"""Gated fusion: each backbone's feature is projected to a common width and weighted by a learned,
input-dependent gate (softmax over backbones), the cheapest step up from concatenation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import histofuse


class GatedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dim: int = Field(1024, ge=1, le=65536, description="common width each backbone is projected to")
    dropout: float = Field(0.6, ge=0, lt=1)


def build_gated(*, in_features: list[int], dim: int = 1024, dropout: float = 0.6):
    import torch
    from torch import nn

    class GatedFusion(nn.Module):
        """LayerNorm + Linear per backbone; gate = softmax(Linear(concat)); weighted sum; GELU, LayerNorm, Dropout, Linear."""

        def __init__(self):
            super().__init__()
            self.out_features = dim
            self.project = nn.ModuleList(nn.Sequential(nn.LayerNorm(w), nn.Linear(w, dim)) for w in in_features)
            total = sum(in_features)
            # One backbone has nothing to weigh against: no gate, so no parameter that can never learn.
            self.gate = nn.Sequential(nn.LayerNorm(total), nn.Linear(total, len(in_features))) if len(in_features) > 1 else None
            self.out = nn.Sequential(nn.GELU(), nn.LayerNorm(dim), nn.Dropout(dropout), nn.Linear(dim, dim))
            self.last_gates = None  # the most recent gate weights, for inspection

        def forward(self, features):
            if self.gate is None:
                weights = features[0].new_ones(features[0].shape[0], 1)
            else:
                weights = self.gate(torch.cat(features, dim=1)).softmax(dim=1)
            self.last_gates = weights.detach()
            projected = torch.stack([p(f) for p, f in zip(self.project, features)], dim=1)
            return self.out((weights.unsqueeze(-1) * projected).sum(dim=1))

    return GatedFusion()


@histofuse.hookimpl
def register_fusions():
    return [
        histofuse.FusionSpec(
            name="gated",
            build=build_gated,
            description="project each backbone to a common width, weight them with a learned input-dependent gate",
            inputs="pooled",
            options=GatedOptions,
        )
    ]
