"""A plugin the distributed and resume tests load through HISTOFUSE_PLUGINS.

HISTOFUSE_PROBE_DUMP=1: after each phase, every process saves its model's
state dict (and which parameters trained, and how many optimizer steps the
phase took) under RUN_DIR/probe/.
HISTOFUSE_PROBE_KILL="PHASE:STEP": the process sends itself SIGKILL at that
optimizer step of that phase (0-based phase), mid-epoch, like a cluster
scheduler would. HISTOFUSE_PROBE_NAN="PHASE:STEP": after that step the first
trainable parameter becomes NaN, as a diverging run's would. The optimizer is
otherwise exactly the built-in AdamW.
"""

import json
import os
import signal

import torch

import histofuse

_phase = {"index": -1}


class KillableAdamW(torch.optim.AdamW):
    def __init__(self, *args, kill_at: int | None = None, nan_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_at, self.nan_at = kill_at, nan_at
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        if self.kill_at is not None and self.steps == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        result = super().step(closure)
        if self.nan_at is not None and self.steps == self.nan_at:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return result


@histofuse.hookimpl
def make_optimizer(param_groups, training):
    _phase["index"] += 1
    _phase["optimizer"] = KillableAdamW(
        param_groups, weight_decay=training.weight_decay, kill_at=_at("HISTOFUSE_PROBE_KILL"), nan_at=_at("HISTOFUSE_PROBE_NAN")
    )
    return _phase["optimizer"]


def _at(variable: str) -> int | None:
    """The step named by PHASE:STEP in ``variable`` if PHASE is the current phase."""
    value = os.environ.get(variable)
    if not value:
        return None
    phase, step = (int(v) for v in value.split(":"))
    return step if phase == _phase["index"] else None


@histofuse.hookimpl
def on_phase_end(run_dir, phase_index, phase, model, process_index):
    if os.environ.get("HISTOFUSE_PROBE_DUMP") != "1":
        return
    from safetensors.torch import save_file

    folder = run_dir / "probe"
    folder.mkdir(exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / f"phase{phase_index}-rank{process_index}.safetensors"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    (folder / f"phase{phase_index}-trainable.json").write_text(json.dumps(trainable))
    (folder / f"phase{phase_index}-steps.json").write_text(json.dumps(_phase["optimizer"].steps))
