"""Default factories (``trylast``): augmentation presets, AdamW, ReduceLROnPlateau. Any plugin may override them."""

from __future__ import annotations

import os

import histofuse

# The paper's augmentations, strongest first. Geometry and erasing scale with strength.
PRESETS = {
    "strong": {"rotate": 30, "translate": 0.10, "jitter": (0.3, 0.3, 0.3, 0.05), "jitter_p": 0.8, "erase_p": 0.3},
    "medium": {"rotate": 15, "translate": 0.05, "jitter": (0.2, 0.2, 0.2, 0.03), "jitter_p": 0.5, "erase_p": 0.15},
    "light": {"rotate": 5, "translate": 0.02, "jitter": (0.1, 0.1, 0.1, 0.01), "jitter_p": 0.3, "erase_p": 0.0},
}


def build_transforms(
    stage: str, strength: str, image_size: int, resize: int, stain_jitter: float = 0.0, stain_jitter_method: str = "hestain"
):
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
    import albumentations as A
    import cv2

    if resize:
        steps = [A.SmallestMaxSize(max_size=resize, interpolation=cv2.INTER_AREA)]
    else:  # the image keeps its scale (data.mpp, data.tiles): only what is smaller than the crop is padded
        steps = [A.PadIfNeeded(min_height=image_size, min_width=image_size, border_mode=cv2.BORDER_REFLECT_101)]
    stain = None
    if stage == "train" and strength != "none":
        preset = PRESETS[strength]
        b, c, s, h = preset["jitter"]
        steps += [
            A.RandomCrop(image_size, image_size),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.Affine(
                rotate=(-preset["rotate"], preset["rotate"]),
                translate_percent=(-preset["translate"], preset["translate"]),
                border_mode=cv2.BORDER_REFLECT_101,
                p=0.7,
            ),
            A.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h, p=preset["jitter_p"]),
        ]
        if stain_jitter and stain_jitter_method == "macenko":
            from histofuse_builtins.stain_macenko import MacenkoStainJitter

            # Runs first, on the full decoded image, where the tile's stain estimate is best.
            stain = MacenkoStainJitter(p=stain_jitter)
        elif stain_jitter:
            # H&E-specific: perturbs hematoxylin and eosin separately, the shift that breaks cross-site transfer.
            steps.append(A.HEStain(method="random_preset", intensity_scale_range=(0.7, 1.3), intensity_shift_range=(-0.2, 0.2), p=stain_jitter))
        if preset["erase_p"]:
            steps.append(
                A.CoarseDropout(
                    num_holes_range=(1, 3), hole_height_range=(0.05, 0.2), hole_width_range=(0.05, 0.2), p=preset["erase_p"]
                )
            )
    else:
        steps.append(A.CenterCrop(image_size, image_size))
    return AlbumentationsTransform(A.Compose(steps), stain)


class AlbumentationsTransform:
    """RGB uint8 -> float tensor in [0, 1]; ``set_random_seed`` lets histofuse seed each training sample."""

    def __init__(self, pipeline, stain=None):
        self.pipeline = pipeline
        self.stain = stain  # an optional step before the pipeline, with its own random state

    def __repr__(self) -> str:
        # Two transforms with the same steps print the same: histofuse shares cached features between them.
        return f"AlbumentationsTransform({self.pipeline!r}, stain={self.stain!r})"

    def set_random_seed(self, seed: int) -> None:
        # Compose keeps its own random state, untouched by torch/numpy seeding.
        self.pipeline.set_random_seed(seed)
        if self.stain is not None:
            self.stain.set_random_seed(seed)

    def __call__(self, image):
        import numpy as np
        import torch

        if self.stain is not None:
            image = self.stain(image)
        out = self.pipeline(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).float().div_(255.0)


@histofuse.hookimpl(trylast=True)
def make_transforms(stage, strength, image_size, resize, stain_jitter, stain_jitter_method):
    return build_transforms(stage, strength, image_size, resize, stain_jitter, stain_jitter_method)


@histofuse.hookimpl(trylast=True)
def make_optimizer(param_groups, training):
    import torch

    return torch.optim.AdamW(param_groups, weight_decay=training.weight_decay)


@histofuse.hookimpl(trylast=True)
def make_scheduler(optimizer, training):
    import torch

    mode = "min" if training.monitor == "val_loss" else "max"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, patience=training.plateau.patience, factor=training.plateau.factor, min_lr=training.plateau.min_lr
    )
