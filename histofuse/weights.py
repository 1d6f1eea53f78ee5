"""Loading weights files safely: safetensors, or PyTorch state dicts without unpickling objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from histofuse.errors import WeightsError


@dataclass
class WeightsReport:
    """What happened when a weights file was loaded into a module."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

        text = f"loaded {self.loaded} tensors"
        if self.missing:
            text += f"; {len(self.missing)} missing (kept at initial values: {few(self.missing)})"
        if self.unexpected:
            text += f"; {len(self.unexpected)} unexpected in file (ignored: {few(self.unexpected)})"
        return text


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file, refusing pickled objects."""
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(f"'{path}' is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"'{path}' could not be loaded as a PyTorch state dict with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). Files holding pickled objects are refused; "
            "convert it to safetensors or save only model.state_dict()."
        ) from None
    # Training checkpoints often nest the weights.
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"'{path}' does not hold a state dict (a mapping of names to tensors)")
    return obj


def load_weights_file(
    module: nn.Module, path: Path, drop_prefixes: tuple[str, ...] = (), convert=None
) -> WeightsReport:
    """Load matching tensors from ``path`` into ``module``.

    ``convert`` may rename keys first (a backbone plugin's map from another layout).
    Keys under ``drop_prefixes`` (e.g. an ImageNet classifier) are ignored; a tensor
    whose shape does not fit is an error listing the offenders; a file sharing no
    key with the module is an error, since it is surely meant for another model.
    """
    state = read_state_dict(Path(path))
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if convert is not None:  # a plugin's key map for another library's layout of the same architecture
        state = convert(state)
    state = {k: v for k, v in state.items() if not any(k == p or k.startswith(p + ".") for p in drop_prefixes if p)}
    own = module.state_dict()
    matching = [k for k in state if k in own]
    if not matching:
        raise WeightsError(
            f"none of the {len(state)} tensors in '{path}' match this model's parameter names "
            f"(file has e.g. {', '.join(list(state)[:3])}; model has e.g. {', '.join(list(own)[:3])}). "
            "Is the file meant for another architecture?"
        )
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in matching if state[k].shape != own[k].shape]
    if bad:
        raise WeightsError(
            f"{len(bad)} tensor(s) in '{path}' have the wrong shape for this model: " + "; ".join(bad[:5])
        )
    result = module.load_state_dict({k: state[k] for k in matching}, strict=False)
    return WeightsReport(loaded=len(matching), missing=list(result.missing_keys), unexpected=[k for k in state if k not in own])
