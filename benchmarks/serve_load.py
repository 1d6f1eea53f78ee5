"""Load test of `histofuse serve` on loopback: concurrent clients upload valid and invalid files.

Checks that every request is answered, that each valid upload gets its own image's probabilities (computed
beforehand in-process with the same run), that each invalid upload gets its error message, and that the
server's memory stays bounded; prints requests, errors, throughput, p50/p95 latency and memory.

Rerun (trains a tiny run first if no RUN_DIR is given):
    python benchmarks/serve_load.py [RUN_DIR] --clients 8 --requests 10
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from _results import Figures


@dataclass
class Case:
    path: Path
    expected: dict | None  # class -> probability, or None for a file that must be refused
    error: str | None = None


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    answered: int = 0
    refused_as_expected: int = 0
    wrong: list[str] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    seconds: float = 0.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_load(url: str, server_pid: int, cases: list[Case], clients: int, requests: int, tolerance: float = 1e-4) -> LoadResult:
    from gradio_client import Client, handle_file

    result = LoadResult()
    lock = threading.Lock()
    stop = threading.Event()

    def watch_memory():
        while not stop.is_set():
            result.rss_mb.append(rss_mb(server_pid))
            time.sleep(0.2)

    def client(worker: int):
        session = Client(url, verbose=False)
        for r in range(requests):
            case = cases[(worker * requests + r) % len(cases)]
            started = time.perf_counter()
            try:
                label, decision, _ = session.predict(handle_file(str(case.path)), "none", "none", api_name="/classify")[:3]
                outcome = {c["label"]: c["confidence"] for c in label["confidences"]}
                error = None
            except Exception as exc:  # the app's gr.Error arrives as an exception carrying its message
                outcome, error = None, str(exc)
            elapsed = time.perf_counter() - started
            with lock:
                result.latencies.append(elapsed)
                result.answered += 1
                if case.expected is None:
                    if error is not None and case.error in error:
                        result.refused_as_expected += 1
                    else:
                        result.wrong.append(f"{case.path.name}: expected an error containing '{case.error}', got {outcome or error}")
                elif error is not None:
                    result.wrong.append(f"{case.path.name}: unexpected error {error}")
                elif any(abs(outcome[c] - p) > tolerance for c, p in case.expected.items()):
                    result.wrong.append(f"{case.path.name}: got {outcome}, expected {case.expected} (another request's answer?)")

    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    return result


def make_cases(run_dir: Path, images: list[Path], folder: Path) -> list[Case]:
    """Valid images with the probabilities the run gives them, interleaved with files that must be refused."""
    from histofuse.data.decode import decode_image
    from histofuse.inference import LoadedRun

    run = LoadedRun(run_dir)
    cases = []
    for path in images:
        probs = run.probabilities(run.preprocess(decode_image(path), False)[None], "none")[0]
        cases.append(Case(path, dict(zip(run.classes, map(float, probs)))))
    (folder / "notes.png").write_text("not an image")
    (folder / "empty.tif").write_bytes(b"")
    cases.insert(1, Case(folder / "notes.png", None, "not an image this app can read"))
    cases.insert(4, Case(folder / "empty.tif", None, "Upload an image first"))
    return cases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run_dir: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "histofuse", "serve", str(run_dir), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError("histofuse serve did not start within 90 s")


def summary(result: LoadResult, clients: int, requests: int, figures: Figures | None = None) -> str:
    """The printed lines, each figure recorded in ``figures`` (tests/test_serve_load.py prints without keeping them)."""
    figures = figures if figures is not None else Figures("serve_load")
    latencies = np.array(result.latencies) * 1000
    sent = figures.add("requests.sent", clients * requests, "count")
    answered = figures.add("requests.answered", result.answered, "count")
    refused = figures.add("requests.refused_as_expected", result.refused_as_expected, "count")
    wrong = figures.add("requests.wrong", len(result.wrong), "count")
    rate = figures.add("requests_per_s", result.answered / result.seconds, "requests/s")
    seconds = figures.add("seconds", result.seconds, "s")
    p50 = figures.add("latency.p50_ms", np.percentile(latencies, 50), "ms")
    p95 = figures.add("latency.p95_ms", np.percentile(latencies, 95), "ms")
    slowest = figures.add("latency.max_ms", latencies.max(), "ms")
    start = figures.add("memory.start_mb", result.rss_mb[0], "MB")
    peak = figures.add("memory.peak_mb", max(result.rss_mb), "MB")
    end = figures.add("memory.end_mb", result.rss_mb[-1], "MB")
    growth = figures.add("memory.growth_mb", end - start, "MB")
    return "\n".join([
        f"clients {clients} x requests {requests} = {sent} sent, {answered} answered, {refused} refused as expected, {wrong} wrong",
        f"throughput {rate:.1f} requests/s over {seconds:.1f} s",
        f"latency p50 {p50:.0f} ms, p95 {p95:.0f} ms, max {slowest:.0f} ms",
        f"server memory {start:.0f} MB at start, peak {peak:.0f} MB, end {end:.0f} MB (growth {growth:+.0f} MB)",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    folder = Path(tempfile.mkdtemp(prefix="serve-load-"))
    run_dir = args.run_dir
    if run_dir is None:
        subprocess.run([sys.executable, "-m", "histofuse", "run", "recipes/quickstart.toml", "-o", str(folder / "runs"),
                        "--set", "data.root=" + str(folder / "data"), "--set", "evaluate=[]", "--set", "phases[0].epochs=1",
                        "--set", "phases[1].epochs=1", "--set", "phases[2].epochs=1", "--set", "evaluation.compare_normalizers=[]"],
                       check=True, stdout=subprocess.DEVNULL)
        run_dir = next(p for p in (folder / "runs").iterdir() if p.is_dir())
        images = sorted((folder / "data").rglob("*.png"))[:12]
    else:
        from histofuse.recipe import load_recipe

        root = Path(load_recipe(run_dir / "recipe.toml").data.root)
        images = sorted(root.rglob("*.png"))[:12]
        if not images:  # else every request would be one of the two bad files, and the figures meaningless
            raise SystemExit(f"no PNG images under the run's data.root {root}: run this from the folder the run was "
                             "trained in (data.root may be relative to it)")
    cases = make_cases(run_dir, images, folder)
    port = free_port()
    server = start_server(run_dir, port)
    try:
        result = run_load(f"http://127.0.0.1:{port}/", server.pid, cases, args.clients, args.requests)
    finally:
        server.terminate()
        server.wait(timeout=20)
    figures = Figures("serve_load")
    print(f"# histofuse serve under load, loopback, {os.cpu_count()} cores; run {run_dir.name}")
    print(summary(result, args.clients, args.requests, figures))
    for line in result.wrong[:10]:
        print("WRONG:", line)
    print("\nrerun: bash benchmarks/run_all.sh serve_load")
    figures.save()


if __name__ == "__main__":
    main()
