"""Ingest benchmark: our bronze ingest vs the naive approach, in one Spark session.

Baseline (what a user would otherwise write): Spark ``binaryFile`` over the lake,
``pydicom.dcmread`` of each whole file and ``to_json_dict``, written to Delta.
Ours: ``run_ingest`` (ranged header reads, fast DICOM JSON, Delta write).
Also: the re-run on the unchanged lake, and listing time for growing file counts.
Ours runs ``--repeats`` times (new tables each time); the median run is reported.

    .venv/bin/python benchmarks/bench_ingest.py [--instances 2000] [--listing 1000,10000,100000]

Prints a table of figures and ratios, then one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dicom_lakehouse.config import settings_from_mapping
from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.lake.backend import BackendSpec, LocalBackend
from dicom_lakehouse.lake.walker import plan_listing
from dicom_lakehouse.testing import local_spark
from dicom_lakehouse.testing.sample_lake import build_ct_lake, build_listing_lake, build_sample_lake


def _settings(lake: Path, tables: Path, access: str = "direct", **ingest: Any):  # type: ignore[no-untyped-def]
    return settings_from_mapping(
        {
            "lake": {"root": str(lake), "workspace": "ws1", "service": "svc1", "access": access},
            "tables": {"location": str(tables)},
            "spark": {"master": "local[2]"},
            "ingest": ingest,
        }
    )


def baseline(spark, lake: Path, tables: Path) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The naive pipeline: whole files through binaryFile, pydicom, to_json_dict."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def parse(content: bytes) -> str | None:
        import io

        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(content))
            ds.pop(0x7FE00010, None)
            return json.dumps(ds.to_json_dict())
        except Exception:  # noqa: BLE001 - the naive job swallows bad files
            return None

    to_json = F.udf(parse, T.StringType())
    started = time.perf_counter()
    df = (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", "*.dcm")
        .option("recursiveFileLookup", "true")
        .load(str(lake))
        .select("path", "length", to_json("content").alias("metadata_json"))
    )
    df.write.format("delta").mode("overwrite").save(str(tables / "baseline"))
    seconds = time.perf_counter() - started
    n = spark.read.format("delta").load(str(tables / "baseline")).count()
    lake_bytes = sum(p.stat().st_size for p in lake.rglob("*.dcm"))
    return {"files": n, "seconds": seconds, "files_per_s": n / seconds, "bytes_read": lake_bytes}


def listing_growth(sizes: list[int], work: Path, spark) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    from dicom_lakehouse.bronze import listing_dataframe

    out = []
    for n in sizes:
        root = work / f"listing-{n}"
        build_listing_lake(root, n)
        backend = LocalBackend(root)
        started = time.perf_counter()
        tasks = plan_listing(backend, "ws1", "svc1", digits=1)
        count = listing_dataframe(
            spark, BackendSpec(str(root)), tasks, workspace="ws1", service="svc1"
        ).count()
        seconds = time.perf_counter() - started
        assert count == n, (count, n)
        out.append({"files": n, "seconds": round(seconds, 3), "files_per_s": round(n / seconds)})
        shutil.rmtree(root)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512, help="rows = columns of each CT image")
    parser.add_argument("--listing", default="1000,10000,100000")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (median kept)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--hadoop",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time one run with lake.access: hadoop (binaryFile, whole files)",
    )
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dl-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spark = local_spark(**{"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"})
    try:
        # warm up the JVM and Python workers on a small lake, so neither side pays it
        build_sample_lake(work / "warm")
        for _ in range(2):  # a first run and a re-run
            run_ingest(_settings(work / "warm", work / "warm-tables"), spark)
        if args.hadoop:
            run_ingest(_settings(work / "warm", work / "warm-hadoop", "hadoop"), spark)
        baseline(spark, work / "warm", work / "warm-tables")

        t = time.perf_counter()
        lake = build_ct_lake(
            work / "ct", n_instances=args.instances, rows=args.size, columns=args.size
        )
        print(
            f"built {len(lake.files)} CT files in {time.perf_counter() - t:.1f}s", file=sys.stderr
        )
        os.sync()  # the lake's 1 GB is flushed before anything is timed
        base = baseline(spark, work / "ct", work / "tables")
        # ours is a few seconds long: each repeat lands the lake into new tables and
        # re-runs on it; the median repeat (by first-run time) is reported
        pairs = []
        for repeat in range(args.repeats):
            settings = _settings(work / "ct", work / f"tables-{repeat}")
            pairs.append((run_ingest(settings, spark), run_ingest(settings, spark)))
            os.sync()
        pairs.sort(key=lambda pair: pair[0].seconds)
        first, rerun = pairs[len(pairs) // 2]
        hadoop = None
        if args.hadoop:
            hadoop = run_ingest(_settings(work / "ct", work / "tables-hadoop", "hadoop"), spark)
        growth = listing_growth([int(n) for n in args.listing.split(",") if n], work, spark)
    finally:
        spark.stop()
    ours_fps = first.files_ingested / first.seconds
    figures = {
        "instances": args.instances,
        "lake_bytes": first.lake_bytes,
        "baseline_files_per_s": round(base["files_per_s"], 1),
        "baseline_seconds": round(base["seconds"], 2),
        "ours_files_per_s": round(ours_fps, 1),
        "ours_seconds": first.seconds,
        "ours_seconds_all": sorted(pair[0].seconds for pair in pairs),
        "rerun_seconds_all": [pair[1].seconds for pair in pairs],
        "throughput_ratio": round(ours_fps / base["files_per_s"], 2),
        "ours_bytes_read": first.bytes_read,
        "bytes_read_fraction": round(first.bytes_read / first.lake_bytes, 4),
        "baseline_bytes_read_fraction": 1.0,
        "rerun_seconds": rerun.seconds,
        "rerun_fraction": round(rerun.seconds / first.seconds, 3),
        "rerun_files_unchanged": rerun.files_unchanged,
        "ours_phase_seconds": first.phase_seconds,
        "rerun_phase_seconds": rerun.phase_seconds,
        "listing": growth,
    }
    if hadoop is not None:
        hadoop_fps = hadoop.files_ingested / hadoop.seconds
        figures |= {
            "hadoop_files_per_s": round(hadoop_fps, 1),
            "hadoop_seconds": hadoop.seconds,
            "hadoop_ratio_to_baseline": round(hadoop_fps / base["files_per_s"], 2),
            "hadoop_bytes_read_fraction": round(hadoop.bytes_read / hadoop.lake_bytes, 4),
            "hadoop_phase_seconds": hadoop.phase_seconds,
        }
    print(f"{'figure':28} value")
    for key in (
        "baseline_files_per_s",
        "ours_files_per_s",
        "throughput_ratio",
        "bytes_read_fraction",
        "ours_seconds",
        "rerun_seconds",
        "rerun_fraction",
        "hadoop_files_per_s",
        "hadoop_ratio_to_baseline",
    ):
        if key in figures:
            print(f"{key:28} {figures[key]}")
    for row in growth:
        print(f"{'listing ' + str(row['files']):28} {row['seconds']}s ({row['files_per_s']}/s)")
    print(json.dumps(figures))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
