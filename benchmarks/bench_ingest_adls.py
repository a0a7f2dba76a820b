"""ADLS ingest benchmark: the same lake ingested from local disk and from Azurite.

Builds a sample lake of ``--instances`` small instances (plus the sample lake's odd
files), ingests it from local disk, uploads every file to Azurite and ingests it again
through the ADLS backend (blob listing, ranged header reads) behind a Toxiproxy proxy
that adds ``--latency-ms`` to every response. Both ingests run in one Spark session,
after a warm-up of each path, into fresh tables; the figure is Azurite's files/s as a
fraction of local disk's.

    .venv/bin/python benchmarks/bench_ingest_adls.py [--instances 10000] [--latency-ms 20]

Needs Azurite (scripts/install-azurite.sh) and toxiproxy-server
(scripts/install-toxiproxy.sh). Prints the figures, then one JSON line.
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

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.services.azurite (the service runners)

from tests.services.azurite import (  # noqa: E402
    ProxiedAzurite,
    run_azurite,
    run_toxiproxy,
    seed_blobs,
)

from dicom_lakehouse.config import settings_from_mapping  # noqa: E402
from dicom_lakehouse.ingest import IngestSummary, run_ingest  # noqa: E402
from dicom_lakehouse.testing import build_sample_lake, local_spark  # noqa: E402


def _settings(root: str, tables: Path, storage: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    lake: dict[str, Any] = {"root": root, "workspace": "ws1", "service": "svc1"}
    if storage:
        lake["storage"] = storage
    return settings_from_mapping(
        {"lake": lake, "tables": {"location": str(tables)}, "spark": {"master": "local[2]"}}
    )


def _ingest(settings, spark) -> IngestSummary:  # type: ignore[no-untyped-def]
    summary = run_ingest(settings, spark)
    assert summary.accounted == summary.files_listed, summary.as_dict()
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dl-bench-adls-ingest-"))
    per_study = 2 * 5
    lake = build_sample_lake(
        work / "lake",
        studies_per_partition=max(1, args.instances // (2 * per_study)),
        series_per_study=2,
        instances_per_series=5,
        image_size=16,
    )
    warm = build_sample_lake(work / "warm")
    figures: dict[str, Any] = {"files": len(lake.files), "latency_ms": args.latency_ms}
    with run_azurite(work / "azurite") as azurite, run_toxiproxy(work / "toxiproxy") as toxi:
        service = azurite.service_client()
        started = time.perf_counter()
        for name, source in (("lake", lake), ("warm", warm)):
            container = service.create_container(name)
            paths = [f.path for f in source.files]
            seed_blobs(container, paths, threads=16, source_root=source.root)
        figures["upload_s"] = round(time.perf_counter() - started, 1)
        proxy_name, port = toxi.proxy_to(azurite.port)
        proxy = ProxiedAzurite(server=toxi, azurite=azurite, name=proxy_name, port=port)
        # set before Spark starts: its Python workers inherit it
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = proxy.connection_string
        if args.latency_ms:
            proxy.add_toxic("latency", latency=args.latency_ms)
        spark = local_spark(**{"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"})
        blob = {"listing": "blob"}
        try:
            _ingest(_settings(str(warm.root), work / "warm-local"), spark)
            _ingest(_settings(azurite.root("warm"), work / "warm-remote", blob), spark)
            local = _ingest(_settings(str(lake.root), work / "t-local"), spark)
            remote = _ingest(_settings(azurite.root("lake"), work / "t-remote", blob), spark)
        finally:
            spark.stop()
            service.close()
    for key in ("files_listed", "files_ingested", "files_quarantined", "bytes_read"):
        if getattr(local, key) != getattr(remote, key):
            raise SystemExit(f"local and Azurite ingests differ in {key}")
    local_fps = local.files_listed / local.seconds
    remote_fps = remote.files_listed / remote.seconds
    figures.update(
        {
            "local_seconds": local.seconds,
            "local_files_per_s": round(local_fps, 1),
            "azurite_seconds": remote.seconds,
            "azurite_files_per_s": round(remote_fps, 1),
            "azurite_vs_local": round(remote_fps / local_fps, 3),
            "local_phase_seconds": local.phase_seconds,
            "azurite_phase_seconds": remote.phase_seconds,
        }
    )
    for key, value in figures.items():
        print(f"{key:24} {value}")
    print(json.dumps(figures))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
