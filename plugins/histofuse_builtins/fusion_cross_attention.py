"""Cross-attention fusion: the backbones' token sequences attend to each other before pooling.

Each backbone's tokens (a CNN's feature-map positions, a ViT's patch tokens) are
projected to a common width and tagged with a learned backbone embedding. In each
layer every backbone's tokens query the tokens of the others (``direction =
"both"``), or only the first backbone's tokens query the rest (``"one_way"``);
each block is pre-norm attention + MLP with residuals. Any number of backbones
and any token counts and widths work. The tokens of each backbone are then
mean-pooled, concatenated and projected to ``dim``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

import histofuse


class CrossAttentionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    dim: int = Field(1024, ge=1, le=65536, description="width of the fused feature")
    width: int = Field(256, ge=8, le=8192, description="token width inside the attention layers")
    heads: int = Field(8, ge=1, le=128)
    depth: int = Field(1, ge=1, le=12)
    dropout: float = Field(0.1, ge=0, lt=1)
    direction: Literal["both", "one_way"] = "both"

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "CrossAttentionOptions":
        if self.width % self.heads:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        return self


def build_cross_attention(
    *, in_features: list[int], dim: int = 1024, width: int = 256, heads: int = 8, depth: int = 1,
    dropout: float = 0.1, direction: str = "both",
):
    import torch
    from torch import nn

    class CrossBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_q = nn.LayerNorm(width)
            self.norm_kv = nn.LayerNorm(width)
            self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
            self.mlp = nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * width, width)
            )

        def forward(self, queries, context):
            kv = self.norm_kv(context)
            queries = queries + self.attn(self.norm_q(queries), kv, kv, need_weights=False)[0]
            return queries + self.mlp(queries)

    class CrossAttentionFusion(nn.Module):
        def __init__(self):
            super().__init__()
            n = len(in_features)
            self.out_features = dim
            self.project = nn.ModuleList(nn.Linear(w, width) for w in in_features)
            self.source = nn.Parameter(torch.zeros(n, width))  # which backbone a token came from
            nn.init.normal_(self.source, std=0.02)
            attending = range(n) if direction == "both" else range(1)
            # One block per (layer, attending backbone); a lone backbone attends to itself.
            self.blocks = nn.ModuleList(
                nn.ModuleDict({str(i): CrossBlock() for i in attending}) for _ in range(depth)
            )
            self.out = nn.Sequential(
                nn.LayerNorm(n * width), nn.Linear(n * width, dim), nn.GELU(), nn.LayerNorm(dim), nn.Dropout(dropout),
                nn.Linear(dim, dim),
            )

        def forward(self, tokens):
            seqs = [p(t) + self.source[i] for i, (p, t) in enumerate(zip(self.project, tokens))]
            for layer in self.blocks:
                updated = list(seqs)
                for key, block in layer.items():
                    i = int(key)
                    others = [s for j, s in enumerate(seqs) if j != i] or [seqs[i]]
                    updated[i] = block(seqs[i], torch.cat(others, dim=1))
                seqs = updated
            return self.out(torch.cat([s.mean(dim=1) for s in seqs], dim=1))

    return CrossAttentionFusion()


@histofuse.hookimpl
def register_fusions():
    return [
        histofuse.FusionSpec(
            name="cross_attention",
            build=build_cross_attention,
            description="token sequences of the backbones attend to each other (either direction or both), then pool",
            inputs="tokens",
            options=CrossAttentionOptions,
        )
    ]
