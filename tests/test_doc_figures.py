"""Figures in the README and docs come from benchmarks/results.json, and RESULTS.md is rendered from it.

A doc quotes a measured figure followed by its key, e.g. ``209.1 images/s (`bench:reinhard/700x460.histofuse.images_per_s`)``;
a sample output sits between ``<!-- output: NAME -->`` and ``<!-- /output -->`` and must be lines the
benchmark NAME printed, in order (``...`` skips lines).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from collect_results import RESULTS_JSON, RESULTS_MD, render  # noqa: E402

MARKER = re.compile(r"`bench:([\w.-]+)/([^`]+)`")
# Thousands may be grouped with a comma, a space or a thin space: "1,338", "1 338".
NUMBER = re.compile(r"[-+−]?\d{1,3}(?:[, \u2009\u202f]\d{3})+(?:\.\d+)?|[-+−]?\d+(?:\.\d+)?")
OUTPUT = re.compile(r"<!-- output: ([\w.-]+) -->\n```[^\n]*\n(.*?)```\n<!-- /output -->", re.DOTALL)
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS_JSON.read_text())["benchmarks"]


def quote_problems(text: str, results: dict) -> list[str]:
    """Every ``bench:`` quote in ``text`` whose figure is missing or differs from results.json at the digits shown."""
    problems = []
    for number, line in enumerate(text.splitlines(), 1):
        start = 0
        for marker in MARKER.finditer(line):
            name, key = marker.groups()
            shown = NUMBER.findall(line[start:marker.start()])
            start = marker.end()
            figure = results.get(name, {}).get("figures", {}).get(key)
            if figure is None:
                problems.append(f"line {number}: bench:{name}/{key} is not in results.json")
                continue
            if not shown:
                problems.append(f"line {number}: no figure before bench:{name}/{key}")
                continue
            text_value = re.sub(r"[, \u2009\u202f]", "", shown[-1]).replace("−", "-")
            decimals = len(text_value.split(".")[1]) if "." in text_value else 0
            if round(figure["value"], decimals) != pytest.approx(float(text_value), abs=10 ** -(decimals + 3)):
                problems.append(f"line {number}: {shown[-1]} quoted, results.json has {figure['value']:.6g} "
                                f"{figure['unit']} for bench:{name}/{key}")
    return problems


def output_problems(text: str, results: dict) -> list[str]:
    """Every sample-output block in ``text`` that holds a line its benchmark did not print, or out of order."""
    problems = []
    for block in OUTPUT.finditer(text):
        name, body = block.groups()
        printed = results.get(name, {}).get("output")
        if printed is None:
            problems.append(f"output {name}: no such benchmark output in results.json")
            continue
        position = 0
        for line in body.rstrip("\n").splitlines():
            if line.strip() == "...":
                continue
            try:
                position = printed.index(line, position) + 1
            except ValueError:
                problems.append(f"output {name}: {line!r} is not what the command printed (or not in this order)")
                break
    return problems


def test_results_md_is_rendered_from_results_json():
    rendered = render(json.loads(RESULTS_JSON.read_text()))
    assert RESULTS_MD.read_text() == rendered, "benchmarks/RESULTS.md was edited by hand: rerun collect_results.py"


def test_results_name_no_folder_of_the_machine_they_ran_on():
    text = RESULTS_JSON.read_text()
    for folder in ("/root/", "/home/", "/tmp/", "/work/", "/Users/", str(REPO)):
        assert folder not in text, folder


def test_every_section_says_how_to_rerun_it_and_holds_figures(results):
    for name, section in results.items():
        assert section["rerun"] == f"bash benchmarks/run_all.sh {name}"
        assert section["figures"], name
        assert all(isinstance(f["value"], (int, float)) and f["unit"] for f in section["figures"].values()), name


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_figures_and_sample_outputs_match_results_json(doc, results):
    text = doc.read_text()
    assert quote_problems(text, results) + output_problems(text, results) == []


def test_the_docs_quote_measured_figures_by_key():
    quotes = sum(len(MARKER.findall(doc.read_text())) for doc in DOCS)
    blocks = sum(len(OUTPUT.findall(doc.read_text())) for doc in DOCS)
    assert quotes >= 20 and blocks >= 1, (quotes, blocks)


def test_a_figure_that_drifted_from_results_json_is_named():
    results = {"pipeline": {"figures": {"cache_warm.images_per_s": {"value": 1496.04, "unit": "images/s"}},
                            "output": ["a", "b", "c"]}}
    good = "reads 1,496.0 images/s (`bench:pipeline/cache_warm.images_per_s`) from a warm cache"
    assert quote_problems(good, results) == []
    assert quote_problems("reads 1 496 images/s (`bench:pipeline/cache_warm.images_per_s`)", results) == []
    drifted = quote_problems("reads 1,338 images/s (`bench:pipeline/cache_warm.images_per_s`)", results)
    assert drifted == ["line 1: 1,338 quoted, results.json has 1496.04 images/s for bench:pipeline/cache_warm.images_per_s"]
    assert quote_problems("13.5x (`bench:pipeline/cache_cold`)", results) == [
        "line 1: bench:pipeline/cache_cold is not in results.json"]
    assert output_problems("<!-- output: pipeline -->\n```\na\n...\nc\n```\n<!-- /output -->", results) == []
    assert output_problems("<!-- output: pipeline -->\n```\nc\na\n```\n<!-- /output -->", results) == [
        "output pipeline: 'a' is not what the command printed (or not in this order)"]
