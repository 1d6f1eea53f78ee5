"""The web app in a real browser: headless Debian Chromium driven by Playwright, against `histofuse serve`.

Skipped, saying why, only when Chromium or Playwright is missing (`.ci/run` installs both).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytest.importorskip("gradio", reason="gradio is not installed (pip install -e '.[dev]')")

# Chromium as root, with no network beyond loopback: no sandbox, no background services, every host but 127.0.0.1 unresolvable.
BROWSER_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"histofuse serve exited: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synthetic_root):
    import copy

    from conftest import TINY_RECIPE, write_toml
    from test_run import only_run_dir, run_cli

    folder = tmp_path_factory.mktemp("served")
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"]["root"] = str(synthetic_root)
    result = run_cli(["run", str(write_toml(folder / "tiny.toml", recipe)), "-o", str(folder / "runs")])
    assert result.exit_code == 0, result.output
    return only_run_dir(folder / "runs")


@pytest.fixture(scope="module")
def served(trained_run, tmp_path_factory):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "histofuse", "serve", str(trained_run), "--port", str(port), "--max-upload-mb", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=BROWSER_ARGS, headless=True, env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        yield page
        browser.close()


def classify(page, path: Path) -> None:
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_selector("#upload .file-preview, #upload table", timeout=30_000)  # the upload has reached the server
    page.click("#classify")


def test_upload_shows_decision_probabilities_and_heatmaps(served, page, trained_run, synthetic_root, tmp_path):
    from histofuse.data.decode import decode_image
    from histofuse.inference import LoadedRun

    image = sorted(synthetic_root.rglob("*.png"))[0]
    page.goto(served)
    classify(page, image)
    page.wait_for_function("document.querySelector('#decision textarea').value.length > 0", timeout=60_000)
    run = LoadedRun(trained_run)
    decision = page.input_value("#decision textarea")
    assert decision.split()[0] in run.classes
    assert page.locator("#probabilities [data-testid$='-confidence-set']").count() == len(run.classes)
    expected = run.probabilities(run.preprocess(decode_image(image), False)[None], "none")[0]
    for name, p in zip(run.classes, expected):
        shown = float(page.get_attribute(f"#probabilities meter[aria-label='{name}']", "value"))
        assert shown == pytest.approx(float(p), abs=1e-5)  # the page shows what the model computes
        assert f"{round(100 * float(p))}%" in page.inner_text(f"#probabilities [data-testid='{name}-confidence-set']")
    assert decision.split()[0] == run.classes[int(run.decide(expected[None], "none")[0])]
    page.wait_for_function("document.querySelectorAll('#heatmaps img').length >= 2", timeout=30_000)
    assert "ms" in page.input_value("#timing textarea")
    page.screenshot(path=str(tmp_path / "served.png"), full_page=True)


def test_a_non_image_upload_gets_a_clear_error(served, page, tmp_path):
    fake = tmp_path / "slide.png"
    fake.write_text("this is not an image")
    page.goto(served)
    classify(page, fake)
    toast = page.wait_for_selector("[data-testid='toast-body']", timeout=60_000)
    text = toast.inner_text()
    assert "not an image this app can read" in text and "Upload a PNG, JPEG or TIFF" in text
    assert str(tmp_path) not in text  # no server path leaks into the message
    assert page.input_value("#decision textarea") == ""
