"""Exporting a finished run's model (ONNX, TorchScript), checked against PyTorch on the run's own images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from histofuse.errors import HistofuseError
from histofuse.rundir import RunDir

TOLERANCE = 1e-4


class ImageOnly(nn.Module):
    """The model with one input, RGB in [0, 1] (N, 3, S, S): magnification, if the model uses it, is 'unknown'.
    A model with attention pooling takes the N tiles of one image and gives that image's logits (1, C)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.pools_tiles = getattr(model, "pools_tiles", False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.one_image(image) if self.pools_tiles else self.model(image)


def sample_batch(run, count: int = 8) -> tuple[torch.Tensor, str]:
    """Preprocessed test-split images of the run (what it was evaluated on); random pixels if none can be read."""
    from histofuse.data.decode import decoded_images

    split_file, folds_file = RunDir(run.run_dir).split, RunDir(run.run_dir).folds
    paths = []
    if split_file.is_file():
        split = pd.read_csv(split_file, usecols=["path", "split"])
        paths = split.loc[split["split"] == "test", "path"].tolist()[: 4 * count]
    elif folds_file.is_file():  # a cross-validation: every image is some fold's test image
        paths = pd.read_csv(folds_file, usecols=["path"])["path"].tolist()[: 4 * count]
    if paths:
        images = [run.transform(rgb) for _, rgb in decoded_images(paths)][:count]
        if images:
            return torch.stack(images), f"{len(images)} test-split images"
    size = run.recipe.data.image_size
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0)), f"{count} random images (test split not found)"


def export(run, fmt: str, out: Path) -> dict:
    """Write ``out`` in ``fmt`` and return {"max_abs_diff", "checked_on"}; a mismatch above 1e-4 is an error.

    ONNX Runtime has no bfloat16 convolution on the CPU: a backbone held in bfloat16 goes into an ONNX file
    as float32, every weight the same number, and the file is checked against that float32 model.
    """
    model = run.model
    widened = sorted(getattr(model, "weight_dtypes", {})) if fmt == "onnx" else []
    if widened:
        model = copy.deepcopy(model).float()
        model.weight_dtypes = {}
    module = ImageOnly(model).eval()
    batch, checked_on = sample_batch(run)
    with torch.no_grad():
        expected = module(batch).numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        got = _onnx(module, batch, out)
    elif fmt == "torchscript":
        got = _torchscript(module, batch, out)
    else:
        raise HistofuseError(f"--format: expected onnx, torchscript or space, got '{fmt}'")
    diff = float(np.abs(got - expected).max())
    if not diff <= TOLERANCE:
        out.unlink(missing_ok=True)
        raise HistofuseError(f"the {fmt} export differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}) on {checked_on}; not written")
    data = run.recipe.data
    sidecar = {"classes": run.classes, "image_size": data.image_size, "resize": None if data.keeps_scale else data.resize_to,
               "input": "RGB float32 in [0, 1], NCHW; each backbone normalises inside the model", "output": "logits",
               "calibration": run.state.calibration, "max_abs_diff": diff, "checked_on": checked_on}
    if data.keeps_scale:
        tiles = data.tiles.resolved(data.image_size).model_dump() if data.tiles is not None else None
        sidecar["scale"] = {"mpp": data.mpp, "tiles": tiles, "how": _how_to_feed(data)}
    if widened:
        sidecar["weights"] = f"bfloat16 weights of {', '.join(widened)} stored as float32 (same values)"
    out.with_name(out.name + ".json").write_text(json.dumps(sidecar, indent=2))
    return {"max_abs_diff": diff, "checked_on": checked_on}


def _how_to_feed(data) -> str:
    """The steps between an image file and this model's input, for a run trained at one scale or on tiles."""
    scale = (f"Rescale the image by its µm per pixel / {data.mpp:g} (area interpolation down, cubic up). "
             if data.mpp is not None else "Keep the image at its own scale. ")
    if data.tiles is None:
        return scale + f"Mirror-pad it to at least {data.image_size} pixels a side and cut the centre {data.image_size}-pixel square."
    from histofuse.data.tiles import BACKGROUND

    tiles = data.tiles.resolved(data.image_size)
    return scale + (
        f"Mirror-pad it to at least {tiles.size} pixels a side; place {tiles.size}-pixel tiles every {tiles.stride} "
        f"pixels, the last row and column flush with the edges. Tissue is a pixel whose grey level is below {BACKGROUND}. "
        f"Keep every tile with at least {tiles.min_tissue:g} tissue, then, richest first, each tile that holds tissue no kept "
        f"tile covers; at most {tiles.max_tiles}, the richest first; the richest tile alone when none holds tissue. "
        f"Resize each tile to {data.image_size} pixels. "
    ) + (
        "Give the model all the tiles of one image as one batch: it pools them by attention and returns that image's "
        "logits (one row); apply the calibration's temperature to them." if tiles.pooling == "attention" else
        "Run the model on each tile, average the tiles' softmax probabilities, and apply the calibration's "
        "temperature to the log of that mean."
    )


SPACE_PACKAGES = ("gradio", "onnxruntime", "numpy", "opencv-python-headless")


def space_versions() -> dict[str, str]:
    """The installed version of each package the Space pins; an error naming the missing ones, before anything is written."""
    import importlib.metadata

    versions, missing = {}, []
    for package in SPACE_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
    if missing:
        raise HistofuseError(
            f"--format space pins the installed versions of {', '.join(SPACE_PACKAGES)}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed here; install them first: pip install \"histofuse[serve,export]\""
        )
    return versions


def export_space(run, folder: Path) -> dict:
    """A self-contained Hugging Face Space: app.py (ONNX Runtime + Gradio), pinned requirements, the model, a card.

    The Space classifies with the run's locked threshold and temperature, with or without TTA; heatmaps and stain
    normalization need PyTorch and histofuse, so they stay with ``histofuse serve``.
    """
    if run.recipe.data.keeps_scale:
        raise HistofuseError(
            "--format space: the Space's app resizes each upload whole, but this run was trained at one scale or on "
            "tiles (data.mpp, data.tiles), which the app does not do; serve it with histofuse serve, or export "
            "--format onnx, whose sidecar says how to cut and pool the tiles"
        )
    import shutil
    import sys

    from histofuse.manifest import model_card

    versions = space_versions()
    folder.mkdir(parents=True, exist_ok=True)
    result = export(run, "onnx", folder / "model.onnx")
    sidecar_path = folder / "model.onnx.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["title"] = run.recipe.name
    sidecar_path.write_text(json.dumps(sidecar, indent=2))
    shutil.copy(Path(__file__).with_name("space_template") / "app.py", folder / "app.py")
    (folder / "requirements.txt").write_text("".join(f"{p}=={v}\n" for p, v in versions.items()))
    # The pins are this interpreter's builds: the Space must run the same Python minor version or pip may find none.
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    front = (f"---\ntitle: {run.recipe.name}\nsdk: gradio\nsdk_version: {versions['gradio']}\npython_version: \"{python}\"\n"
             "app_file: app.py\npinned: false\n---\n\n")
    manifest, written = RunDir(run.run_dir).manifest, RunDir(run.run_dir).model_card
    if manifest.is_file():
        card = model_card(json.loads(manifest.read_text()))
    else:  # a cross-validation's parent has its own card, and no manifest
        card = written.read_text() if written.is_file() else f"# {run.recipe.name}\n"
    (folder / "README.md").write_text(front + card)
    return result


def _onnx(module: nn.Module, batch: torch.Tensor, out: Path) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise HistofuseError('ONNX export needs onnx, onnxscript and onnxruntime: pip install "histofuse[export]"') from None
    import logging

    for name in ("onnxscript", "onnx_ir"):  # their graph-optimisation INFO lines are not the user's business
        logging.getLogger(name).setLevel(logging.WARNING)
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(
        module, (batch,), str(out), input_names=["image"], output_names=["logits"],
        dynamic_shapes={"image": {0: batch_dim}}, dynamo=True, external_data=False, verbose=False,
    )
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": batch.numpy()})[0]


def _torchscript(module: nn.Module, batch: torch.Tensor, out: Path) -> np.ndarray:
    import warnings

    # TorchScript is deprecated upstream but still what many C++/mobile deployments load; its warnings say so at
    # every call, and the shape-specialisation ones do not apply (the check below runs another batch size).
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", (FutureWarning, torch.jit.TracerWarning))
        traced = torch.jit.trace(module, batch[:1], check_trace=False)
        traced.save(str(out))
        loaded = torch.jit.load(str(out))
        return loaded(batch).numpy()
