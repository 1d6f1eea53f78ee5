"""Concatenation fusion: the paper's baseline."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import histofuse


class ConcatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dim: int = Field(1024, ge=1, le=65536, description="width of the fused feature")
    dropout: float = Field(0.6, ge=0, lt=1)


def build_concat(*, in_features: list[int], dim: int = 1024, dropout: float = 0.6):
    import torch
    from torch import nn

    class ConcatFusion(nn.Module):
        """LayerNorm(sum of widths) -> Linear -> GELU -> LayerNorm -> Dropout -> Linear."""

        def __init__(self):
            super().__init__()
            total = sum(in_features)
            self.out_features = dim
            self.layers = nn.Sequential(
                nn.LayerNorm(total),
                nn.Linear(total, dim),
                nn.GELU(),
                nn.LayerNorm(dim),
                nn.Dropout(dropout),
                nn.Linear(dim, dim),
            )

        def forward(self, features):
            return self.layers(torch.cat(features, dim=1))

    return ConcatFusion()


@histofuse.hookimpl
def register_fusions():
    return [
        histofuse.FusionSpec(
            name="concat",
            build=build_concat,
            description="concatenate pooled features, then LayerNorm/Linear/GELU projection",
            inputs="pooled",
            options=ConcatOptions,
        )
    ]
