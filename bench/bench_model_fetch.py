"""Model fetch: a 200 MB model package from Azurite through modelship's model store ÷ a plain
azure-storage-blob download of the same bytes. Target >= 0.8 (throughput ratio). Also the cache-hit time.

The package is a trained digits model plus a 200 MB file of random bytes, hashed into model.json with
modelpkg.manifest.write_manifest, published to Azurite with the model store.

- Baseline: ContainerClient.list_blobs + download_blob().readinto(file) for every blob of the version,
  SDK defaults, no verification.
- Result: ModelStore.fetch() with an empty cache: manifest, every file, sha256 of every file, atomic
  rename into place, hardlinks into the cache.
- Cache hit: fetch() of the same version again (hardlinks from the cache, every sha256 checked again).

    python -m bench.bench_model_fetch [--runs 5] [--mb 200]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import os
import pstats
import shutil
import time
from pathlib import Path

from bench import MODEL_NAME
from bench.artifacts import publish_and_promote, train
from bench.components import BenchStack
from bench.dag_runs import use_airflow_home
from bench.logs import log_file, output_to, run_cli
from bench.report import Report, loadavg, median, stopwatch

TOPIC = "model_fetch"
TARGET = ">= 0.8"
VERSION = "big1"
CONTAINER = "bench-fetch"


def big_package(root: Path, megabytes: int) -> Path:
    from modelpkg.manifest import read_manifest, write_manifest

    package = train(root, VERSION)
    manifest = read_manifest(package)
    (package / "extra").mkdir()
    with open(package / "extra" / "weights.bin", "wb") as handle:
        for _ in range(megabytes):
            handle.write(os.urandom(1 << 20))
    core = {"name", "version", "created_at", "framework", "input", "metrics", "files"}
    write_manifest(package, name=manifest["name"], version=manifest["version"], framework=manifest["framework"],
                   input_spec=manifest["input"], metrics=manifest["metrics"],
                   extra={k: v for k, v in manifest.items() if k not in core})  # fmt: skip
    return package


def package_bytes(package: Path) -> int:
    return sum(p.stat().st_size for p in package.rglob("*") if p.is_file())


def plain_download(dest: Path) -> None:
    from azure.storage.blob import ContainerClient

    conn = json.loads(os.environ["AIRFLOW_CONN_MODELSHIP_BLOB"])["extra"]["connection_string"]
    container = ContainerClient.from_connection_string(conn, CONTAINER)
    prefix = f"{MODEL_NAME}/versions/{VERSION}/"
    for blob in container.list_blobs(name_starts_with=prefix):
        target = dest / blob.name[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as handle:
            container.download_blob(blob.name).readinto(handle)


def modelship_fetch(dest: Path, cache: Path) -> dict[str, int]:
    from modelship.model_store import open_store

    store = open_store(cache_dir=cache)
    store.fetch(MODEL_NAME, VERSION, dest)
    return store.stats.as_dict()


def profile_rows(profiler: cProfile.Profile, sort: str, pattern: str, top: int = 10) -> list[dict[str, str]]:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats(sort)
    stats.print_stats(*([pattern] if pattern else []), top)
    rows = []
    for line in out.getvalue().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[0].replace("/", "").isdigit() and parts[1].replace(".", "").isdigit():
            rows.append({"calls": parts[0], "own s": parts[1], "cumulative s": parts[3], "function": parts[5]})
    return rows


def timed(fn, *args) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main(runs: int, megabytes: int) -> Report:
    report = Report(TOPIC, f"Model fetch: {megabytes} MB package from Azurite")
    with BenchStack(TOPIC) as stack:
        stack.apply(stack.env(CONTAINER))
        with output_to(log_file(TOPIC)):
            use_airflow_home(stack.root / "airflow")
            package = big_package(stack.root, megabytes)
        logging.getLogger("modelship").setLevel(logging.WARNING)  # its INFO lines would print in the timed part
        size = package_bytes(package)
        mb = size / 1e6
        with stopwatch() as t:
            publish_and_promote(package)
        report.note(f"package: {mb:.1f} MB in {len(list(package.rglob('*.*')))} files; publish (upload) took "
                    f"{t['s']:.1f} s = {mb / t['s']:.0f} MB/s")  # fmt: skip
        work = stack.root / "fetch"
        plain_s, plain_cpu, ours_s, ours_cpu, hit_s, hit_cpu = [], [], [], [], [], []
        stats = {}
        for i in range(runs + 1):  # run 0 warms Azurite's page cache and connections; not counted
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            order = ["plain", "ours"] if i % 2 else ["ours", "plain"]
            for which in order:
                if which == "plain":
                    s, c, _ = timed(plain_download, work / "plain")
                    if i:
                        plain_s.append(s)
                        plain_cpu.append(c)
                else:
                    s, c, stats = timed(modelship_fetch, work / "ours", work / "cache")
                    hs, hc, hit_stats = timed(modelship_fetch, work / "hit", work / "cache")
                    assert hit_stats["cache_hits"] == 1 and hit_stats["bytes_downloaded"] == 0, hit_stats
                    if i:
                        ours_s.append(s)
                        ours_cpu.append(c)
                        hit_s.append(hs)
                        hit_cpu.append(hc)
            if i:
                print(f"run {i}/{runs}: plain {plain_s[-1]:.2f} s, modelship {ours_s[-1]:.2f} s, "
                      f"cache hit {hit_s[-1]:.2f} s (load {loadavg()})", flush=True)  # fmt: skip
        assert stats["bytes_downloaded"] == size - (package / "model.json").stat().st_size, stats

        report.add(f"fetch {mb:.0f} MB (MB/s)", "plain azure-storage-blob download", [mb / s for s in plain_s],
                   "ModelStore.fetch, empty cache", [mb / s for s in ours_s], "MB/s", higher_is_better=True,
                   target=TARGET)  # fmt: skip
        report.add("cache hit (s)", "plain azure-storage-blob download", plain_s, "ModelStore.fetch, cache hit",
                   hit_s, "s")  # fmt: skip
        report.table("Medians per fetch", [
            {"what": "plain download", "wall s": round(median(plain_s), 2),
             "client CPU s": round(median(plain_cpu), 2)},
            {"what": "ModelStore.fetch, empty cache", "wall s": round(median(ours_s), 2),
             "client CPU s": round(median(ours_cpu), 2)},
            {"what": "ModelStore.fetch, cache hit", "wall s": round(median(hit_s), 2),
             "client CPU s": round(median(hit_cpu), 2)},
        ])  # fmt: skip

        # The profile: where one empty-cache fetch spends its time.
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        profiler = cProfile.Profile()
        profiler.enable()
        modelship_fetch(work / "ours", work / "cache")
        profiler.disable()
        for title, sort, pattern in (
            ("top functions by own time", "tottime", ""),
            ("modelship and the SDK's download code by cumulative time", "cumulative", "modelship|_download|wasb"),
        ):
            rows = profile_rows(profiler, sort, pattern)
            report.table(f"cProfile of one empty-cache ModelStore.fetch: {title}", rows)
    report.note(f"{runs} runs of each, alternating which goes first, after one untimed warm-up round; the cache-hit "
                "fetch follows each empty-cache fetch. Client CPU = this process's user+system time.")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=200)
    args = parser.parse_args()
    run_cli(lambda: main(args.runs, args.mb))
