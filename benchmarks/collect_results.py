"""Merge what run_all.sh's steps measured into benchmarks/results.json and render benchmarks/RESULTS.md from it.

Each step left ``NAME.json`` (command and figures, from ``_results.Figures``), ``NAME.txt`` (what it printed)
and ``NAME.title`` in the folder given. A section that was not rerun keeps its figures, date and machine; a
section's machine is described by this script, never typed.

Rerun (normally through run_all.sh):
    python benchmarks/collect_results.py FOLDER
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_JSON = REPO / "benchmarks" / "results.json"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
LIBRARIES = ("torch", "torchvision", "timm", "accelerate", "numpy", "opencv-python-headless", "albumentations",
             "scikit-learn", "transformers")


def describe_machine() -> dict:
    """CPU, cores, memory, system and library versions: what a reader needs to compare a figure with their own."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
        cpu = names[0].strip() if names else cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else None
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1) if memory else None,
        "system": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
        "libraries": versions,
        "commit": _commit(),
    }


def _commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    return done.stdout.strip() or None


def scrub(text: str) -> str:
    """Printed output without this machine's folders: the repository, temporary folders and the home folder."""
    text = text.replace(str(REPO) + "/", "").replace(str(REPO), ".")
    text = re.sub(re.escape(tempfile.gettempdir()) + r"(?:/[^\s'\"/]+)+", lambda m: "<tmp>/" + Path(m[0]).name, text)
    return text.replace(str(Path.home()), "~")


def collect(folder: Path, results: dict) -> dict:
    """``results`` with every step found in ``folder`` replaced by what it measured now."""
    machine, today = describe_machine(), datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    sections = dict(results.get("benchmarks", {}))
    for recorded in sorted(folder.glob("*.json")):
        name = recorded.stem
        step = json.loads(recorded.read_text())
        output = folder / f"{name}.txt"
        title = folder / f"{name}.title"
        sections[name] = {
            "title": title.read_text() if title.exists() else name,
            "rerun": f"bash benchmarks/run_all.sh {name}",
            "command": scrub(step["command"]),
            "date": today,
            "machine": machine,
            "figures": step["figures"],
            "output": scrub(output.read_text()).rstrip("\n").splitlines() if output.exists() else [],
        }
    order = _step_order()
    ordered = {n: sections[n] for n in sorted(sections, key=lambda n: (order.index(n) if n in order else len(order), n))}
    return {"about": "written by bash benchmarks/run_all.sh; RESULTS.md is rendered from this file", "benchmarks": ordered}


def _step_order() -> list[str]:
    """Steps in the order run_all.sh runs them, so RESULTS.md reads in that order."""
    script = (REPO / "benchmarks" / "run_all.sh").read_text()
    return re.findall(r"^(?:long_)?step (\w+) ", script, flags=re.MULTILINE)


def _machine_line(machine: dict) -> str:
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    memory = f", {machine['memory_gib']:g} GiB" if machine.get("memory_gib") else ""
    commit = f" at commit {machine['commit']}" if machine.get("commit") else ""
    return (f"{machine['cpu']}, {machine['cores']} cores{memory}, {machine['system']}; Python {machine['python']}, "
            f"{libraries}{commit}")


def render(results: dict) -> str:
    """RESULTS.md: every section's output, its machine and date, its rerun command and its figures by key."""
    lines = [
        "# Benchmark results",
        "",
        "Rendered from [`results.json`](results.json) by `benchmarks/collect_results.py`; do not edit by hand.",
        "`bash benchmarks/run_all.sh` reruns every section but the long ones, `bash benchmarks/run_all.sh NAME` one.",
        "Docs quote a figure with its key, `bench:NAME/KEY`, and a test checks the quote against results.json.",
    ]
    for name, section in results["benchmarks"].items():
        lines += [
            "", f"## {section['title']}", "",
            f"`{name}`, measured {section['date']} on {_machine_line(section['machine'])}.", "",
            "```", *section["output"], "```", "",
            f"rerun: `{section['rerun']}` (runs `{section['command']}`)", "",
            f"<details><summary>{len(section['figures'])} figures</summary>", "",
            "| key | value | unit |", "|---|---|---|",
        ]
        lines += [f"| `bench:{name}/{key}` | {figure['value']:.6g} | {figure['unit']} |"
                  for key, figure in section["figures"].items()]
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="where run_all.sh's steps wrote NAME.json, NAME.txt, NAME.title")
    args = parser.parse_args()
    previous = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    results = collect(args.folder, previous)
    RESULTS_JSON.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    RESULTS_MD.write_text(render(results))
    print(f"wrote {RESULTS_JSON.relative_to(REPO)} and {RESULTS_MD.relative_to(REPO)}: "
          f"{len(results['benchmarks'])} sections", file=sys.stderr)


if __name__ == "__main__":
    main()
