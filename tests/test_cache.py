"""The decode cache: same pixels as decoding, invalidated by a changed file, safe under concurrent and killed builds."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from histofuse.data.cache import DecodeCache
from histofuse.data.decode import decode_image

BUILD = """
import sys
from pathlib import Path
from histofuse.data.cache import DecodeCache
cache = DecodeCache(Path(sys.argv[1]), int(sys.argv[2]))
for path in sys.argv[3:]:
    cache.load(path)
print("built", len(cache.index))
"""


@pytest.fixture
def images(synthetic_root):
    return [str(p) for p in sorted(synthetic_root.rglob("*.png"))[:24]]


def test_cached_images_give_the_same_tensors_as_decoding(tmp_path, images):
    from histofuse_builtins.defaults import build_transforms

    cache = DecodeCache(tmp_path / "cache", resize=40)
    for stage, strength in (("eval", "none"), ("train", "strong")):
        transform = build_transforms(stage, strength, 32, 40, 0.5)
        for path in images[:6]:
            transform.set_random_seed(3)
            direct = transform(decode_image(path))
            transform.set_random_seed(3)
            cached = transform(cache.load(path))  # the second time: a memory-mapped read
            transform.set_random_seed(3)
            assert np.array_equal(direct.numpy(), cached.numpy()) and np.array_equal(cached.numpy(), transform(cache.load(path)).numpy())
    assert isinstance(cache.load(images[0]), np.memmap)


def test_a_changed_source_file_or_setting_is_a_new_entry(tmp_path, images):
    import shutil

    source = tmp_path / "tile.png"
    shutil.copy(images[0], source)
    cache = DecodeCache(tmp_path / "cache", resize=40)
    first = np.array(cache.load(str(source)))
    shutil.copy(images[1], source)
    os.utime(source, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = np.array(cache.load(str(source)))
    assert not np.array_equal(first, second)
    assert np.array_equal(second, DecodeCache(tmp_path / "other", 40).shrink(decode_image(source)))
    DecodeCache(tmp_path / "cache", resize=48).load(str(source))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3  # two contents at 40 px, one at 48 px


def test_two_processes_building_at_once_and_a_killed_build_leave_only_complete_entries(tmp_path, images):
    folder = tmp_path / "cache"
    builders = [subprocess.Popen([sys.executable, "-c", BUILD, str(folder), "40", *images], stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    assert [b.communicate(timeout=300)[0].strip() for b in builders] == ["built 24", "built 24"]
    killed = subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path / "killed"), "40", *images * 20])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list((tmp_path / "killed").glob("*.npy"))) < 5:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    for root in (folder, tmp_path / "killed"):
        reader = DecodeCache(root, 40)
        for path in images:
            assert np.array_equal(reader.load(path), reader.shrink(decode_image(path)))
        assert all(not p.name.startswith(".building-") or p.suffix == ".npy" for p in root.iterdir())
    assert len(list(folder.glob("*.npy"))) == 24


def test_a_phase_on_cached_features_trains_the_head_on_what_the_backbones_compute(tmp_path, tiny_recipe_dict):
    import json

    import pandas as pd
    import torch

    from conftest import write_toml
    from histofuse.training.feature_cache import FeatureBank
    from test_run import only_run_dir, run_cli

    tiny_recipe_dict["phases"][0].update(augment="none", cache_features=True, epochs=3)
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "cached features of" in result.output
    history = pd.read_csv(only_run_dir(tmp_path / "runs") / "history.csv")
    assert history["phase"].tolist() == ["head"] * 3 + ["partial", "full"]
    assert json.loads((only_run_dir(tmp_path / "runs") / "metrics.json").read_text())["test"]["n"] > 0

    from histofuse.data.loading import ImageTable
    from histofuse.data.eval_loader import make_eval_transform
    from histofuse.model import build_model
    from histofuse.recipe import parse_recipe
    from histofuse.registry import default_registry

    parsed = parse_recipe(tiny_recipe_dict)
    registry = default_registry()
    model = build_model(parsed, registry, 2, pretrained=False).eval()
    frame = pd.read_csv(only_run_dir(tmp_path / "runs") / "split.csv", dtype={"group": str, "label": str})
    dataset = ImageTable(frame.head(10), ["benign", "malignant"], make_eval_transform(registry.pm.hook, parsed.data))
    bank = FeatureBank.compute(model, dataset, 4, 0, "cpu")
    with torch.no_grad():
        direct = model.features(torch.stack([dataset[i]["image"] for i in range(10)]))
    for cached, computed in zip(bank.features, direct):
        torch.testing.assert_close(cached, computed)


def test_cached_features_are_refused_for_a_phase_that_trains_backbones_or_augments(tiny_recipe_dict):
    from histofuse.errors import RecipeError
    from histofuse.recipe import parse_recipe

    tiny_recipe_dict["phases"][1]["cache_features"] = True
    with pytest.raises(RecipeError, match=r'phases\[1\].*unfreeze = \{.cnn.: 2, .vit.: 2\}, augment = .medium.'):
        parse_recipe(tiny_recipe_dict)


def test_a_feature_store_passes_each_image_through_the_backbones_once_across_runs(tiny_recipe_dict, tmp_path):
    import torch

    from histofuse.data.loading import ImageTable
    from histofuse.data.eval_loader import make_eval_transform
    from histofuse.model import build_model
    from histofuse.recipe import parse_recipe
    from histofuse.registry import default_registry
    from histofuse.training.feature_cache import FeatureBank, FeatureStore
    from histofuse_builtins.data_synthetic import scan_synthetic

    parsed = parse_recipe(tiny_recipe_dict)
    registry = default_registry()
    model = build_model(parsed, registry, 2, pretrained=False).eval()
    table = scan_synthetic(tiny_recipe_dict["data"]["root"], **tiny_recipe_dict["data"]["options"]).head(12).reset_index(drop=True)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    table.loc[5, "path"] = str(broken)
    transform = make_eval_transform(registry.pm.hook, parsed.data)
    # Two "folds" that share 4 images, as a cross-validation's training splits do; each with its own transform object.
    first = ImageTable(table.iloc[:8].reset_index(drop=True), ["benign", "malignant"], transform)
    second_frame = table.iloc[4:].assign(label="benign").reset_index(drop=True)  # labels come from the split, not the store
    second = ImageTable(second_frame, ["benign", "malignant"], make_eval_transform(registry.pm.hook, parsed.data))
    store = FeatureStore()
    store.bank(model, first, 3, 0, "cpu")
    shared = store.bank(model, second, 3, 0, "cpu")
    assert store.computed == 12  # 8 + the 4 the second split did not share, the unreadable one included
    alone = FeatureBank.compute(model, second, 5, 0, "cpu")
    assert shared.indices.tolist() == alone.indices.tolist() and shared.failed == alone.failed == [(str(broken), alone.failed[0][1])]
    assert shared.labels.tolist() == alone.labels.tolist() == [0] * 7
    for cached, computed in zip(shared.features, alone.features):
        torch.testing.assert_close(cached, computed)
    with torch.no_grad():  # other weights, other features: nothing is reused
        next(model.backbones["cnn"].parameters()).add_(1.0)
    store.bank(model, second, 3, 0, "cpu")
    assert store.computed == 20
