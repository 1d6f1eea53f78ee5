"""Source templates for generated plugin packages; ``{name}`` is the component name (a Python identifier)."""

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "histofuse-{dist}"
version = "0.1.0"
description = "A histofuse {kind} plugin: {name}"
requires-python = ">=3.10"
dependencies = ["histofuse"]

[project.optional-dependencies]
dev = ["pytest>=8"]

[project.entry-points.histofuse]
{name} = "histofuse_{name}"

[tool.setuptools]
py-modules = ["histofuse_{name}"]
'''

README = '''# histofuse-{dist}

A histofuse {kind} plugin providing `{name}`.

    pip install -e ".[dev]" && python -m pytest -q
    histofuse plugins            # lists {kind} '{name}' with this distribution

Edit `histofuse_{name}.py`; the hooks and contracts are in histofuse's docs/hooks.md.
'''

DATASET = '''"""Dataset '{name}': turns a folder into a table of path, label and group (patient), without decoding pixels.

The skeleton reads ROOT/<label>/<patient>_<anything>.<ext>; change `scan` to your layout.
"""

from pathlib import Path

from pydantic import BaseModel, ConfigDict

import histofuse


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    suffix: str = ".png"


def scan(root, suffix=".png"):
    import pandas as pd

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{{root}} does not exist")
    rows = [
        {{"path": str(p.resolve()), "label": p.parent.name, "group": p.stem.split("_")[0]}}
        for p in sorted(root.glob(f"*/*{{suffix}}"))
    ]
    if not rows:
        raise histofuse.DataError(f"no {{suffix}} images in class folders under {{root}}")
    return pd.DataFrame(rows)


@histofuse.hookimpl
def register_datasets():
    return [histofuse.DatasetSpec(name="{name}", scan=scan, description="my dataset", options=Options,
                                  source="where users get the data")]
'''

DATASET_TEST = '''import cv2
import numpy as np

import histofuse_{name}
from histofuse import Registry, create_plugin_manager


def write_example(root):
    for label in ("benign", "malignant"):
        for patient in range(3):
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / f"{{label[0]}}{{patient}}_1.png"), np.full((8, 8, 3), 100, np.uint8))


def test_registers_and_scans(tmp_path):
    registry = Registry(create_plugin_manager(entry_points=False, plugins=(histofuse_{name},)))
    spec = registry.get("dataset", "{name}")
    write_example(tmp_path)
    table = spec.scan(tmp_path)
    assert len(table) == 6 and set(table["label"]) == {{"benign", "malignant"}}
    assert table["group"].nunique() == 6
'''

NORMALIZER = '''"""Normalizer '{name}': fit(images) -> state, transform(rgb) -> rgb, JSON state. The skeleton matches channel means."""

import numpy as np

import histofuse


class Normalizer:
    def __init__(self):
        self.mean = None

    @property
    def fitted(self):
        return self.mean is not None

    def fit(self, images):
        total, count = np.zeros(3), 0
        for rgb in images:
            total += rgb.reshape(-1, 3).sum(0)
            count += rgb.shape[0] * rgb.shape[1]
        self.mean = (total / max(count, 1)).tolist()
        return self.state

    @property
    def state(self):
        return {{"mean": self.mean}}

    def load_state(self, state):
        self.mean = list(state["mean"])

    def transform(self, rgb):
        if self.mean is None:
            raise histofuse.NotFittedError("{name} is not fitted")
        shift = np.asarray(self.mean) - rgb.reshape(-1, 3).mean(0)
        return np.clip(rgb + shift, 0, 255).astype(np.uint8)


@histofuse.hookimpl
def register_normalizers():
    return [histofuse.NormalizerSpec(name="{name}", build=lambda: Normalizer(), description="my normalizer")]
'''

NORMALIZER_TEST = '''import numpy as np
import pytest

import histofuse
import histofuse_{name}
from histofuse import Registry, create_plugin_manager


def test_fit_transform_state():
    registry = Registry(create_plugin_manager(entry_points=False, plugins=(histofuse_{name},)))
    normalizer = registry.get("normalizer", "{name}").build()
    image = np.full((4, 4, 3), 100, np.uint8)
    with pytest.raises(histofuse.NotFittedError):
        normalizer.transform(image)
    normalizer.fit([np.full((4, 4, 3), 120, np.uint8)])
    assert normalizer.transform(image).mean() == pytest.approx(120)
'''

FUSION = '''"""Fusion '{name}': combines one feature vector per backbone. The skeleton sums linear projections."""

import histofuse


def build(*, in_features, dim=256):
    import torch
    from torch import nn

    class Fusion(nn.Module):
        def __init__(self):
            super().__init__()
            self.out_features = dim
            self.project = nn.ModuleList(nn.Linear(w, dim) for w in in_features)

        def forward(self, features):
            return torch.stack([p(f) for p, f in zip(self.project, features)]).sum(0)

    return Fusion()


@histofuse.hookimpl
def register_fusions():
    return [histofuse.FusionSpec(name="{name}", build=build, description="my fusion", inputs="pooled")]
'''

FUSION_TEST = '''import torch

import histofuse_{name}
from histofuse import Registry, create_plugin_manager


def test_maps_backbone_features_to_out_features():
    registry = Registry(create_plugin_manager(entry_points=False, plugins=(histofuse_{name},)))
    fusion = registry.get("fusion", "{name}").build(in_features=[8, 4], dim=6)
    assert fusion([torch.randn(2, 8), torch.randn(2, 4)]).shape == (2, 6)
'''

BACKBONE = '''"""Backbone '{name}': an nn.Module with num_features, mean, std, parameter_groups() and forward -> (B, num_features)."""

import histofuse


def build(*, model="small", pretrained=False, image_size=224):
    from torch import nn

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_features = 32
            self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
            self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
            self.body = nn.Conv2d(16, 32, 3, stride=2, padding=1)

        def parameter_groups(self):
            return [list(self.stem.parameters()), list(self.body.parameters())]

        def forward(self, x):
            return self.body(self.stem(x).relu()).mean((2, 3))

    if pretrained:
        raise histofuse.WeightsError("{name} has no pretrained weights yet")
    return Backbone()


@histofuse.hookimpl
def register_backbones():
    return [histofuse.BackboneSpec(name="{name}", build=build, description="my backbone")]
'''

BACKBONE_TEST = '''import torch

import histofuse_{name}
from histofuse import Registry, create_plugin_manager


def test_backbone_contract():
    registry = Registry(create_plugin_manager(entry_points=False, plugins=(histofuse_{name},)))
    backbone = registry.get("backbone", "{name}").build(model="small", pretrained=False, image_size=32)
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, backbone.num_features)
    assert len(backbone.parameter_groups()) == 2
'''

KINDS = {
    "dataset": (DATASET, DATASET_TEST),
    "normalizer": (NORMALIZER, NORMALIZER_TEST),
    "fusion": (FUSION, FUSION_TEST),
    "backbone": (BACKBONE, BACKBONE_TEST),
}
