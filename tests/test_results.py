"""What a finished run gives people: report, model card and manifest, predict, explain, export, repeated runs,
and the web app's input checks (the browser test is in test_serve_browser.py)."""

import base64
import copy
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_RECIPE, write_toml
from test_run import only_run_dir, run_cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_root):
    folder = tmp_path_factory.mktemp("results")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"]["root"] = str(synthetic_root)
    recipe["evaluation"] = {"bootstrap": 50}
    recipe["evaluate"] = [{
        "name": "site_b", "dataset": "synthetic", "root": str(folder / "site_b"),
        "options": {"site": "b", "seed": 1, "patients_per_class": 3, "images_per_magnification": 1, "width": 96, "height": 64},
        "qc": {"enabled": True}, "normalize": True,
    }]
    result = run_cli(["run", str(write_toml(folder / "tiny.toml", recipe)), "-o", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    return only_run_dir(folder / "runs")


def embedded_images(page: str) -> list[np.ndarray]:
    return [cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
            for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_a_run_writes_a_report_a_model_card_and_a_manifest(finished_run):
    from histofuse.manifest import split_hash

    page = (finished_run / "report.html").read_text()
    images = embedded_images(page)
    assert len(images) == 5  # curves; ROC + confusion matrix for the test split and for site_b
    assert all(img is not None and img.shape[0] > 200 and img.shape[1] > 200 for img in images)
    for name, embedded in zip(("training_curves", "roc_test", "confusion_test", "roc_site_b", "confusion_site_b"), images):
        np.testing.assert_array_equal(cv2.imread(str(finished_run / "report" / f"{name}.png")), embedded, err_msg=name)
    for heading in ("By magnification", "Per patient", "Quality control", "Stain normalizer", "Resolved recipe"):
        assert heading in page, heading
    assert "<script" not in page  # self-contained and static

    manifest = json.loads((finished_run / "manifest.json").read_text())
    split = pd.read_csv(finished_run / "split.csv", dtype={"group": str})
    assert manifest["split_sha256"] == split_hash(split)
    assert sum(sum(c.values()) for c in manifest["images"].values()) == len(split)
    site_b, qc = manifest["metrics"]["site_b"], manifest["qc"]["site_b"]
    low, high = site_b["auc_ci95"]  # a bootstrap interval around the point estimate
    assert low <= site_b["auc"] <= high and low < high
    # QC looked at every tile of the 3 + 3 patients x 4 magnifications; what it passed is what was evaluated.
    assert qc["checked"] == qc["passed"] + qc["removed"] == 24 and site_b["n"] == qc["passed"]
    assert manifest["stain_normalizer"]["name"] == "reinhard" and manifest["versions"]["torch"] == torch.__version__
    assert manifest["hardware"]["cpu_count"] >= 1 and manifest["wall_seconds"] > 0
    card = (finished_run / "MODEL_CARD.md").read_text()
    assert "| test |" in card and "| site_b |" in card and "## Intended use" in card and "not for diagnosis" in card


def test_histofuse_report_renders_again(finished_run):
    """From the run's files alone, the same page: the same text and numbers, the same figures pixel for pixel."""
    before = (finished_run / "report.html").read_text()
    card = (finished_run / "MODEL_CARD.md").read_text()
    shutil.rmtree(finished_run / "report")
    (finished_run / "report.html").unlink()
    result = run_cli(["report", str(finished_run)])
    assert result.exit_code == 0, result.output
    after = (finished_run / "report.html").read_text()
    assert without_images(after) == without_images(before) and (finished_run / "MODEL_CARD.md").read_text() == card
    again, original = embedded_images(after), embedded_images(before)
    assert len(again) == len(original) == 5
    for new, old in zip(again, original):
        np.testing.assert_array_equal(new, old)


def without_images(page: str) -> str:
    return re.sub(r'src="data:image/png;base64,[^"]+"', 'src=""', page)


def test_predict_a_folder_with_a_corrupt_file_predicts_the_rest_and_names_it(finished_run, synthetic_root, tmp_path):
    from histofuse.data.decode import decode_image
    from histofuse.inference import LoadedRun

    folder = tmp_path / "to predict"
    (folder / "nested").mkdir(parents=True)
    sources = sorted(synthetic_root.rglob("*.png"))[:3]
    for i, source in enumerate(sources):
        shutil.copy(source, (folder / "nested" if i == 2 else folder) / f"tile é{i}.png")
    (folder / "corrupt.png").write_bytes(sources[0].read_bytes()[:200])
    out = tmp_path / "predictions.csv"
    result = run_cli(["predict", str(finished_run), str(folder), "--out", str(out), "--num-workers", "0", "--tta", "d4"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    table["error"] = table["error"].fillna("")
    assert len(table) == 4
    bad = table[table["error"] != ""]
    assert bad["path"].tolist() == [str(folder / "corrupt.png")] and "truncated" in bad["error"].iloc[0]
    assert "3 predicted, 1 unreadable" in result.output
    run = LoadedRun(finished_run)
    good = table[table["error"] == ""]
    for row in good.itertuples(index=False):
        expected = run.probabilities(run.preprocess(decode_image(row.path), False)[None], "d4")[0]
        assert [row.prob_benign, row.prob_malignant] == pytest.approx(expected.tolist(), abs=1e-5)
        assert row.predicted == run.classes[int(run.decide(expected[None], "d4")[0])]
    normalized_out = tmp_path / "normalized.csv"
    normalized = run_cli(["predict", str(finished_run), str(folder), "--normalize", "--num-workers", "0", "--out", str(normalized_out)])
    assert normalized.exit_code == 0, normalized.output
    # Each readable tile through the run's Reinhard (source "image": per tile) before the model, the corrupt one named.
    normalized_table = pd.read_csv(normalized_out)
    normalized_table["error"] = normalized_table["error"].fillna("")
    assert normalized_table["path"].tolist() == table["path"].tolist()
    assert normalized_table.loc[normalized_table["error"] != "", "path"].tolist() == [str(folder / "corrupt.png")]
    moved = []
    for row in normalized_table[normalized_table["error"] == ""].itertuples(index=False):
        expected = run.probabilities(run.preprocess(decode_image(row.path), True)[None], "none")[0]
        assert [row.prob_benign, row.prob_malignant] == pytest.approx(expected.tolist(), abs=1e-5)
        moved.append(abs(expected[1] - run.probabilities(run.preprocess(decode_image(row.path), False)[None], "none")[0][1]))
    # Normalizing changed what the model saw: measured 6e-5 to 1.7e-3 on these tiles (the tiny model barely reacts),
    # ten times the 1e-5 the CLI matches to at the least.
    assert max(moved) > 1e-4, moved


def test_predict_normalizing_names_the_tiles_left_unnormalized_even_from_worker_processes(finished_run, synthetic_root, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    tissue = sorted(synthetic_root.rglob("*.png"))[:2]
    for i, source in enumerate(tissue):
        shutil.copy(source, folder / f"tissue{i}.png")
    cv2.imwrite(str(folder / "glass.png"), np.full((64, 96, 3), 245, np.uint8))  # a background-only tile
    out = tmp_path / "normalized.csv"
    result = run_cli(["predict", str(finished_run), str(folder), "--normalize", "--num-workers", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False)
    reasons = dict(zip(table["path"].map(lambda p: Path(p).name), table["unnormalized"]))
    assert reasons["tissue0.png"] == reasons["tissue1.png"] == ""
    assert reasons["glass.png"] and table["predicted"].ne("").all()  # predicted all the same, unnormalized
    assert f"left unnormalized: 1 image(s): {reasons['glass.png']}" in result.output


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_onnx_and_torchscript_exports_match_pytorch(finished_run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from histofuse.export import sample_batch
    from histofuse.inference import LoadedRun

    run = LoadedRun(finished_run)
    batch, _ = sample_batch(run)
    with torch.no_grad():
        expected = run.model(batch).numpy()
    result = run_cli(["export", str(finished_run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for size in (1, len(batch)):  # the batch dimension is dynamic
        got = session.run(None, {"image": batch[:size].numpy()})[0]
        np.testing.assert_allclose(got, expected[:size], atol=1e-4)
    sidecar = json.loads((tmp_path / "m.onnx.json").read_text())
    assert sidecar["classes"] == run.classes and sidecar["max_abs_diff"] <= 1e-4
    result = run_cli(["export", str(finished_run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(torch.jit.load(str(tmp_path / "m.pt"))(batch).detach().numpy(), expected, atol=1e-4)


def test_explain_writes_a_heatmap_per_branch(finished_run, synthetic_root, tmp_path):
    image = sorted(synthetic_root.rglob("*.png"))[0]
    result = run_cli(["explain", str(finished_run), str(image), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "cnn (grad-cam)" in result.output and "vit (attention rollout)" in result.output
    from histofuse.data.decode import decode_image
    from histofuse.explain import explain
    from histofuse.inference import LoadedRun

    run = LoadedRun(finished_run)
    rgb = decode_image(image)
    probs, explanations = explain(run, rgb)
    assert ", ".join(f"{c} {p:.3f}" for c, p in zip(run.classes, probs)) in result.output
    np.testing.assert_allclose(probs, run.probabilities(run.preprocess(rgb, False)[None], "none")[0], atol=1e-6)
    seen = (run.preprocess(rgb, False).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # the 32 px crop the model sees
    heat = {e.backbone: e.heatmap for e in explanations}
    overlays = {}
    for e in explanations:
        saved = cv2.imread(str(tmp_path / f"{image.stem}_{e.backbone}.png"))
        assert saved.shape == seen.shape == (32, 32, 3)  # the recipe's image_size, not the 96 x 64 file
        overlays[e.backbone] = cv2.cvtColor(saved, cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(overlays[e.backbone], e.overlay)  # the file is the explanation, bit for bit
        assert e.heatmap.shape == (32, 32) and e.heatmap.min() == 0.0 and np.abs(overlays[e.backbone].astype(int) - seen).max() > 30
    # Attention rollout spreads over the patches: measured std 0.26-0.33 on 6 tiles here (0.12-0.26 at 64 and 96 px).
    # The CNN's deepest stage is 1 x 1 at 32 px, so its Grad-CAM is one value here; test_grad_cam_lights_up_... localises.
    assert heat["vit"].max() == 1.0 and heat["vit"].std() > 0.1
    assert np.abs(overlays["vit"].astype(int) - overlays["cnn"]).max() > 30  # each overlay shows its own branch's heat


def test_grad_cam_lights_up_the_object_that_drives_the_class():
    """Blank image with one bright square; a CNN that pools positive feature maps: the heat sits on the square."""
    from histofuse.explain import grad_cam

    conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
    torch.nn.init.constant_(conv.weight, 0.1)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    torch.nn.init.constant_(model[4].weight, 1.0)
    image = torch.zeros(1, 3, 16, 16)
    image[:, :, 2:6, 9:13] = 1.0  # top right
    heat = grad_cam(model, conv, image, target=1)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert 1 <= row <= 6 and 8 <= col <= 13
    assert heat[:8, 8:].mean() > 5 * heat[8:, :8].mean()


def test_the_web_app_refuses_bad_uploads_with_clear_messages(finished_run, synthetic_root):
    from histofuse.inference import LoadedRun
    from histofuse.serve import classify

    run = LoadedRun(finished_run)
    good = sorted(synthetic_root.rglob("*.png"))[0].read_bytes()
    probabilities, decision, heatmaps, timing = classify(run, good, "reinhard", "paper7", max_bytes=10**6)
    assert sum(probabilities.values()) == pytest.approx(1.0) and decision.split()[0] in run.classes
    assert len(heatmaps) == 2 and "ms" in timing
    for upload, message in (
        (None, "Upload an image first"),
        (b"", "Upload an image first"),
        (good, "this app accepts up to 0 MB"),
        (b"%PDF-1.4 not an image", "not an image this app can read"),
    ):
        with pytest.raises(ValueError, match=message):
            classify(run, upload, "none", "none", max_bytes=100 if upload == good else 10**6)
    with pytest.raises(ValueError, match="Unknown test-time augmentation"):
        classify(run, good, "none", "flip", max_bytes=10**6)
    with pytest.raises(ValueError, match="Unknown stain normalization"):
        classify(run, good, "/etc/passwd", "none", max_bytes=10**6)


@pytest.mark.parametrize("vary_split", [False, True])
def test_repeated_runs_report_mean_and_std(tmp_path, tiny_recipe_dict, vary_split):
    from histofuse.manifest import split_hash

    tiny_recipe_dict["evaluation"] = {"bootstrap": 0, "color_baseline": True}
    recipe = write_toml(tmp_path / "tiny.toml", tiny_recipe_dict)
    args = ["run", str(recipe), "-o", str(tmp_path / "runs"), "--repeat", "2"] + (["--repeat-splits"] if vary_split else [])
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    runs = sorted(p for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert len(runs) == 2
    seeds = [json.loads((r / "model.json").read_text())["recipe"]["seed"] for r in runs]
    assert seeds == [7, 8]
    hashes = {split_hash(pd.read_csv(r / "split.csv", dtype={"group": str})) for r in runs}
    assert len(hashes) == (2 if vary_split else 1)
    [summary_file] = list((tmp_path / "runs").glob("*-x2.json"))
    summary = json.loads(summary_file.read_text())["summary"]["test"]["auc"]
    assert len(summary["values"]) == 2 and summary["mean"] == pytest.approx(np.mean(summary["values"]))
    assert summary["std"] == pytest.approx(np.std(summary["values"], ddof=1))
    assert "mean ± standard deviation" in result.output
    colour = json.loads(summary_file.read_text())["summary"]["test"]["colour_only_auc"]  # the floor, beside the model
    assert len(colour["values"]) == 2 and "colour_only_auc" in result.output


def package_index() -> str | None:
    """The index pip would install from, if it answers: the one network use in the suite asks first."""
    import os
    import subprocess
    import sys
    import urllib.request

    configured = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True)
    url = os.environ.get("PIP_INDEX_URL") or configured.stdout.strip() or "https://pypi.org/simple/"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/pip/", timeout=5):
            return url
    except OSError:
        return None


def test_a_space_export_starts_from_a_fresh_virtual_environment(finished_run, synthetic_root, tmp_path):
    """The Space folder needs nothing from this repository: a new venv, its requirements, python app.py."""
    import os
    import subprocess
    import sys

    gradio_client = pytest.importorskip("gradio_client")
    from test_serve_browser import free_port, wait_for

    from histofuse.data.decode import decode_image
    from histofuse.inference import LoadedRun

    space = tmp_path / "space"
    result = run_cli(["export", str(finished_run), "--format", "space", "--out", str(space)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in space.iterdir()) == ["README.md", "app.py", "model.onnx", "model.onnx.json", "requirements.txt"]
    assert (space / "README.md").read_text().startswith("---\ntitle: tiny\nsdk: gradio\n")
    assert all("==" in line for line in (space / "requirements.txt").read_text().split())
    index = package_index()
    if index is None:
        pytest.skip("no package index is reachable: the Space's pinned requirements.txt cannot be installed offline")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-compile: byte-compiling all of gradio's tree took longer than the app's start needs.
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile", "-r", str(space / "requirements.txt")],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    server = subprocess.Popen([str(venv / "bin" / "python"), "app.py"], cwd=space, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**env, "PORT": str(port), "HOST": "127.0.0.1"})
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, server)
        client = gradio_client.Client(url, verbose=False)
        image = sorted(synthetic_root.rglob("*.png"))[0]
        label, decision, timing = client.predict(gradio_client.handle_file(str(image)), "paper7", api_name="/classify")
        run = LoadedRun(finished_run)
        expected = run.probabilities(run.preprocess(decode_image(image), False)[None], "paper7")[0]
        got = {c["label"]: c["confidence"] for c in label["confidences"]}
        for name, p in zip(run.classes, expected):
            assert got[name] == pytest.approx(float(p), abs=1e-4)  # the same preprocessing, TTA and calibration
        assert decision.split()[0] == run.classes[int(run.decide(expected[None], "paper7")[0])] and "ms" in timing
        fake = tmp_path / "fake.png"
        fake.write_text("not an image")
        with pytest.raises(Exception, match="not an image this app can read"):
            client.predict(gradio_client.handle_file(str(fake)), "none", api_name="/classify")
    finally:
        server.terminate()
        server.wait(timeout=20)


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes whose PNG header claims ``width`` x ``height`` pixels: a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def loaded_run(finished_run):
    from histofuse.inference import LoadedRun

    return LoadedRun(finished_run)


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run that a test may change."""
    return shutil.copytree(finished_run, tmp_path / "run")


@pytest.mark.parametrize("width, height", [(15_000, 10_000), (20_000, 20_000)])  # below and above decode's own 200 MP
def test_the_web_app_refuses_a_huge_header_as_too_large_before_decoding(loaded_run, monkeypatch, width, height):
    from histofuse.data import decode
    from histofuse.serve import classify

    def never(*_):
        raise AssertionError("the upload was decoded")

    monkeypatch.setattr(decode.cv2, "imdecode", never)
    with pytest.raises(ValueError, match="too large .* accepts up to 50 megapixels"):
        classify(loaded_run, png_claiming(width, height), "none", "none", max_bytes=10**6)


def test_the_web_app_explains_the_class_it_shows(loaded_run, synthetic_root, monkeypatch):
    import histofuse.explain
    from histofuse.serve import classify

    targets = []
    real = histofuse.explain.explain

    def spy(run, rgb, *, target=None, **options):
        targets.append(target)
        return real(run, rgb, target=target, **options)

    monkeypatch.setattr(histofuse.explain, "explain", spy)
    good = sorted(synthetic_root.rglob("*.png"))[0].read_bytes()
    _, decision, _, _ = classify(loaded_run, good, "none", "paper7", max_bytes=10**6)
    assert targets == [loaded_run.classes.index(decision.split()[0])]


def test_an_uncalibrated_tta_mode_is_said_in_predict_and_in_the_web_app(finished_run, loaded_run, synthetic_root):
    from histofuse.serve import classify

    assert loaded_run.calibrated("none") and not loaded_run.calibrated("crops5")
    image = str(sorted(synthetic_root.rglob("*.png"))[0])
    warning = "locked no threshold or temperature for TTA crops5"
    result = run_cli(["predict", str(finished_run), image, "--tta", "crops5", "--num-workers", "0"])
    assert result.exit_code == 0 and warning in result.output, result.output
    calibrated = run_cli(["predict", str(finished_run), image, "--num-workers", "0"])
    assert calibrated.exit_code == 0 and "locked no threshold" not in calibrated.output
    _, decision, _, _ = classify(loaded_run, (synthetic_root / image).read_bytes(), "none", "d4", max_bytes=10**6)
    assert "locked no threshold or temperature for TTA d4" in decision


def test_predict_help_lists_every_tta_mode():
    from typing import get_args

    from histofuse.recipe import TTA
    from histofuse.tta import MODES

    assert set(get_args(TTA)) == set(MODES)  # the recipe's list, which the CLI shows, is what tta.py implements
    result = run_cli(["predict", "--help"])
    assert all(mode in result.output for mode in MODES), result.output


def test_explain_names_outputs_uniquely_when_inputs_share_a_name(finished_run, synthetic_root, tmp_path):
    sources = sorted(synthetic_root.rglob("*.png"))[:2]
    for folder, source in zip("ab", sources):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "x.png")
    out = tmp_path / "out"
    result = run_cli(["explain", str(finished_run), str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["x-2_cnn.png", "x-2_vit.png", "x_cnn.png", "x_vit.png"]
    assert f"{tmp_path / 'b' / 'x.png'}:" in result.output and "x-2_cnn.png" in result.output


def test_explain_normalize_measures_the_given_images_for_a_dataset_normalizer(run_copy, synthetic_root, tmp_path):
    state_file = run_copy / "evaluation.json"
    state = json.loads(state_file.read_text())
    state["normalizer"]["options"]["source"] = "dataset"
    state_file.write_text(json.dumps(state))
    images = [str(p) for p in sorted(synthetic_root.rglob("*.png"))[:2]]
    result = run_cli(["explain", str(run_copy), *images, "--normalize", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").iterdir())) == 4
    from histofuse.data.decode import decode_image
    from histofuse.explain import explain
    from histofuse.inference import LoadedRun

    # The overlays are those of the normalizer adapted to the two images together, not to each alone, nor unnormalized.
    rgbs = [decode_image(p) for p in images]
    together, alone = LoadedRun(run_copy), LoadedRun(run_copy)
    together.adapt(rgbs)
    for path, rgb in zip(images, rgbs):
        alone.adapt([rgb])
        overlays = {name: {e.backbone: e.overlay for e in explain(run, rgb, normalize=normalize)[1]}
                    for name, run, normalize in (("together", together, True), ("alone", alone, True), ("raw", together, False))}
        for branch in ("cnn", "vit"):
            saved = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / f"{Path(path).stem}_{branch}.png")), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(saved, overlays["together"][branch])
            for other in ("alone", "raw"):  # measured: 4 to 32 grey levels apart at most, where the match is exact
                assert not np.array_equal(saved, overlays[other][branch]), (other, branch)


def test_evaluate_adds_its_set_to_the_manifest_and_the_model_card(run_copy, tmp_path):
    options = ['site="b"', "seed=2", "patients_per_class=3", "images_per_magnification=1", "width=96", "height=64"]
    args = ["evaluate", str(run_copy), "--dataset", "synthetic", "--root", str(tmp_path / "site_c"), "--name", "site_c", "--qc"]
    result = run_cli(args + [arg for option in options for arg in ("--option", option)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((run_copy / "manifest.json").read_text())
    assert manifest["metrics"]["site_c"]["n"] > 0 and manifest["qc"]["site_c"]["checked"] > 0
    assert {"test", "site_b", "site_c"} <= set(manifest["metrics"])
    assert "| site_c |" in (run_copy / "MODEL_CARD.md").read_text()
    assert run_cli(["report", str(run_copy)]).exit_code == 0
    assert "| site_c |" in (run_copy / "MODEL_CARD.md").read_text()


@pytest.mark.parametrize("resize, shown", [(None, 256), (300, 300)])
def test_the_model_card_states_the_resize_the_model_uses(finished_run, resize, shown):
    from histofuse.manifest import model_card

    manifest = json.loads((finished_run / "manifest.json").read_text())
    manifest["recipe"]["data"].update(image_size=224, resize=resize)
    assert f"resized to {shown} px (short side) and centre-cropped to 224 px" in model_card(manifest)


def test_a_space_export_without_gradio_says_what_to_install(loaded_run, tmp_path, monkeypatch):
    import importlib.metadata

    from histofuse.errors import HistofuseError
    from histofuse.export import export_space

    installed = importlib.metadata.version

    def version(package):
        if package == "gradio":
            raise importlib.metadata.PackageNotFoundError(package)
        return installed(package)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(HistofuseError, match=r'gradio is not installed.*pip install "histofuse\[serve,export\]"'):
        export_space(loaded_run, tmp_path / "space")
    assert not (tmp_path / "space").exists()  # refused before anything was written


@pytest.fixture(scope="module")
def space(finished_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("space")
    result = run_cli(["export", str(finished_run), "--format", "space", "--out", str(folder)])
    assert result.exit_code == 0, result.output
    return folder


def test_a_space_readme_names_the_python_its_pins_are_for(space):
    import sys

    front = (space / "README.md").read_text().split("---\n")[1]
    assert f'python_version: "{sys.version_info.major}.{sys.version_info.minor}"\n' in front


def test_the_space_app_refuses_a_huge_header_as_too_large(space, tmp_path):
    """The Space's own app.py, as shipped, in a fresh interpreter (OpenCV reads its pixel limit when it loads)."""
    import subprocess
    import sys

    pytest.importorskip("gradio")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(15_000, 10_000))  # 150 MP: under OpenCV's default limit, over the app's 50
    probe = (
        "import sys, gradio, app\n"
        "try:\n    app.classify(open(sys.argv[1], 'rb').read(), 'none')\n"
        "except gradio.Error as exc:\n    print('refused:', exc.message)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(bomb)], cwd=space, capture_output=True, text=True, timeout=120)
    assert "refused: The image is too large; this app accepts up to 50 megapixels" in done.stdout, done.stdout + done.stderr[-2000:]
