"""dicom_lakehouse: DICOM data lakes as Delta tables."""

from __future__ import annotations

import logging

from dicom_lakehouse.errors import DicomLakehouseError

__version__ = "0.1.0"
__all__ = ["DicomLakehouseError", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
