"""Spark job definition main file (Synapse, Fabric): ``ingest_job.py --config FILE``.

Kept for existing definitions; new ones use ``dicom_lakehouse_job.py ingest ...``.
"""

import os
import sys

from dicom_lakehouse.cli import main

if __name__ == "__main__":
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # a spark-submit driver: attach its session
        from pyspark.sql import SparkSession

        SparkSession.builder.getOrCreate()
    raise SystemExit(main(["ingest", *sys.argv[1:]]))
