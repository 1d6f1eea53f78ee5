"""How the tiles of one image become one prediction: the mean of their probabilities, or attention over their
fused features, learned with the head."""

from __future__ import annotations

import torch
from torch import nn

# Tiles per backbone forward: a batch of large photos holds thousands of tiles.
TILE_CHUNK = 64


def tile_owners(counts: torch.Tensor, device) -> torch.Tensor:
    """For each tile, the index of its image, from the tiles per image in order."""
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts.to(device))


def per_tile(values: torch.Tensor | None, counts: torch.Tensor) -> torch.Tensor | None:
    """Per-image values (a magnification) repeated for each of the image's tiles."""
    return None if values is None else values.repeat_interleave(counts.to(values.device))


def pool_tile_logits(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """One prediction per image: the mean of its tiles' probabilities, returned as log-probabilities so that a
    softmax gives that mean back (as test-time augmentation does). ``counts`` are tiles per image, in order."""
    probs = logits.float().softmax(1)
    owners = tile_owners(counts, logits.device)
    sums = torch.zeros(len(counts), probs.shape[1], device=logits.device).index_add_(0, owners, probs)
    return (sums / counts.to(logits.device)[:, None]).clamp_min(1e-12).log()


class AttentionPooling(nn.Module):
    """Gated attention pooling (Ilse, Tomczak and Welling, ICML 2018): each tile's fused features get a score,
    and an image is the weighted sum of its tiles' features, the weights a softmax of the scores over its tiles.

    A tile that decides (a focus of carcinoma in benign surroundings) can outweigh many that do not, where a mean
    of probabilities dilutes it. Without ``counts`` the rows are the tiles of one image.
    """

    def __init__(self, width: int, hidden: int = 128):
        super().__init__()
        self.value = nn.Linear(width, hidden)
        self.gate = nn.Linear(width, hidden)
        self.score = nn.Linear(hidden, 1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return self.score(torch.tanh(self.value(features)) * torch.sigmoid(self.gate(features))).squeeze(1).float()

    def weights(self, features: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        """Each tile's weight in its image; an image's weights sum to 1."""
        scores = self.scores(features)
        if counts is None:
            return scores.softmax(0)
        owners = tile_owners(counts, scores.device)
        # Shifted by each image's largest score, so that no exponential overflows.
        top = torch.full((len(counts),), float("-inf"), device=scores.device).scatter_reduce(
            0, owners, scores.detach(), "amax"
        )
        exp = (scores - top[owners]).exp()
        total = torch.zeros(len(counts), device=scores.device).index_add(0, owners, exp)
        return exp / total[owners]

    def forward(self, features: torch.Tensor, counts: torch.Tensor | None = None) -> torch.Tensor:
        weighted = features.float() * self.weights(features, counts)[:, None]
        if counts is None:
            return weighted.sum(0, keepdim=True)
        owners = tile_owners(counts, features.device)
        return torch.zeros(len(counts), features.shape[1], device=features.device).index_add(0, owners, weighted)
