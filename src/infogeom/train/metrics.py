"""Metric records: ``metrics.jsonl`` (one JSON object per line) and, optionally, TensorBoard scalars."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a ``metrics.jsonl`` file (a torn last line from a crash is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsLogger:
    """Appends records to ``out_dir/metrics.jsonl``; mirrors numeric values to TensorBoard when enabled.

    ``keep_until``: on resume, records after that step (logged after the checkpoint by the interrupted run)
    are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, out_dir: Path, tensorboard: bool, keep_until: int | None = None):
        self.path = out_dir / METRICS_FILE
        if keep_until is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        self.file = open(self.path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.tb = SummaryWriter(str(out_dir / "tb"),
                                        purge_step=None if keep_until is None else keep_until + 1)

    @property
    def tensorboard_dir(self) -> Path | None:
        return Path(self.tb.log_dir) if self.tb is not None else None

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            prefix = "eval" if "val_loss" in record else "train"
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
