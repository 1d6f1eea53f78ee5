"""The web app under a bounded load on loopback: concurrent clients, valid and invalid uploads; no request lost,
none answered with another's result, memory bounded. The figures are printed (pytest -s shows them);
benchmarks/serve_load.py runs the same with more clients."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio_client", reason="gradio is not installed (pip install -e '.[dev]')")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from serve_load import free_port, make_cases, run_load, start_server, summary  # noqa: E402

from test_serve_browser import trained_run  # noqa: E402,F401  (the module-scoped fixture)


def test_concurrent_clients_each_get_their_own_answer(trained_run, synthetic_root, tmp_path):  # noqa: F811
    images = sorted(synthetic_root.rglob("*.png"))[:6]
    cases = make_cases(trained_run, images, tmp_path)
    server = start_server(trained_run, free_port())
    try:
        url = f"http://127.0.0.1:{server.args[-1]}/"
        result = run_load(url, server.pid, cases, clients=4, requests=6)
    finally:
        server.terminate()
        server.wait(timeout=20)
    print("\n" + summary(result, 4, 6))
    assert result.answered == 24 and not result.wrong, result.wrong
    assert result.refused_as_expected == sum(1 for i in range(24) if cases[i % len(cases)].expected is None)
    assert max(result.rss_mb) - result.rss_mb[0] < 300  # bounded: no per-request growth
