"""A built wheel works on its own: installed (not editable) into a fresh environment, outside the clone,
it lists and copies its shipped recipes and runs a shrunk quick start from the packaged recipe.

No network: the wheel is built without build isolation and installed with --no-index and --no-deps;
the venv sees the system's site-packages for torch and the other dependencies, but not this clone's editable
install (taken off by a sitecustomize in the venv), and the test checks that what it imports is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.xdist_group("wheel")

SHIPPED = sorted(p.stem for p in (REPO / "histofuse" / "recipes").glob("*.toml"))
# The packaged quick start, every section kept (site b raw and normalized + TTA, the normalizer comparison),
# shrunk to seconds: one epoch per phase, 4 + 4 patients at one magnification, 3 + 3 on site b.
SHRUNK = [
    "phases[0].epochs=1", "phases[1].epochs=1", "phases[2].epochs=1",
    "data.options.patients_per_class=4", "data.options.magnifications=[200]", "data.num_workers=0",
    "evaluation.bootstrap=0",
    *(f"evaluate[{i}].options.{key}" for i in (0, 1)
      for key in ("patients_per_class=3", "images_per_magnification=1", "magnifications=[200]")),
]
PIP = ["-m", "pip", "--disable-pip-version-check", "--no-input"]
# The venv sees the system's site-packages (torch, ...), where this clone is installed editable: setuptools'
# editable finder would quietly import from the clone any module the wheel lacks. This sitecustomize, written
# into the venv, takes the clone off the import machinery of every process there (the console script and its
# loader workers included), then runs the system's own sitecustomize if there is one.
SITECUSTOMIZE = """\
import importlib.machinery, importlib.util, sys
from pathlib import Path

_CLONE = Path({clone!r})
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path_hooks[:] = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
_VENV = Path(sys.prefix).resolve()
sys.path[:] = [p for p in sys.path
               if not p or not Path(p).resolve().is_relative_to(_CLONE) or Path(p).resolve().is_relative_to(_VENV)]
sys.path_importer_cache.clear()
_here = Path(__file__).resolve().parent
_spec = importlib.machinery.PathFinder.find_spec(
    "sitecustomize", [p for p in sys.path if p and Path(p).resolve() != _here])
if _spec is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
"""


def _run(args, cwd, env=None, timeout=300):
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}\nstdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    return done


def _not_sources(folder, names):
    """What the build copy leaves out: caches everywhere; at the top, hidden folders, build outputs, runs, data."""
    top = Path(folder).resolve() == REPO.resolve()
    return {n for n in names if n == "__pycache__" or n.endswith(".egg-info")
            or (top and (n.startswith(".") or n in ("build", "dist", "runs", "data")))}


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(wheel file, venv python, the venv's histofuse console script, environment for its commands)."""
    base = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the tree, so no build/ folder of the clone (which setuptools never empties) leaks in.
    source = base / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=_not_sources)
    _run([sys.executable, *PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", base / "dist", "."], cwd=source)
    [wheel] = (base / "dist").glob("histofuse-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=base)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    # pip itself comes from the system site-packages; it installs into the venv. --ignore-installed: the
    # editable install of this clone, visible through the system site-packages, is neither removed nor reused.
    _run([python, *PIP, "install", "--no-deps", "--no-index", "--ignore-installed", "-q", wheel], cwd=base)
    purelib = Path(_run([python, "-I", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=base).stdout.strip())
    (purelib / "sitecustomize.py").write_text(SITECUSTOMIZE.format(clone=str(REPO.resolve())))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "HISTOFUSE_PLUGINS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return wheel, python, shutil.which("histofuse", path=str(bin_dir)), env


def test_the_wheel_holds_every_recipe_and_the_venv_imports_it_not_the_clone(wheel_env, tmp_path):
    wheel, python, _, env = wheel_env
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n[len("histofuse/recipes/"):-len(".toml")] for n in names
                  if n.startswith("histofuse/recipes/") and n.endswith(".toml")) == SHIPPED
    assert "quickstart" in SHIPPED
    # Every module of the clone's two packages is in the wheel (a module left out would fail in the venv).
    packages = {REPO: REPO / "histofuse", REPO / "plugins": REPO / "plugins" / "histofuse_builtins"}
    modules = {path.relative_to(root).as_posix() for root, package in packages.items()
               for path in package.rglob("*.py") if "__pycache__" not in path.parts}
    assert modules and modules <= set(names), sorted(modules - set(names))
    code = ("import json, sys, histofuse.cli, histofuse.run, histofuse.recipe_files, histofuse_builtins.data_synthetic\n"
            "print(json.dumps({'editable': [str(f) for f in sys.meta_path if 'editable' in str(f)],\n"
            " 'files': [m.__file__ for n, m in list(sys.modules.items())\n"
            "           if n.split('.')[0] in ('histofuse', 'histofuse_builtins') and getattr(m, '__file__', None)]}))")
    # -I: no PYTHONPATH, no user site, not the current directory; the venv's site-packages comes first.
    found = json.loads(_run([python, "-I", "-c", code], cwd=tmp_path, env=env).stdout)
    assert found["editable"] == [], "the clone's editable finder is still active in the venv"
    venv = python.parent.parent.resolve()
    assert len(found["files"]) > 10
    for path in map(Path, found["files"]):
        assert path.resolve().is_relative_to(venv), (path, venv)
        assert not path.resolve().is_relative_to(REPO.resolve()), path


def test_recipe_list_and_copy_from_the_wheel(wheel_env, tmp_path):
    _, _, histofuse, env = wheel_env
    listed = _run([histofuse, "recipe", "list"], cwd=tmp_path, env=env).stdout.splitlines()
    assert [line.split()[0] for line in listed] == SHIPPED
    assert any(line.startswith("quickstart ") and "synthetic data" in line for line in listed)

    _run([histofuse, "recipe", "copy", "quickstart"], cwd=tmp_path, env=env)
    copied = tmp_path / "quickstart.toml"
    assert copied.read_bytes() == (REPO / "recipes" / "quickstart.toml").read_bytes()
    copied.write_text("# mine\n")
    refused = subprocess.run([histofuse, "recipe", "copy", "quickstart"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert copied.read_text() == "# mine\n"  # not overwritten
    _run([histofuse, "recipe", "copy", "quickstart", "--force"], cwd=tmp_path, env=env)
    assert copied.read_bytes() == (REPO / "recipes" / "quickstart.toml").read_bytes()

    unknown = subprocess.run([histofuse, "run", "quickstrat"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and all(name in unknown.stderr for name in SHIPPED), unknown.stderr


def test_a_shrunk_quick_start_runs_from_the_packaged_recipe_in_an_empty_directory(wheel_env, tmp_path):
    _, _, histofuse, env = wheel_env
    sets = [arg for item in SHRUNK for arg in ("--set", item)]
    done = _run([histofuse, "run", "quickstart", *sets], cwd=tmp_path, env=env, timeout=600)
    # The recipe's relative data.root is the working directory's: the synthetic data is generated here.
    assert (tmp_path / "data" / "synthetic" / ".histofuse-synthetic.json").is_file()
    [run_dir] = (tmp_path / "runs").glob("quickstart-*")
    assert f"done: runs/{run_dir.name}" in done.stdout.replace(os.sep, "/")
    assert (run_dir / "model.safetensors").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"test", "site_b", "site_b_reinhard"}
    assert 0.0 <= metrics["test"]["auc"] <= 1.0 and metrics["test"]["n"] == 6  # 2 test patients x 3 images
    assert metrics["site_b_reinhard"]["normalized"] is True and metrics["site_b_reinhard"]["tta"] == "d4"
    assert (run_dir / "stain_comparison.json").is_file()


def test_names_resolve_to_shipped_recipes_and_files_keep_precedence(tmp_path, monkeypatch):
    """In-process, no wheel: a bare name is a shipped recipe unless a file of that name is here."""
    from histofuse.errors import HistofuseError, RecipeError
    from histofuse.recipe_files import FOLDER, copy_recipe, resolve_recipe

    monkeypatch.chdir(tmp_path)
    assert resolve_recipe(Path("quickstart")) == FOLDER / "quickstart.toml"
    (tmp_path / "quickstart").write_text("name = 'mine'\n")
    assert resolve_recipe(Path("quickstart")) == Path("quickstart")
    with pytest.raises(RecipeError, match="no such recipe file.*histofuse run quickstart"):
        resolve_recipe(Path("recipes/quickstart.toml"))  # the clone's path, typed where there is no clone
    assert copy_recipe("quickstart", "into/") == Path("into/quickstart.toml")
    assert copy_recipe("fm_probe", "into") == Path("into/fm_probe.toml")
    with pytest.raises(HistofuseError, match="already exists"):
        copy_recipe("fm_probe", "into")
    with pytest.raises(RecipeError, match="packaged recipes: breakhis_phased, .*quickstart"):
        copy_recipe("nope")
