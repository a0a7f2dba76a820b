"""Spark job definition main file (Synapse, Fabric): ``dicom_lakehouse_job.py TASK [options]``.

``TASK`` names one of the package's task entry points (``ingest``, ``refine``,
``cohort``, ``writeback``); the options are the CLI's, e.g.
``cohort --config base.yaml --config synapse.yaml --name ct --where "modality = 'CT'"``.
The exit code is the CLI's (0 ok, 1 write-back with failed instances, 2 config or
storage error). The wheel must be installed on the pool / Fabric environment.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import entry_points

from dicom_lakehouse.cli import main

TASK_GROUP = "dicom_lakehouse.tasks"


def _attach_platform_session() -> None:
    """A spark-submit driver starts without a SparkSession; create the platform's one
    (its settings come from the job definition) so the package finds it active."""
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit: leave it be
        return
    from pyspark.sql import SparkSession

    if SparkSession.getActiveSession() is None:
        SparkSession.builder.getOrCreate()


def run(argv: list[str]) -> int:
    """Run ``argv[0]`` (a task name) with the remaining arguments."""
    tasks = sorted(ep.name for ep in entry_points(group=TASK_GROUP))
    if not argv or argv[0] not in tasks:
        print(
            f"usage: dicom_lakehouse_job.py {{{','.join(tasks)}}} --config FILE [options]",
            file=sys.stderr,
        )
        return 2
    _attach_platform_session()
    return main(argv)


if __name__ == "__main__":
    raise SystemExit(run(sys.argv[1:]))
