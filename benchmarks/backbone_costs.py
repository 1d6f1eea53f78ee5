"""What each foundation-model preset costs beside the paper's backbones: parameters, GFLOPs per image,
and the memory of a frozen forward pass at batch 32 in bfloat16.

Parameters and FLOPs are counted on the meta device at full size (torch's FlopCounterMode, one 224-px
image; 1 multiply-add = 2 FLOPs). Memory is weights (parameters x 2 bytes) plus the activation peak,
measured: a process builds the model's first two blocks at full width in bfloat16 (a CNN whole) and records its
peak resident memory across a no-grad forward of 32 images (a frozen forward frees each block's
activations before the next, so the peak does not grow with depth). Ratios are to ViT-B/16.

    python benchmarks/backbone_costs.py            # all
    python benchmarks/backbone_costs.py --no-memory  # counts only (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

from _results import Figures

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the Hub configs as published, shared with the tests

BASELINE = "vit_base_patch16_224 (paper)"


def specs() -> dict[str, dict]:
    from hub_layout import TIMM_CARDS, TRANSFORMERS_CARDS

    table = {
        "tf_efficientnetv2_s (paper)": {"family": "timm", "arch": "tf_efficientnetv2_s", "args": {}},
        BASELINE: {"family": "timm", "arch": "vit_base_patch16_224", "args": {}},
        "tf_efficientnet_lite0": {"family": "timm", "arch": "tf_efficientnet_lite0", "args": {}},
    }
    for card in TIMM_CARDS:
        table[card.preset] = {"family": "timm", "arch": card.architecture, "args": card.config_args, "card": card.preset}
    for preset, _, config_class, args, _ in TRANSFORMERS_CARDS:
        table[preset] = {"family": "transformers", "config": config_class, "args": args}
    return table


def build(spec: dict, depth: int | None = None):
    """The architecture at full size, or its first ``depth`` blocks."""
    import timm

    if spec["family"] == "transformers":
        import transformers

        layers = {"num_hidden_layers": depth} if depth else {"num_hidden_layers": 24 if spec["args"]["hidden_size"] == 1024 else 12}
        config = getattr(transformers, spec["config"])(image_size=224, patch_size=16, **spec["args"], **layers)
        return transformers.AutoModel.from_config(config, attn_implementation="sdpa")
    from histofuse_builtins.backbones_timm import _creation_args
    from histofuse_builtins.foundation_models import PRESETS

    kwargs = _creation_args({**spec["args"], **({"depth": depth} if depth else {})}, PRESETS.get(spec.get("card", "")))
    kwargs.pop("num_classes", None)
    return timm.create_model(spec["arch"], pretrained=False, num_classes=0, **kwargs)


def counts(spec: dict) -> tuple[float, float]:
    """(parameters in millions, GFLOPs per 224-px image)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = build(spec)
        x = torch.rand(1, 3, 224, 224)
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        net(pixel_values=x) if spec["family"] == "transformers" else net(x)
    return sum(p.numel() for p in net.parameters()) / 1e6, flops.get_total_flops() / 1e9


def activation_peak(name: str, batch: int) -> float:
    """MiB above the model and input, across one no-grad bfloat16 forward; measured in this process."""
    import torch

    spec = specs()[name]
    convolutional = spec["family"] == "timm" and "efficientnet" in spec["arch"]
    # Built in bfloat16 from the start: a float32 copy would already have raised the peak being measured.
    torch.set_default_dtype(torch.bfloat16)
    net = (build(spec) if convolutional else build(spec, depth=2)).eval()
    x = torch.rand(batch, 3, 224, 224)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        net(pixel_values=x) if spec["family"] == "transformers" else net(x)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-memory", action="store_true", help="skip the measured activation peak")
    parser.add_argument("--peak-of", help=argparse.SUPPRESS)  # the measuring child process
    args = parser.parse_args()
    if args.peak_of:
        print(json.dumps(activation_peak(args.peak_of, args.batch)))
        return
    import torch

    figures = Figures("backbone_costs")
    rows = {}
    for name, spec in specs().items():
        params, gflops = counts(spec)
        peak = None
        if not args.no_memory:
            done = subprocess.run([sys.executable, __file__, "--peak-of", name, "--batch", str(args.batch)],
                                  capture_output=True, text=True, check=True)
            peak = json.loads(done.stdout.strip().splitlines()[-1])
        rows[name] = (params, gflops, peak)
    base = rows[BASELINE]
    print("# Backbone costs: parameters and GFLOPs at full size (meta device, one 224-px image, 1 MAC = 2 FLOPs);")
    print(f"# frozen forward at batch {args.batch} in bfloat16 = weights (2 bytes/parameter) + measured activation peak")
    print(f"# (first two blocks at full width built in bfloat16, peak RSS on this CPU); ratios to {BASELINE}")
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print()
    print(f"{'backbone':>28} {'params M':>9} {'GFLOPs':>8} {'x params':>8} {'x FLOPs':>8} {'weights GiB':>11} "
          f"{'acts GiB':>9} {'frozen GiB':>10} {'x memory':>8}")
    base_memory = None if base[2] is None else base[0] * 2e6 / 2**30 + base[2] / 1024
    for name, (params, gflops, peak) in rows.items():
        key = name.removesuffix(" (paper)")
        figures.add(f"{key}.params_m", params, "M")
        figures.add(f"{key}.gflops", gflops, "GFLOPs")
        x_params = figures.add(f"{key}.x_params", params / base[0], "x")
        x_flops = figures.add(f"{key}.x_flops", gflops / base[1], "x")
        weights = figures.add(f"{key}.weights_gib", params * 2e6 / 2**30, "GiB")
        memory = ""
        if peak is not None:
            acts = figures.add(f"{key}.acts_gib", peak / 1024, "GiB")
            frozen = figures.add(f"{key}.frozen_gib", weights + acts, "GiB")
            x_memory = figures.add(f"{key}.x_memory", frozen / base_memory, "x")
            memory = f"{acts:>9.2f} {frozen:>10.2f} {x_memory:>8.2f}"
        print(f"{name:>28} {params:>9.1f} {gflops:>8.1f} {x_params:>8.2f} {x_flops:>8.2f} {weights:>11.2f} {memory}")
    print()
    print("rerun: bash benchmarks/run_all.sh backbone_costs")
    figures.save()


if __name__ == "__main__":
    main()
