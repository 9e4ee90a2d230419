"""Run every benchmark (each in its own interpreter, as `python -m bench.<module>`) and write bench/RESULTS.md.

    python -m bench.run_all                      # all of them (about 2 hours on 2 busy cores)
    python -m bench.run_all --only parse serving # some of them; the others' last saved results are kept
    python -m bench.run_all --render             # only rewrite RESULTS.md from the saved results

Each benchmark saves its report as JSON under .state/bench/results/; RESULTS.md is rendered from those,
plus bench/FINDINGS.md (the hand-written reading of the numbers) when it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import REPO
from bench.report import RESULTS_DIR, fmt, loadavg

HERE = Path(__file__).resolve().parent
# Cheap first, so a broken environment shows up in seconds rather than after the hour-long ones.
# watcher and orchestration measure issue 19's targets (commit → ci running; Airflow's gaps between tasks).
ORDER = ["parse", "model_fetch", "serving", "release", "incremental", "ci_overhead", "watcher", "orchestration"]
MODULES = {topic: f"bench.bench_{topic}" for topic in ORDER}


def wait_for_calm(max_wait: float) -> None:
    """Give a shared machine up to `max_wait` seconds to calm down (1-min load <= 2 x cores) before a benchmark.

    Other people's work is not ours to stop; if the load stays high the benchmark runs anyway and its
    report carries the load it ran under.
    """
    limit = 2 * (os.cpu_count() or 1)
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        print(f"load {loadavg()} > {limit}: waiting (at most {deadline - time.monotonic():.0f} s more)",
              flush=True)  # fmt: skip
        time.sleep(30)


def run(topics: list[str], max_wait: float) -> list[str]:
    failed = []
    for topic in topics:
        wait_for_calm(max_wait)
        print(f"\n=== {MODULES[topic]} (load {loadavg()}) ===", flush=True)
        done = subprocess.run([sys.executable, "-m", MODULES[topic]], cwd=REPO)
        if done.returncode != 0:
            print(f"=== {MODULES[topic]} FAILED (exit {done.returncode}); its last saved result stays", flush=True)
            failed.append(topic)
    return failed


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = round(value, 3)
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["(none)"]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return lines


def missed_by(m: dict[str, Any]) -> str:
    if m["met"] is None:
        return ""
    if m["met"]:
        return "met"
    target = m["target"]
    op, _, value = target.partition(" ")
    try:
        limit = float(value)
    except ValueError:  # not a ratio target (e.g. seconds over a baseline): the notes say by how much
        return "**MISSED**"
    return f"**MISSED** by {abs(m['ratio'] - limit):.3f} ({abs(m['ratio'] / limit - 1):.0%})"


def machine_load(starts: list[float], loads: list[float], cores: int) -> str:
    span = f"{min(loads):.1f}–{max(loads):.1f}"
    if max(starts) <= cores:  # calm when each began; a higher load at its end is its own work (wrk, builds)
        return (f"**Quiet.** The 1-minute load average was at most {max(starts):.1f} when each benchmark began "
                f"and ranged {span} over the starts and ends of all of them, on {cores} cores (each section gives "
                f"its own): what load there was came from the benchmarks themselves.")  # fmt: skip
    return (f"**Shared and loaded.** Other work ran on the same {cores} cores during some benchmarks: the 1-minute "
            f"load average seen at the start and end of the benchmarks ranged {span} (each section gives its "
            f"own, and per-run values where a run is long). Wall-clock numbers from loaded sections are inflated "
            f"and noisy; where a load-independent measure exists (CPU time, bytes, counts, interleaved ratios) "
            f"it is given too.")  # fmt: skip


def render(reports: dict[str, dict[str, Any]]) -> str:
    loads = [r["machine"]["load"][0] for r in reports.values()] + [r["load_end"][0] for r in reports.values()]
    first = reports[next(iter(reports))]["machine"]
    out = [
        "# modelship benchmarks",
        "",
        "Written by `make bench` (`python -m bench.run_all`); each benchmark runs alone as "
        "`python -m bench.bench_<topic>` and prints `baseline …, result …, ratio …`. Numbers are medians "
        "of the runs given in each section. Ratios are result ÷ baseline; for throughput (MB/s, req/s) "
        "that is \"how much of the baseline's rate we reach\".",
        "",
        "## Machine",
        "",
        *markdown_table([{
            "cores": first["cores"], "CPU": first["cpu"], "memory GiB": first["memory_gib"],
            "kernel": first["kernel"], "python": first["python"],
        }]),  # fmt: skip
        "",
        machine_load([r["machine"]["load"][0] for r in reports.values()], loads, first["cores"]),
        "",
        "## Summary",
        "",
    ]
    summary = []
    for report in reports.values():
        for m in report["measurements"]:
            summary.append({
                "benchmark": m["name"], "baseline": f"{m['baseline_label']}: {fmt(m['baseline'], m['unit'])}",
                "result": f"{m['result_label']}: {fmt(m['result'], m['unit'])}",
                "ratio": f"{m['ratio']:.3f}", "target": m["target"], "verdict": missed_by(m), "runs": m["runs"],
            })  # fmt: skip
    out += markdown_table(summary)
    findings = HERE / "FINDINGS.md"
    if findings.exists():
        out += ["", findings.read_text().strip()]
    for topic, report in reports.items():
        m0 = report["machine"]
        out += [
            "",
            f"## {report['title']}",
            "",
            f"`python -m {MODULES.get(topic, topic)}` — ran {m0['date']}, {report['seconds'] / 60:.0f} min; "
            f"load average {m0['load']} at start → {report['load_end']} at end.",
            "",
        ]
        for m in report["measurements"]:
            verdict = f" — target {m['target']}: {missed_by(m)}" if m["target"] else ""
            out.append(
                f"- **{m['name']}**: baseline {m['baseline_label']} {fmt(m['baseline'], m['unit'])}, "
                f"result {m['result_label']} {fmt(m['result'], m['unit'])}, ratio {m['ratio']:.3f} "
                f"({m['ratio_label']}){verdict}. Runs: baseline {m['baseline_runs']}, result {m['result_runs']}."
            )
        for note in report["notes"]:
            out.append(f"- {note}")
        for title, rows in report["tables"].items():
            out += ["", f"**{title}**", "", *markdown_table(rows)]
    return "\n".join(out) + "\n"


def load_reports() -> dict[str, dict[str, Any]]:
    reports = {}
    for topic in ORDER:
        path = RESULTS_DIR / f"{topic}.json"
        if path.exists():
            reports[topic] = json.loads(path.read_text())
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these benchmarks")
    parser.add_argument("--render", action="store_true", help="do not run anything, only rewrite RESULTS.md")
    parser.add_argument("--max-wait", type=float, default=600,
                        help="seconds to wait for a calmer machine before each benchmark (default 600)")  # fmt: skip
    args = parser.parse_args()
    failed = [] if args.render else run(args.only or ORDER, args.max_wait)
    reports = load_reports()
    if not reports:
        print("no saved results to render", file=sys.stderr)
        return 1
    (HERE / "RESULTS.md").write_text(render(reports))
    print(f"wrote {HERE / 'RESULTS.md'} from {', '.join(reports)}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
