"""The full training state at the end of every epoch, written atomically and verified on resume.

A checkpoint is a folder ``checkpoints/epoch-NNNN`` holding the model, the
optimizer and scheduler state, and ``state.json`` (phase, epoch, best score,
early-stopping counter, skipped images). It is assembled under a ``.partial``
name, its files fsynced and listed with their SHA-256 in ``manifest.json``,
then renamed into place: a crash at any moment leaves either the complete
folder or none, and resuming verifies every hash before trusting one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from histofuse.errors import HistofuseError

FOLDER = "checkpoints"
MANIFEST = "manifest.json"
MODEL, OPTIMIZER, SCHEDULER, STATE = "model.safetensors", "optimizer.pt", "scheduler.pt", "state.json"


@dataclass
class TrainingState:
    """Everything besides tensors that a resumed run needs to carry on as if never stopped."""

    best: float = float("-inf")
    best_loss: float = float("inf")
    best_epoch: int = 0
    epoch: int = 0
    phase_index: int = 0
    phase_epoch: int = 0
    stale: int = 0
    phase_done: bool = False
    failed: dict[str, str] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)  # NaN losses and divergence warnings, for metrics.json

    @classmethod
    def from_json(cls, data: dict) -> "TrainingState":
        return cls(**data)


@dataclass
class Checkpoint:
    path: Path
    state: TrainingState

    def load_model(self, model: nn.Module) -> None:
        from safetensors.torch import load_model

        load_model(model, str(self.path / MODEL), device=str(next(model.parameters()).device))

    def load_optimizer_and_scheduler(self, optimizer, scheduler) -> None:
        # weights_only: a checkpoint passed around must never run code when loaded.
        optimizer.load_state_dict(torch.load(self.path / OPTIMIZER, map_location="cpu", weights_only=True))
        scheduler.load_state_dict(torch.load(self.path / SCHEDULER, map_location="cpu", weights_only=True))


def save_checkpoint(run_dir: Path, state: TrainingState, model: nn.Module, optimizer, scheduler, keep: int) -> Path:
    """Write the checkpoint of ``state.epoch`` and keep only the newest ``keep`` complete ones."""
    from safetensors.torch import save_model

    folder = run_dir / FOLDER
    final = folder / f"epoch-{state.epoch:04d}"
    partial = folder / (final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_model(model, str(partial / MODEL))
    torch.save(optimizer.state_dict(), partial / OPTIMIZER)
    torch.save(scheduler.state_dict(), partial / SCHEDULER)
    (partial / STATE).write_text(json.dumps(asdict(state), indent=2))
    hashes = {name: _sha256(partial / name) for name in (MODEL, OPTIMIZER, SCHEDULER, STATE)}
    for name in hashes:
        _fsync(partial / name)
    (partial / MANIFEST).write_text(json.dumps(hashes, indent=2))
    _fsync(partial / MANIFEST)
    if final.exists():  # the same epoch again, after resuming from an older checkpoint
        shutil.rmtree(final)
    os.replace(partial, final)
    _fsync(folder)
    for old in sorted(_complete_folders(folder))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path, warn) -> Checkpoint:
    """The newest checkpoint whose files all match their manifest; ``warn`` hears about each one skipped."""
    folder = run_dir / FOLDER
    candidates = sorted(_complete_folders(folder), reverse=True) if folder.is_dir() else []
    for path in candidates:
        problem = _verify(path)
        if problem is None:
            return Checkpoint(path, TrainingState.from_json(json.loads((path / STATE).read_text())))
        warn(f"checkpoint {path.name} is incomplete or corrupt ({problem}); trying the one before it")
    raise HistofuseError(
        f"no complete checkpoint under {folder}: nothing to resume from. Start the run again with histofuse run RECIPE."
    )


def _complete_folders(folder: Path) -> list[Path]:
    return [p for p in folder.glob("epoch-*") if p.is_dir() and not p.name.endswith(".partial")]


def _verify(path: Path) -> str | None:
    try:
        expected = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError) as exc:
        return f"unreadable {MANIFEST}: {exc}"
    for name in (MODEL, OPTIMIZER, SCHEDULER, STATE):
        if name not in expected:
            return f"{MANIFEST} does not list {name}"
        if not (path / name).is_file():
            return f"{name} is missing"
        if _sha256(path / name) != expected[name]:
            return f"{name} does not match its recorded SHA-256"
    try:
        TrainingState.from_json(json.loads((path / STATE).read_text()))
    except (ValueError, TypeError) as exc:
        return f"{STATE} is not a training state: {exc}"
    for name in (OPTIMIZER, SCHEDULER):
        try:
            torch.load(path / name, map_location="cpu", weights_only=True)
        except Exception as exc:  # a pickle carrying code is refused here, and never executed
            return f"{name} cannot be loaded safely: {str(exc).splitlines()[0]}"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
