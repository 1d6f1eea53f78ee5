"""Decisions every process of a launch takes together, so none of them waits forever on the others."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from histofuse.errors import HistofuseError
from histofuse.training.accel import unwrap


def mean_across_processes(accelerator: Accelerator, total: float, seen: int) -> float:
    """The mean over every process's batches: each one summed only its own share of the epoch."""
    if accelerator.num_processes > 1:
        sums = torch.tensor([total, seen], dtype=torch.float64, device=accelerator.device)
        total, seen = accelerator.reduce(sums, reduction="sum").tolist()
    return total / max(seen, 1)


def finite_everywhere(accelerator: Accelerator, loss: torch.Tensor) -> bool:
    """Checked on every process together, so all of them stop at the same step."""
    finite = torch.isfinite(loss.detach()).all()
    if accelerator.num_processes == 1:
        return bool(finite)
    flag = finite.to(torch.int64).reshape(1)
    return bool(accelerator.reduce(flag, reduction="min").item())


def every_process_can_step(accelerator: Accelerator, batch: dict) -> bool:
    """Skip a batch on every process together when any process lacks a usable one.

    Batch norm cannot train on a single image, and unreadable files can shrink a
    batch to one or none; one process skipping alone would leave DDP waiting forever.
    """
    has_data = batch["image"] is not None and len(batch["image"]) > 1
    if accelerator.num_processes == 1:
        return has_data
    flag = torch.tensor([int(has_data)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="min").item())


def check_processes_agree(accelerator: Accelerator, model, phase_name: str) -> None:
    """Every process must end a phase with the same weights; a drift means a synchronisation bug."""
    if accelerator.num_processes == 1:
        return
    params = [p for p in unwrap(accelerator, model).parameters() if p.requires_grad]
    fingerprint = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in params])
    everyone = accelerator.gather(fingerprint[None])
    if not all(torch.equal(everyone[0], other) for other in everyone[1:]):
        raise HistofuseError(
            f"after phase '{phase_name}' the processes hold different weights: the distributed setup did not "
            "synchronise gradients. Check the launcher (docs/training.md, several processes)."
        )
