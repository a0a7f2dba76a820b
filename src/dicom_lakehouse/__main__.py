"""``python -m dicom_lakehouse ...`` (Synapse and Fabric Spark job definitions)."""

from dicom_lakehouse.cli import main

raise SystemExit(main())
