"""history.csv: one row per epoch, appended as training goes so a crash loses nothing written."""

from __future__ import annotations

import csv
import os
from pathlib import Path


class History:
    def __init__(self, path: Path, write: bool):
        self.path = path
        self.write = write
        self.records: list[dict] = []

    def truncate(self, last_epoch: int) -> None:
        """Keep the rows up to ``last_epoch``: a resumed run rewrites the epochs after its checkpoint."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= last_epoch]
        if self.write and rows:
            self._rewrite(rows, list(rows[0]))
        elif self.write:
            self.path.unlink()

    def add(self, **record) -> dict:
        self.records.append(record)
        if self.write:
            new = not self.path.exists()
            if not new and self._columns() != list(record):
                self._widen(list(record))
            with self.path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(record))
                if new:
                    writer.writeheader()
                writer.writerow(record)
        return record

    def _columns(self) -> list[str]:
        with self.path.open(newline="") as f:
            return next(csv.reader(f), [])

    def _widen(self, columns: list[str]) -> None:
        """A run resumed by a newer version records columns the file lacks: its older rows get them empty."""
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        self._rewrite(rows, columns)

    def _rewrite(self, rows: list[dict], columns: list[str]) -> None:
        """Replace the file whole, so a crash leaves the old one or the new one, never half of either."""
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    @staticmethod
    def format(r: dict) -> str:
        auc = "n/a" if r["val_auc"] is None else f"{r['val_auc']:.4f}"
        star = "  [best]" if r["best"] else ""
        return (
            f"  epoch {r['epoch']:>3} ({r['phase']} {r['phase_epoch']})  train_loss {r['train_loss']:.4f}  "
            f"val_loss {r['val_loss']:.4f}  val_auc {auc}  val_acc {r['val_accuracy']:.3f}  "
            f"lr {'/'.join(f'{v:.1e}' for k, v in r.items() if k.startswith('lr_'))}  {r['seconds']:.1f}s{star}"
        )


def learning_rates(optimizer, backbones) -> dict:
    """lr_head and lr_<backbone> for every backbone (0 while frozen): the same columns in every phase.

    A backbone's is its top group's rate; layer-wise decay scales the groups below it.
    """
    rates = {f"lr_{name}": 0.0 for name in ["head", *backbones]}
    for group in optimizer.param_groups:
        key = f"lr_{group['name']}"
        rates[key] = max(rates[key], group["lr"])
    return rates
