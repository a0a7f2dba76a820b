"""Silver benchmark: cohort query on silver vs on bronze's metadata JSON, and an
incremental refine after adding 1% new instances vs a full rebuild (timed in both
expression modes, compiled and interpreted), and a refine that finds nothing new.

    .venv/bin/python benchmarks/bench_silver.py [--instances 100000]

Prints the figures and ratios, then one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom

from dicom_lakehouse.config import settings_from_mapping
from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.lake.layout import instance_file_name
from dicom_lakehouse.refine import run_refine
from dicom_lakehouse.testing import SampleLake, build_sample_lake, local_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SILVER_QUERY = (
    "modality = 'CT' AND patient_sex = 'F' AND patient_age_years BETWEEN 50 AND 70 "
    "AND study_date BETWEEN DATE'2020-01-01' AND DATE'2026-12-31' AND slice_thickness <= 1.25"
)
# The same question asked of bronze: every value dug out of the metadata JSON.
BRONZE_QUERY = """
    get_json_object(metadata_json, '$.00080060.Value[0]') = 'CT'
    AND get_json_object(metadata_json, '$.00100040.Value[0]') = 'F'
    AND CAST(substr(get_json_object(metadata_json, '$.00101010.Value[0]'), 1, 3) AS INT)
        BETWEEN 50 AND 70
    AND to_date(get_json_object(metadata_json, '$.00080020.Value[0]'), 'yyyyMMdd')
        BETWEEN DATE'2020-01-01' AND DATE'2026-12-31'
    AND CAST(get_json_object(metadata_json, '$.00180050.Value[0]') AS DOUBLE) <= 1.25
"""


def _best(run, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    run()  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def _add_instances(lake_root: Path, sources: list[Path], first_watermark: int) -> int:
    """Copy ``sources`` as new instances of new studies (new UIDs, new watermarks)."""
    for offset, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        study = pydicom.uid.generate_uid(entropy_srcs=[str(ds.StudyInstanceUID), "bench"])
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[study, "series"])
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(source), "sop"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        target = source.parent / instance_file_name(first_watermark + offset)
        target.write_bytes(buffer.getvalue())
    return len(sources)


def build_bench_lake(work: Path, instances: int) -> tuple[SampleLake, dict[str, Any]]:
    """The generated lake of about ``instances`` instances (10 per study, two
    partitions) under ``work``, and the config mapping that points at it."""
    per_study = 2 * 5  # series_per_study * instances_per_series
    studies = max(1, instances // (2 * per_study))
    started = time.perf_counter()
    lake = build_sample_lake(
        work / "lake",
        studies_per_partition=studies,
        series_per_study=2,
        instances_per_series=5,
        image_size=16,
        include_testdata=False,
        include_broken=False,
        include_update=False,
        include_legacy=False,
    )
    print(f"built {len(lake.files)} files in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    config = {
        "lake": {"root": str(work / "lake"), "workspace": "ws1", "service": "svc1"},
        "tables": {"location": str(work / "tables")},
        "spark": {"master": "local[2]"},
    }
    return lake, config


def bench_spark() -> SparkSession:
    """The benchmarks' local session."""
    return local_spark(**{"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "6g"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dl-bench-silver-"))
    lake, config = build_bench_lake(work, args.instances)
    settings = settings_from_mapping({**config, "silver": {"zorder": True}})
    spark = bench_spark()
    try:
        ingest = run_ingest(settings, spark)
        # the full rebuild again in the mode the defaults did not pick for this many
        # bronze rows (compiled code vs interpreted expressions, interpreted_max_rows)
        interpreted = ingest.files_ingested <= settings.silver.interpreted_max_rows
        other = settings_from_mapping(
            {
                **config,
                "silver": {"zorder": True, "interpreted_max_rows": 0 if interpreted else 10**12},
            }
        )
        run_refine(settings, spark)  # the first refine builds silver
        full = run_refine(settings, spark, full=True)
        full_other = run_refine(other, spark, full=True)
        tables = DeltaTables(spark, settings.tables)
        silver_df = tables.read("silver_instances")
        bronze_df = tables.read("bronze_instances")
        n_silver = silver_df.where(SILVER_QUERY).count()
        n_bronze = bronze_df.where(BRONZE_QUERY).count()
        silver_s = _best(lambda: silver_df.where(SILVER_QUERY).count())
        bronze_s = _best(lambda: bronze_df.where(BRONZE_QUERY).count())
        # 1% new instances, in new studies, then an incremental refine
        sources = [lake.root / f.path for f in lake.instances[: max(1, len(lake.instances) // 100)]]
        top = max(f.watermark or 0 for f in lake.files)
        added = _add_instances(work / "lake", sources, top + 1)
        run_ingest(settings, spark)
        incremental = run_refine(settings, spark)
        # a scheduled refine that finds nothing new
        noop = run_refine(settings, spark)
    finally:
        spark.stop()
    figures = {
        "instances": ingest.files_ingested,
        "cohort_matches": n_silver,
        "cohort_matches_bronze": n_bronze,
        "silver_query_seconds": round(silver_s, 3),
        "bronze_query_seconds": round(bronze_s, 3),
        "query_speedup": round(bronze_s / silver_s, 1),
        "full_rebuild_seconds": full.seconds,
        "full_rebuild_mode": "interpreted" if interpreted else "compiled",
        "full_rebuild_other_mode_seconds": full_other.seconds,
        "added_instances": added,
        "incremental_seconds": incremental.seconds,
        "incremental_fraction": round(incremental.seconds / full.seconds, 3),
        "incremental_fraction_of_faster_full": round(
            incremental.seconds / min(full.seconds, full_other.seconds), 3
        ),
        "incremental_studies_recomputed": incremental.studies_recomputed,
        "noop_refine_seconds": noop.seconds,
        "full_phase_seconds": full.phase_seconds,
        "incremental_phase_seconds": incremental.phase_seconds,
        "noop_phase_seconds": noop.phase_seconds,
    }
    for key, value in figures.items():
        print(f"{key:32} {value}")
    print(json.dumps(figures))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if n_silver == n_bronze else 1


if __name__ == "__main__":
    raise SystemExit(main())
