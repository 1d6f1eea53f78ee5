"""Test-time augmentation as one batched forward pass over all views."""

from __future__ import annotations

import torch

from histofuse.recipe.schema import MULTI_CROP

# The paper's seven views; "both flips" equals the 180-degree rotation, so one view counts twice.
PAPER7 = ("identity", "hflip", "vflip", "hvflip", "rot90", "rot180", "rot270")
# The eight distinct symmetries of the square (the dihedral group D4).
D4 = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose")
# Multi-crop: the four corners and the centre of the resized square, each the model's input size.
CROPS5 = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
MODES = {"none": ("identity",), "paper7": PAPER7, "d4": D4, "crops5": CROPS5}


def crop(x: torch.Tensor, name: str, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = {
        "top_left": (0, 0), "top_right": (0, w - size), "bottom_left": (h - size, 0), "bottom_right": (h - size, w - size),
        "center": ((h - size) // 2, (w - size) // 2),
    }[name]
    return x[..., top : top + size, left : left + size]


def view(x: torch.Tensor, name: str) -> torch.Tensor:
    h, w = -2, -1
    return {
        "identity": lambda t: t,
        "hflip": lambda t: t.flip(w),
        "vflip": lambda t: t.flip(h),
        "hvflip": lambda t: t.flip(h).flip(w),
        "rot90": lambda t: t.rot90(1, (h, w)),
        "rot180": lambda t: t.rot90(2, (h, w)),
        "rot270": lambda t: t.rot90(3, (h, w)),
        "transpose": lambda t: t.transpose(h, w),
        "antitranspose": lambda t: t.transpose(h, w).rot90(2, (h, w)),
    }[name](x)


def predict_logits(
    model, x: torch.Tensor, mode: str = "none", magnification: torch.Tensor | None = None, crop_size: int | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits averaged over the views' log-probabilities; one forward of ``len(views) * B`` images.

    Averaging probabilities is what the paper did; the log of that mean is
    returned so callers can treat the result as logits (softmax gives back the
    averaged probabilities exactly). Multi-crop modes take the larger square
    ``x`` and cut ``crop_size`` views from it. With ``counts`` the rows of ``x``
    are tiles that the model pools per image: one forward per view, each tile
    seen in that view.
    """
    names = MODES[mode]
    if counts is not None:
        if len(names) == 1:
            return model(x, magnification, counts=counts).float()
        probs = torch.stack([model(view(x, n), magnification, counts=counts).float().softmax(1) for n in names])
        return probs.mean(0).clamp_min(1e-12).log()
    if len(names) == 1:
        return (model(x) if magnification is None else model(x, magnification)).float()
    if mode in MULTI_CROP:
        batch = torch.cat([crop(x, n, crop_size) for n in names])
    else:
        batch = torch.cat([view(x, n) for n in names])
    extra = () if magnification is None else (magnification.repeat(len(names)),)
    probs = model(batch, *extra).float().softmax(1).view(len(names), x.shape[0], -1).mean(0)
    return probs.clamp_min(1e-12).log()
