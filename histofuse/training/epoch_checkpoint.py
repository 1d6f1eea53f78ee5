"""The full training state at the end of every epoch, written atomically and verified on resume.

A checkpoint is a folder ``checkpoints/epoch-NNNN`` holding the model, the
optimizer and scheduler state (and the fp16 gradient scaler's), ``state.json``
(phase, epoch, best score, early-stopping counter, skipped images) and what
restores the run's best weights of that state: ``best.json``, and
``best.safetensors`` unless the best epoch is this one (a hard link to the run
directory's file where the file system allows, so it costs no space). It is
assembled under a ``.partial`` name, its files fsynced and listed with their
SHA-256 in ``manifest.json``, then renamed into place: a crash at any moment
leaves either the complete folder or none, and resuming verifies every hash
before trusting one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from histofuse.errors import HistofuseError
from histofuse.rundir import RunDir

MANIFEST = "manifest.json"
MODEL, OPTIMIZER, SCHEDULER, STATE = "model.safetensors", "optimizer.pt", "scheduler.pt", "state.json"
SCALER, BEST, BEST_META = "scaler.pt", "best.safetensors", "best.json"
REQUIRED = (MODEL, OPTIMIZER, SCHEDULER, STATE)
PICKLES = (OPTIMIZER, SCHEDULER, SCALER)


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
    phase_start: str = ""  # the weights the current phase started from, for history.csv

    @classmethod
    def from_json(cls, data: dict) -> "TrainingState":
        return cls(**data)

    def improves(self, score: float, loss: float, minimise: bool, min_delta: float) -> bool:
        """Better than the best by more than ``min_delta``; on an exact tie (AUC saturates at 1.0), a lower loss wins."""
        if not math.isfinite(score):
            return False
        if not math.isfinite(self.best):
            return True
        gain = (-1.0 if minimise else 1.0) * (score - self.best)
        return gain > min_delta or (gain == 0 and loss < self.best_loss)


@dataclass
class Checkpoint:
    path: Path
    state: TrainingState

    def load_model(self, model: nn.Module) -> None:
        from safetensors.torch import load_model

        load_model(model, str(self.path / MODEL), device=str(next(model.parameters()).device))

    def load_optimizer_and_scheduler(self, optimizer, scheduler, scaler=None) -> None:
        """``scaler``: the fp16 gradient scaler, so a resumed run keeps the loss scale it had found."""
        optimizer.load_state_dict(_load_pickle(self.path / OPTIMIZER))
        scheduler.load_state_dict(_load_pickle(self.path / SCHEDULER))
        if scaler is not None:
            if not (self.path / SCALER).is_file():
                raise HistofuseError(
                    f"checkpoint {self.path.name} has no {SCALER} (the fp16 gradient scaler's state) although this run "
                    "trains in fp16; it cannot be resumed exactly. Start the run again with histofuse run RECIPE."
                )
            scaler.load_state_dict(_load_pickle(self.path / SCALER))

    def restore_best(self, run_dir: Path) -> bool:
        """Make the run directory's best weights the ones this state knows; True when they had to be replaced.

        They are written before the checkpoint of their epoch, so a crash in
        between, or falling back to an older checkpoint, leaves best weights
        from an epoch this state never saw.
        """
        layout = RunDir(run_dir)
        weights, meta = layout.weights, layout.model_info
        if not self.state.best_epoch:
            stale = [p for p in (weights, meta) if p.exists()]
            for path in stale:
                path.unlink()
            return bool(stale)
        recorded = json.loads((self.path / MANIFEST).read_text())
        source = self.path / (BEST if BEST in recorded else MODEL)
        if (
            weights.is_file() and meta.is_file() and meta.read_bytes() == (self.path / BEST_META).read_bytes()
            and _sha256(weights) == recorded[source.name]
        ):
            return False
        _copy_atomically(source, weights)  # weights first, like save_weights: model.json never names absent weights
        _copy_atomically(self.path / BEST_META, meta)
        return True


def save_checkpoint(
    run_dir: Path, state: TrainingState, model: nn.Module, optimizer, scheduler, keep: int, scaler=None
) -> Path:
    """Write the checkpoint of ``state.epoch`` and keep only the newest ``keep`` complete ones.

    The run directory's best weights must already be those of ``state.best_epoch``.
    """
    from safetensors.torch import save_model

    folder = RunDir(run_dir).checkpoints
    final = folder / f"epoch-{state.epoch:04d}"
    partial = folder / (final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_model(model, str(partial / MODEL))
    torch.save(optimizer.state_dict(), partial / OPTIMIZER)
    torch.save(scheduler.state_dict(), partial / SCHEDULER)
    (partial / STATE).write_text(json.dumps(asdict(state), indent=2))
    names = [*REQUIRED, *_keep_best(run_dir, partial, state)]
    if scaler is not None:
        torch.save(scaler.state_dict(), partial / SCALER)
        names.append(SCALER)
    hashes = {name: _sha256(partial / name) for name in names}
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


def _keep_best(run_dir: Path, partial: Path, state: TrainingState) -> list[str]:
    """Store what restores the best weights of ``state``; the checkpoint's own model is them when the best epoch is this one."""
    if not state.best_epoch:
        return []
    layout = RunDir(run_dir)
    shutil.copyfile(layout.model_info, partial / BEST_META)
    if state.best_epoch == state.epoch:
        return [BEST_META]
    try:
        # save_weights replaces model.safetensors by renaming a new file, so the link keeps these bytes.
        os.link(layout.weights, partial / BEST)
    except OSError:  # no hard links here (another file system, FAT, some network shares)
        shutil.copyfile(layout.weights, partial / BEST)
    return [BEST_META, BEST]


def latest_checkpoint(run_dir: Path, warn) -> Checkpoint:
    """The newest checkpoint whose files all match their manifest; ``warn`` hears about each one skipped."""
    folder = RunDir(run_dir).checkpoints
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
    missing = [name for name in REQUIRED if name not in expected]
    if missing:
        return f"{MANIFEST} does not list {missing[0]}"
    unknown = sorted(set(expected) - {*REQUIRED, SCALER, BEST, BEST_META})
    if unknown:  # only names this module writes are ever opened
        return f"{MANIFEST} lists an unknown file {unknown[0]!r}"
    for name in expected:
        if not (path / name).is_file():
            return f"{name} is missing"
        if _sha256(path / name) != expected[name]:
            return f"{name} does not match its recorded SHA-256"
    try:
        state = TrainingState.from_json(json.loads((path / STATE).read_text()))
    except (ValueError, TypeError) as exc:
        return f"{STATE} is not a training state: {exc}"
    if state.best_epoch and (BEST_META not in expected or (state.best_epoch != state.epoch and BEST not in expected)):
        return f"{MANIFEST} lists no copy of the best weights (epoch {state.best_epoch})"
    for name in PICKLES:
        if name not in expected:
            continue
        try:
            _load_pickle(path / name)
        except Exception as exc:  # a pickle carrying code is refused here, and never executed
            return f"{name} cannot be loaded safely: {str(exc).splitlines()[0]}"
    return None


def _load_pickle(path: Path):
    # weights_only: a checkpoint passed around must never run code when loaded.
    return torch.load(path, map_location="cpu", weights_only=True)


def _copy_atomically(source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    _fsync(tmp)
    os.replace(tmp, target)


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
