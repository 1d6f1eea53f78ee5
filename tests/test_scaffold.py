"""`histofuse plugin new` writes packages that pass their own tests, and a dataset one trains a recipe."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import write_toml


@pytest.mark.parametrize("kind", ["dataset", "normalizer", "fusion", "backbone"])
def test_generated_package_passes_its_own_test(tmp_path, kind):
    from histofuse.scaffold.new import write_plugin

    folder = write_plugin(f"my_{kind}", kind, tmp_path)
    assert {p.name for p in folder.iterdir()} == {"pyproject.toml", "README.md", f"histofuse_my_{kind}.py", "tests"}
    assert f'my_{kind} = "histofuse_my_{kind}"' in (folder / "pyproject.toml").read_text()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=folder,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_generated_dataset_plugin_found_through_entry_points_trains_a_recipe(tmp_path, monkeypatch, tiny_recipe_dict, synthetic_root):
    from test_run import only_run_dir, run_cli

    from histofuse.scaffold.new import write_plugin

    folder = write_plugin("ward_tiles", "dataset", tmp_path)
    # Installed the way pip would: the module on sys.path plus a .dist-info naming its entry point.
    info = folder / "histofuse_ward_tiles-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: histofuse-ward-tiles\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[histofuse]\nward_tiles = histofuse_ward_tiles\n")
    monkeypatch.syspath_prepend(str(folder))
    for path in synthetic_root.rglob("*.png"):  # <label>/<patient>_<n>.png, the skeleton's layout
        label = "malignant" if "/malignant/" in path.as_posix() else "benign"
        target = tmp_path / "ward" / label / f"{path.name.split('-')[2]}_{path.name.split('-')[3]}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    listing = run_cli(["plugins"])
    assert "ward_tiles" in listing.output and "histofuse-ward-tiles 0.1.0" in listing.output
    tiny_recipe_dict["data"].update(dataset="ward_tiles", root=str(tmp_path / "ward"), options={})
    tiny_recipe_dict["phases"] = tiny_recipe_dict["phases"][:1]
    recipe = write_toml(tmp_path / "ward.toml", tiny_recipe_dict)
    result = run_cli(["run", str(recipe), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert (only_run_dir(tmp_path / "runs") / "metrics.json").is_file()


def test_plugin_new_refuses_bad_names_and_existing_folders(tmp_path):
    from histofuse.errors import HistofuseError
    from histofuse.scaffold.new import write_plugin

    with pytest.raises(HistofuseError, match="lowercase"):
        write_plugin("My-Lab", "dataset", tmp_path)
    with pytest.raises(HistofuseError, match="unknown kind 'sampler'"):
        write_plugin("lab", "sampler", tmp_path)
    write_plugin("lab", "dataset", tmp_path)
    with pytest.raises(HistofuseError, match="already exists"):
        write_plugin("lab", "dataset", tmp_path)
