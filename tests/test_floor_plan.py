"""The floor plan: what may import what, and how large a core module may grow.

The core (``histofuse`` but its command line) never imports a plugin or the command line; the built-in plugins
import only the public ``histofuse`` API; screens (rich) belong to the command line. Modules that still break a
budget are listed with their size today: they may shrink and leave the list, never grow or join it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "histofuse"
# Run outside the package's import graph: the entry shim and a template written into exported Spaces.
NOT_CORE = {"__main__.py", "space_template/app.py"}
CORE = sorted(
    p for p in PACKAGE.rglob("*.py")
    if p.relative_to(PACKAGE).parts[0] != "cli" and p.relative_to(PACKAGE).as_posix() not in NOT_CORE
)
PLUGINS = sorted((REPO / "plugins").rglob("*.py"))
MAX_LINES = 300
OVER_BUDGET: dict[str, int] = {}
MAX_FUNCTION_LINES = 60


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (imports inside functions count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def name(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def test_the_core_imports_neither_a_plugin_nor_the_command_line():
    offenders = {
        name(p): sorted(m for m in imported(p) if m.split(".")[0] == "histofuse_builtins" or m.startswith("histofuse.cli"))
        for p in CORE
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_built_in_plugins_import_only_the_public_api():
    def internal(module: str) -> bool:  # histofuse.<a module or package of the core>, not a name it exports
        part = module.split(".")[1] if module.startswith("histofuse.") else ""
        return bool(part) and ((PACKAGE / f"{part}.py").is_file() or (PACKAGE / part).is_dir())

    offenders = {p.relative_to(REPO).as_posix(): sorted(filter(internal, imported(p))) for p in PLUGINS}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_command_line_draws_on_the_screen():
    drawing = {name(p) for p in CORE if any(m == "rich" or m.startswith("rich.") for m in imported(p))}
    assert drawing == set(), "a core module uses rich: report through histofuse.reporting (log, progress) or return values"


def test_no_core_function_takes_a_console():
    def takes_console(path: Path) -> list[str]:
        return [
            node.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and "console" in {a.arg for a in node.args.args + node.args.kwonlyargs}
        ]

    offenders = {name(p): takes_console(p) for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}, "the core reports through histofuse.reporting, not a console"


def test_core_modules_stay_small_and_those_over_budget_only_shrink():
    sizes = {name(p): len(p.read_text().splitlines()) for p in CORE}
    sizes |= {f"cli/{p.name}": len(p.read_text().splitlines()) for p in (PACKAGE / "cli").glob("*.py")}
    over = {k: v for k, v in sizes.items() if v > MAX_LINES}
    grown = {k: (v, OVER_BUDGET.get(k)) for k, v in over.items() if v > OVER_BUDGET.get(k, MAX_LINES)}
    assert grown == {}, "over the line budget (lines now, allowed)"
    shrunk_below = {k for k in OVER_BUDGET if sizes.get(k, 0) <= MAX_LINES}
    assert shrunk_below == set(), "back under the budget: take it off OVER_BUDGET"


def test_functions_stay_short_enough_to_read_at_once():
    """Signature, docstring and body of every function in the package, the command line's included."""
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= MAX_FUNCTION_LINES:
                long[f"{name(path)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: split them into steps with names"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from histofuse_builtins.stain_matrix import x\n    import rich.table\n"
                      "    from histofuse.training.checkpoint import load_weights\n")
    assert {"histofuse_builtins.stain_matrix", "rich.table", "histofuse.training.checkpoint"} <= imported(module)


def string_constants(path: Path) -> set[str]:
    """The module's string literals; an f-string as its pattern, each field as {} (f"qc_{name}.csv" -> "qc_{}.csv")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.JoinedStr):
            found.add("".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.add(node.value)
    return found


def test_only_the_run_directory_module_spells_a_run_directory_file_name():
    layout = PACKAGE / "rundir.py"
    file_names = {s for s in string_constants(layout) if "." in s[1:] and " " not in s}
    assert {"metrics.json", "model.safetensors", "predictions.csv", "recipe.toml", "qc_{}.csv"} <= file_names
    # A checkpoint folder has files of its own, some named like the run's (its weights, its manifest).
    own_layout = {"training/epoch_checkpoint.py": {"model.safetensors", "manifest.json"}}
    spelled = {}
    for path in [*CORE, *(PACKAGE / "cli").glob("*.py")]:
        found = (string_constants(path) & file_names) - own_layout.get(name(path), set())
        if path != layout and found:
            spelled[name(path)] = sorted(found)
    assert spelled == {}
