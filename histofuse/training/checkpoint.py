"""Best weights as safetensors, with the JSON needed to rebuild the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from histofuse.rundir import RunDir


def save_weights(model: nn.Module, run_dir: Path, meta: dict) -> None:
    """Write weights then metadata, each through a temporary file, so a crash never leaves half a file."""
    from safetensors.torch import save_model

    layout = RunDir(run_dir)
    tmp = layout.weights.with_name(layout.weights.name + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, layout.weights)
    tmp_meta = layout.model_info.with_name(layout.model_info.name + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, layout.model_info)


def load_weights(model: nn.Module, run_dir: Path) -> dict:
    from safetensors.torch import load_model

    load_model(model, str(RunDir(run_dir).weights), device=str(next(model.parameters()).device))
    return json.loads(RunDir(run_dir).model_info.read_text())
