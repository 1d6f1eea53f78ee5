"""The quick start as a user runs it: `histofuse run quickstart`, its wall time and what the run reports.

Runs from the repository root (the quick start generates data/synthetic there on first use, which the wall time
then includes), prints the run's own output as it comes, then records the test split's and every external set's
AUC beside the colour-only baseline, and each epoch's training loss and validation AUC from history.csv.

Rerun:
    python benchmarks/quickstart.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import Figures

from histofuse.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def run_quickstart(output_dir: Path) -> tuple[float, Path]:
    """Wall seconds of the run and its directory, the one folder under ``output_dir`` it added."""
    before = set(output_dir.iterdir()) if output_dir.is_dir() else set()
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "histofuse", "run", "quickstart", "--output-dir", str(output_dir)],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        print(line, end="", flush=True)
    if process.wait():
        raise SystemExit(f"histofuse run quickstart failed with exit status {process.returncode}")
    seconds = time.perf_counter() - start
    (run_dir,) = (p for p in set(output_dir.iterdir()) - before if p.is_dir())
    return seconds, run_dir


def record_run(figures: Figures, run_dir: Path) -> None:
    for name, entry in json.loads(RunDir(run_dir).metrics.read_text()).items():
        if "error" in entry:  # the run printed why; a set that failed has no figures
            continue
        figures.add(f"{name}.auc", entry["auc"], "AUC")
        figures.add(f"{name}.colour_only_auc", entry["color_baseline"]["auc"], "AUC")
    with RunDir(run_dir).history.open(newline="") as f:
        for row in csv.DictReader(f):
            figures.add(f"epoch{row['epoch']}.train_loss", float(row["train_loss"]), "loss")
            if row["val_auc"]:  # empty when the validation split held one class that epoch
                figures.add(f"epoch{row['epoch']}.val_auc", float(row["val_auc"]), "AUC")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="put the run under DIR and keep it (serve_load.py takes it)")
    args = parser.parse_args()
    figures = Figures("quickstart")
    generates = not (REPO / "data" / "synthetic").exists()
    with tempfile.TemporaryDirectory() as tmp:
        # Resolved here: the run starts in the repository root, not where DIR was named.
        seconds, run_dir = run_quickstart(args.keep.resolve() if args.keep else Path(tmp))
        figures.add("seconds", seconds, "s", note="includes generating data/synthetic" if generates else "")
        record_run(figures, run_dir)
    print(f"\nquick start: {seconds:.1f} s wall time{' (data generated first)' if generates else ''}")
    print("\nrerun: bash benchmarks/run_all.sh quickstart")
    figures.save()


if __name__ == "__main__":
    main()
