"""Best weights as safetensors, with the JSON needed to rebuild the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

WEIGHTS = "model.safetensors"
META = "model.json"


def save_weights(model: nn.Module, run_dir: Path, meta: dict) -> None:
    """Write weights then metadata, each through a temporary file, so a crash never leaves half a file."""
    from safetensors.torch import save_model

    tmp = run_dir / (WEIGHTS + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, run_dir / WEIGHTS)
    tmp_meta = run_dir / (META + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, run_dir / META)


def load_weights(model: nn.Module, run_dir: Path) -> dict:
    from safetensors.torch import load_model

    load_model(model, str(run_dir / WEIGHTS), device=str(next(model.parameters()).device))
    return json.loads((run_dir / META).read_text())
