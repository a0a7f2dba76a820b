"""Spark job definition main file (Synapse, Fabric): ``ingest_job.py --config FILE``."""

import sys

from dicom_lakehouse.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["ingest", *sys.argv[1:]]))
