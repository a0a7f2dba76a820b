"""Helpers for testing cohort and pipeline code locally: a Delta-enabled local
Spark session and realistic sample lakes.

Use them in your own tests::

    from dicom_lakehouse.testing import build_sample_lake, local_spark
"""

from dicom_lakehouse.testing.sample_lake import SampleFile, SampleLake, build_sample_lake
from dicom_lakehouse.testing.spark import local_spark

__all__ = ["SampleFile", "SampleLake", "build_sample_lake", "local_spark"]
