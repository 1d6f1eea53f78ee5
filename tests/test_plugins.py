"""Registry rules, entry-point loading from a throwaway distribution, and the hook meta-test."""

import textwrap

import pytest

import histofuse
from histofuse import hookspecs
from histofuse.errors import PluginError
from histofuse.plugins import create_plugin_manager
from histofuse.registry import Registry


class DatasetPlugin:
    def __init__(self, name, description="a test dataset"):
        self.name = name
        self.description = description

    @histofuse.hookimpl
    def register_datasets(self):
        return [histofuse.DatasetSpec(name=self.name, scan=lambda root: None, description=self.description)]


def test_builtins_register_every_component_kind(registry):
    assert registry.names("backbone") == ["timm", "transformers"]
    assert registry.names("fusion") == ["concat", "cross_attention", "gated"]
    assert registry.names("normalizer") == ["macenko", "reinhard", "vahadane"]
    assert registry.names("dataset") == ["bach", "breakhis", "csv", "folder", "synthetic"]


def test_a_name_claimed_twice_is_an_error_naming_both_plugins():
    pm = create_plugin_manager(entry_points=False, plugins=())
    pm.register_plugin(DatasetPlugin("lung"), "first_plugin", "first-dist 1.0")
    pm.register_plugin(DatasetPlugin("lung"), "second_plugin", "second-dist 2.0")
    with pytest.raises(PluginError) as info:
        Registry(pm)
    message = str(info.value)
    assert "dataset name 'lung' is registered twice" in message
    assert "'first_plugin' (first-dist 1.0)" in message and "'second_plugin' (second-dist 2.0)" in message


def test_unknown_name_lists_known_names_and_the_closest_match(registry):
    with pytest.raises(PluginError) as info:
        registry.get("dataset", "breakhs")
    message = str(info.value)
    assert "unknown dataset 'breakhs'" in message
    assert "Did you mean 'breakhis'?" in message
    assert "Registered datasets: bach, breakhis, csv, folder, synthetic" in message


def test_a_hook_that_raises_marks_its_plugin_broken_without_breaking_others():
    class Broken:
        @histofuse.hookimpl
        def register_datasets(self):
            raise RuntimeError("database offline")

    pm = create_plugin_manager(entry_points=False, plugins=())
    pm.register_plugin(Broken(), "broken_plugin", "broken-dist 0.1")
    pm.register_plugin(DatasetPlugin("ok"), "ok_plugin")
    registry = Registry(pm)
    assert registry.names("dataset") == ["ok"]
    [failure] = registry.failures
    assert failure.name == "broken_plugin" and "database offline" in failure.error
    with pytest.raises(PluginError, match="broken_plugin"):
        registry.get("dataset", "lung")


def test_a_misspelt_hook_name_is_caught_at_startup():
    class Typo:
        @histofuse.hookimpl
        def register_dataset(self):  # missing "s"
            return []

    with pytest.raises(Exception, match="register_dataset"):
        create_plugin_manager(entry_points=False, plugins=(Typo(),))


def test_wrong_spec_type_is_reported_with_the_plugin_name():
    class Wrong:
        @histofuse.hookimpl
        def register_fusions(self):
            return [histofuse.DatasetSpec(name="x", scan=print, description="")]

    pm = create_plugin_manager(entry_points=False, plugins=())
    pm.register_plugin(Wrong(), "wrong_plugin")
    pm.register_plugin(DatasetPlugin("fine"), "fine_plugin")
    registry = Registry(pm)
    [failure] = registry.failures
    assert failure.name == "wrong_plugin"
    assert failure.error == "register_fusions returned DatasetSpec; expected FusionSpec objects"
    assert registry.names("dataset") == ["fine"]


def test_entry_points_load_from_installed_distributions_and_record_them():
    """The real environment: the built-ins come in through the entry-point group, like anyone's."""
    registry = Registry(create_plugin_manager())
    by_name = {(e.kind, e.name): e for e in registry.entries()}
    assert by_name[("dataset", "synthetic")].distribution.startswith("histofuse ")
    assert by_name[("backbone", "timm")].plugin == "timm_backbones"


def make_fake_distribution(tmp_path, module_name, module_source, entry_name=None):
    """A throwaway distribution on sys.path: a module plus a .dist-info with its entry point."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / f"{module_name}-0.1.dist-info"  # as a wheel names it: '-' only before the version
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[histofuse]\n{entry_name or module_name} = {module_name}\n")
    return tmp_path


def test_a_plugin_that_fails_to_import_is_listed_and_does_not_break_the_cli(tmp_path, monkeypatch):
    make_fake_distribution(tmp_path, "broken_histo_plugin", "import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = create_plugin_manager()
    [failure] = [f for f in pm.failures if f.name == "broken_histo_plugin"]
    assert failure.distribution == "broken-histo-plugin 0.1"
    assert "ModuleNotFoundError" in failure.error

    from typer.testing import CliRunner

    from histofuse.cli import app

    result = CliRunner().invoke(app, ["plugins"], terminal_width=200)
    assert result.exit_code == 0
    assert "broken_histo_plugin" in result.output and "failed to load" in result.output
    assert "synthetic" in result.output


def test_an_installed_plugin_with_a_misspelt_hook_is_listed_not_fatal(tmp_path, monkeypatch):
    source = """
    import histofuse

    @histofuse.hookimpl
    def register_dataset():
        return []
    """
    make_fake_distribution(tmp_path, "typo_histo_plugin", source)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry(create_plugin_manager())
    [failure] = [f for f in registry.failures if f.name == "typo_histo_plugin"]
    assert "invalid plugin" in failure.error and "register_dataset" in failure.error
    assert "synthetic" in registry.names("dataset")


def test_every_hook_has_a_builtin_implementation(builtin_pm):
    """Like datasette's meta-test: a hook nobody implements is either dead or untested."""
    # Exercised by test_run's recorder plugin (on_phase_end: by the probe of test_distributed).
    notifications = {"on_fit_start", "on_epoch_end", "on_phase_end", "on_fit_end"}
    specs = {name for name in dir(hookspecs) if name.startswith(("register_", "validate_", "make_", "on_"))}
    missing = [name for name in specs - notifications if not getattr(builtin_pm.hook, name).get_hookimpls()]
    assert missing == []


def test_builtin_plugins_import_only_the_public_api():
    import ast

    from conftest import REPO

    offenders = []
    for path in sorted((REPO / "plugins").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("histofuse.")]
    assert offenders == []


def test_the_core_never_imports_a_plugin():
    from conftest import REPO

    texts = {p.name: p.read_text() for p in (REPO / "histofuse").rglob("*.py")}
    assert [name for name, text in texts.items() if "histofuse_builtins" in text] == []


def test_every_entry_point_in_pyproject_is_in_the_test_plugin_manager(builtin_pm):
    """The hand-built manager the tests use must hold exactly what pyproject.toml registers."""
    import tomllib

    from conftest import REPO

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["histofuse"]
    modules = {plugin.__name__ for plugin in builtin_pm.get_plugins()}
    assert modules == set(declared.values())
