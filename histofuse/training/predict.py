"""Predictions over a loader: every sample exactly once, identical on every process."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from histofuse.errors import DataError
from histofuse.tile_pooling import TILE_CHUNK, per_tile, pool_tile_logits
from histofuse.training.accel import unwrap
from histofuse.tta import predict_logits


@dataclass
class Predictions:
    """Logits (log-probabilities under TTA) for the samples that decoded, by their index in the dataset."""

    indices: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    loss: float
    failed: list[tuple[str, str]] = field(default_factory=list)
    color: np.ndarray | None = None

    @property
    def probs(self) -> np.ndarray:
        from histofuse.calibration import softmax

        return softmax(self.logits)


@torch.no_grad()
def predict(accelerator, model, loader, num_classes: int, tta: str = "none", crop_size: int | None = None) -> Predictions:
    """Run ``model`` over ``loader`` (TTA views in one batched forward).

    Shards are gathered and de-duplicated by dataset index, which removes the
    samples Accelerate repeats to even out the last batch and tolerates shards
    that lost different numbers of unreadable images.
    """
    if accelerator.num_processes > 1:
        model = _without_distributed_wrapper(accelerator, model)
    model.eval()
    keys = ("indices", "logits", "labels", "losses", "color")
    collected: dict[str, list] = {k: [] for k in keys}
    failed: list[tuple[str, str]] = []
    for batch in loader:
        failed += batch["failed"]
        if batch["image"] is None:
            continue
        logits = _image_logits(model, batch, tta, crop_size)
        collected["losses"].append(nn.functional.cross_entropy(logits, batch["label"], reduction="none").cpu())
        collected["indices"].append(batch["index"].cpu())
        collected["logits"].append(logits.cpu())
        collected["labels"].append(batch["label"].cpu())
        if "color" in batch:
            collected["color"].append(batch["color"].cpu())
    empty = {"indices": (0,), "logits": (0, num_classes), "labels": (0,), "losses": (0,), "color": (0, 6)}
    part = {k: torch.cat(v).numpy() if v else np.zeros(empty[k]) for k, v in collected.items()}
    part["failed"] = failed
    parts = [part]
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([part])
    merged = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    if not len(merged["indices"]):
        raise DataError("no image of the evaluation set could be decoded; see the warnings above")
    _, first = np.unique(merged["indices"], return_index=True)
    return Predictions(
        indices=merged["indices"][first].astype(int),
        logits=merged["logits"][first],
        labels=merged["labels"][first].astype(int),
        loss=float(merged["losses"][first].mean()),
        failed=sorted({f for p in parts for f in p["failed"]}),
        color=merged["color"][first] if len(merged["color"]) else None,
    )


def training_logits(model, batch: dict) -> torch.Tensor:
    """The logits per image of a training batch: a bag of tiles per image when the model pools them."""
    magnification = batch.get("magnification")
    if "tile_counts" in batch:
        return model(batch["image"], magnification, counts=batch["tile_counts"])
    return model(batch["image"]) if magnification is None else model(batch["image"], magnification)


def _image_logits(model, batch: dict, tta: str, crop_size: int | None) -> torch.Tensor:
    """One row per image: the model's logits, or for a grid of tiles their pooled prediction."""
    magnification, counts = batch.get("magnification"), batch.get("tile_counts")
    if counts is None:
        return predict_logits(model, batch["image"], tta, magnification, crop_size)
    return pooled_tile_logits(model, batch["image"], counts, tta, magnification, crop_size)


def pooled_tile_logits(model, tiles: torch.Tensor, counts: torch.Tensor, tta: str = "none",
                       magnification: torch.Tensor | None = None, crop_size: int | None = None) -> torch.Tensor:
    """Each image's prediction from its ``counts`` tiles (``magnification``: one per image). A model that pools
    tiles itself (attention) gives it; otherwise it is the mean of the tiles' probabilities, ``TILE_CHUNK`` tiles
    (times the TTA views) per forward: a batch of large photos holds thousands of tiles."""
    if getattr(model, "pools_tiles", False):
        return predict_logits(model, tiles, tta, magnification, crop_size, counts=counts)
    magnification = per_tile(magnification, counts)
    parts = [
        predict_logits(model, tiles[i : i + TILE_CHUNK], tta,
                       None if magnification is None else magnification[i : i + TILE_CHUNK], crop_size)
        for i in range(0, len(tiles), TILE_CHUNK)
    ]
    return pool_tile_logits(torch.cat(parts), counts)


def _without_distributed_wrapper(accelerator, model: nn.Module) -> nn.Module:
    """The model for inference on one process's shard, with process 0's buffers.

    The first forward of the distributed wrapper after training broadcasts the
    buffers: a process whose images were all unreadable runs no forward and
    would leave the others waiting in that collective. Inference needs no
    collective, so it runs on the model itself (autocast kept; compiled models
    run eagerly here). The one broadcast the wrapper would have made is done
    here, by every process together: training left each process with the
    batch-norm statistics of its own last batch, and the shards must all be
    scored by the model that is saved, process 0's.
    """
    model = unwrap(accelerator, model)
    buffers = list(model.buffers())
    if buffers:
        from accelerate.utils import broadcast

        broadcast(buffers, from_process=0)
    return model
