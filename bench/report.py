"""What a benchmark measures and saves: the machine it ran on, medians and percentiles, a Report of
Measurements (a named baseline, a result, their ratio, the target) saved as JSON under STATE/results;
``bench.run_all`` turns every saved report into bench/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import STATE

RESULTS_DIR = STATE / "results"


# --------------------------------------------------------------------------------------------- machine


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": loadavg(),
    }


# --------------------------------------------------------------------------------------------- numbers


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


@contextlib.contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """`with stopwatch() as t: ...` then t["s"] holds the elapsed seconds."""
    box: dict[str, float] = {}
    started = time.perf_counter()
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - started


# --------------------------------------------------------------------------------------------- reports


@dataclass
class Measurement:
    """One ratio: a named baseline, a result, and result ÷ baseline (or the inverse, for throughput)."""

    name: str
    baseline_label: str
    baseline: float
    result_label: str
    result: float
    unit: str
    ratio: float
    ratio_label: str = "result ÷ baseline"
    target: str = ""  # e.g. "<= 1.15"
    met: bool | None = None
    runs: int = 0
    baseline_runs: list[float] = field(default_factory=list)
    result_runs: list[float] = field(default_factory=list)

    def line(self) -> str:
        verdict = ""
        if self.target:
            verdict = f" (target {self.target}: {'met' if self.met else 'MISSED'})"
        return (
            f"{self.name}: baseline {self.baseline_label} {fmt(self.baseline, self.unit)}, "
            f"result {self.result_label} {fmt(self.result, self.unit)}, ratio {self.ratio:.3f}{verdict}"
        )


def check(ratio: float, target: str) -> bool:
    op, _, value = target.partition(" ")
    return ratio <= float(value) if op == "<=" else ratio >= float(value)


@dataclass
class Report:
    topic: str
    title: str
    measurements: list[Measurement] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine)
    load_end: list[float] = field(default_factory=list)
    seconds: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    def add(
        self,
        name: str,
        baseline_label: str,
        baseline_runs: list[float],
        result_label: str,
        result_runs: list[float],
        unit: str,
        *,
        higher_is_better: bool = False,
        target: str = "",
        met: bool | None = None,
    ) -> Measurement:
        """Medians of both series and their ratio; for throughput (higher_is_better) result ÷ baseline too.

        `target` is checked against the ratio ("<= 1.15", ">= 0.8") unless `met` says otherwise (a target
        that is not a ratio, e.g. seconds over the baseline).
        """
        base, res = median(baseline_runs), median(result_runs)
        ratio = res / base if base else float("nan")
        m = Measurement(
            name=name,
            baseline_label=baseline_label,
            baseline=base,
            result_label=result_label,
            result=res,
            unit=unit,
            ratio=ratio,
            ratio_label="result ÷ baseline (throughput)" if higher_is_better else "result ÷ baseline",
            target=target,
            met=met if met is not None else (check(ratio, target) if target else None),
            runs=min(len(baseline_runs), len(result_runs)),
            baseline_runs=[round(x, 4) for x in baseline_runs],
            result_runs=[round(x, 4) for x in result_runs],
        )
        self.measurements.append(m)
        print(m.line(), flush=True)
        return m

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def table(self, title: str, rows: list[dict[str, Any]]) -> None:
        self.tables[title] = rows

    def save(self) -> Path:
        self.load_end = loadavg()
        self.seconds = round(time.monotonic() - self._started, 1)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.topic}.json"
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        path.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"saved {path} ({self.seconds:.0f} s; load {self.machine['load']} → {self.load_end})", flush=True)
        return path
