"""DICOMweb: a STOW-RS store behind :class:`DicomStore`, with QIDO-RS/WADO-RS look-ups.

Build a :class:`DicomWebClient` from :class:`DicomWebSettings` (plain values, no secret)
where it is used; see :mod:`dicom_lakehouse.dicomweb.client` for the behaviour and
:mod:`dicom_lakehouse.dicomweb.response` for how answers become per-instance results.
"""

from __future__ import annotations

from dicom_lakehouse.dicomweb._stow import EncodedInstance, encode_dataset
from dicom_lakehouse.dicomweb.auth import DICOM_SCOPE, BasicAuth, EntraTokenAuth
from dicom_lakehouse.dicomweb.client import (
    RETRY_STATUSES,
    DicomStore,
    DicomWebClient,
    DicomWebSettings,
    azure_dicom_base_url,
    azure_dicom_url,
    studies_url,
)
from dicom_lakehouse.dicomweb.response import (
    FailureReason,
    StoreResponse,
    StoreResult,
    StoreStatus,
    batch_results,
    parse_store_response,
)

__all__ = [
    "DICOM_SCOPE",
    "RETRY_STATUSES",
    "BasicAuth",
    "DicomStore",
    "DicomWebClient",
    "DicomWebSettings",
    "EncodedInstance",
    "EntraTokenAuth",
    "FailureReason",
    "StoreResponse",
    "StoreResult",
    "StoreStatus",
    "azure_dicom_base_url",
    "azure_dicom_url",
    "batch_results",
    "encode_dataset",
    "parse_store_response",
    "studies_url",
]
