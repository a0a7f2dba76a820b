"""Column specs for every table, shared by the Arrow workers and the Spark schemas.

Pure Python (no pyspark import), so executors' Arrow code and the tests
without Spark use the same names and types as the Delta tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

__all__ = [
    "BRONZE_INSTANCE_COLUMNS",
    "BRONZE_QUARANTINE_COLUMNS",
    "COHORT_COLUMNS",
    "COHORT_DEFINITION_COLUMNS",
    "HEADER_RESULT_COLUMNS",
    "INGEST_RUNS_COLUMNS",
    "KEY_TAGS",
    "LAKE_FILES_COLUMNS",
    "LEDGER_COLUMNS",
    "LISTING_COLUMNS",
    "Column",
    "arrow_schema",
]

Kind = Literal["string", "long", "int", "double", "bool", "timestamp"]

_ARROW: dict[str, pa.DataType] = {
    "string": pa.string(),
    "long": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: Kind
    doc: str = ""


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    return pa.schema([pa.field(c.name, _ARROW[c.kind]) for c in columns])


# Typed key columns pulled from the header: (column, DICOM JSON key, kind).
# Text is kept as written (dates as DICOM DA strings): silver does the typing.
KEY_TAGS: tuple[tuple[str, str, Kind], ...] = (
    ("study_instance_uid", "0020000D", "string"),
    ("series_instance_uid", "0020000E", "string"),
    ("sop_instance_uid", "00080018", "string"),
    ("sop_class_uid", "00080016", "string"),
    ("modality", "00080060", "string"),
    ("patient_id", "00100020", "string"),
    ("issuer_of_patient_id", "00100021", "string"),
    ("patient_name", "00100010", "string"),
    ("patient_sex", "00100040", "string"),
    ("patient_birth_date", "00100030", "string"),
    ("patient_age", "00101010", "string"),
    ("study_date", "00080020", "string"),
    ("study_time", "00080030", "string"),
    ("study_description", "00081030", "string"),
    ("study_id", "00200010", "string"),
    ("accession_number", "00080050", "string"),
    ("series_number", "00200011", "long"),
    ("series_date", "00080021", "string"),
    ("series_description", "0008103E", "string"),
    ("body_part_examined", "00180015", "string"),
    ("manufacturer", "00080070", "string"),
    ("manufacturer_model_name", "00081090", "string"),
    ("instance_number", "00200013", "long"),
    ("rows", "00280010", "int"),
    ("columns", "00280011", "int"),
    ("number_of_frames", "00280008", "int"),
    ("specific_character_set", "00080005", "string"),
)

_FILE = (
    Column("file_path", "string", "Path relative to the container root (AHDS/...)"),
    Column("partition_name", "string", "Data partition (Microsoft.Default without partitions)"),
    Column("watermark", "long", "The service's version number from the file name"),
    Column("layout", "string", "flat or legacy"),
)
_VERSION = (
    Column("file_size", "long"),
    Column("last_modified", "timestamp"),
    Column("etag", "string"),
)

LISTING_COLUMNS: tuple[Column, ...] = (
    *_FILE,
    *_VERSION,
    Column("kind", "string", "instance, ignored or foreign"),
    Column("reason", "string", "Why a file is ignored or foreign"),
    Column("partition_folder", "string", "First folder below the service ('' at its root)"),
    Column("access_tier", "string"),
)

_KEYS = tuple(Column(name, kind) for name, _, kind in KEY_TAGS)
_HEADER = (
    Column("transfer_syntax_uid", "string"),
    Column("implementation_class_uid", "string"),
    Column("is_updated_version", "bool", "File meta marks a bulk-update rewrite"),
)
_PAYLOAD = (
    Column("header_bytes_read", "long"),
    Column("metadata_json", "string", "DICOM JSON model (PS3.18 F.2), bulk data as URIs"),
    Column("file_meta_json", "string", "Group 0002 in the DICOM JSON model"),
)

HEADER_RESULT_COLUMNS: tuple[Column, ...] = (
    *_FILE,
    *_VERSION,
    Column("status", "string", "ingested or quarantined"),
    Column("reason", "string"),
    Column("detail", "string"),
    *_KEYS,
    *_HEADER,
    *_PAYLOAD,
)

_RUN = (Column("ingested_at", "timestamp"), Column("run_id", "string"))

BRONZE_INSTANCE_COLUMNS: tuple[Column, ...] = (
    *_FILE,
    *_KEYS,
    *_HEADER,
    *_VERSION,
    *_PAYLOAD,
    *_RUN,
)

BRONZE_QUARANTINE_COLUMNS: tuple[Column, ...] = (
    *_FILE,
    Column("reason", "string", "Stable code: empty_file, not_dicom, truncated_header, ..."),
    Column("detail", "string", "What went wrong, without header values"),
    *_VERSION,
    Column("header_bytes_read", "long"),
    *_RUN,
)

LAKE_FILES_COLUMNS: tuple[Column, ...] = (
    Column("workspace", "string"),
    Column("service", "string"),
    *LISTING_COLUMNS,
    Column("listed_at", "timestamp"),
    Column("run_id", "string"),
)

INGEST_RUNS_COLUMNS: tuple[Column, ...] = (
    Column("run_id", "string"),
    Column("workspace", "string"),
    Column("service", "string"),
    Column("scope", "string", "The lake_files predicate the run covered"),
    Column("started_at", "timestamp"),
    Column("finished_at", "timestamp"),
    Column("listing_files", "long"),
    Column("listing_fingerprint", "string", "Sum of XXH64 of every listed file's version"),
    Column("retryable_pending", "long", "Files quarantined for a reason worth retrying"),
    Column("summary_json", "string", "The run's JSON summary"),
)

COHORT_COLUMNS: tuple[Column, ...] = (
    Column("cohort_name", "string"),
    Column("cohort_version", "int"),
    Column("partition_name", "string"),
    Column("study_instance_uid", "string"),
    Column("series_instance_uid", "string"),
    Column("sop_instance_uid", "string"),
    Column("sop_class_uid", "string"),
    Column("modality", "string"),
    Column("file_path", "string"),
    Column("watermark", "long"),
    Column("retrieve_url", "string", "WADO-RS URL when a DICOMweb endpoint is configured"),
    Column("created_at", "timestamp"),
)

COHORT_DEFINITION_COLUMNS: tuple[Column, ...] = (
    Column("cohort_name", "string"),
    Column("cohort_version", "int"),
    Column("level", "string", "study, series or instance"),
    Column("predicate", "string", "The SQL predicate (may name patients: not sent to MLflow)"),
    Column("predicate_sha256", "string"),
    Column("studies", "long"),
    Column("series", "long"),
    Column("instances", "long"),
    Column("silver_version", "long", "Delta version of silver_instances the cohort read"),
    Column("created_at", "timestamp"),
)

LEDGER_COLUMNS: tuple[Column, ...] = (
    Column("derivation_key", "string", "SHA-256 of partition, source series, deriver, versions"),
    Column("cohort_name", "string"),
    Column("cohort_version", "int"),
    Column("partition_name", "string"),
    Column("source_study_uid", "string"),
    Column("source_series_uid", "string"),
    Column("source_sop_uids", "string", "Comma-separated, sorted"),
    Column("derived_sop_uid", "string"),
    Column("derived_series_uid", "string"),
    Column("deriver", "string"),
    Column("deriver_version", "string"),
    Column("model_uri", "string"),
    Column("model_version", "string"),
    Column("status", "string", "stored, already_stored, failed or retryable"),
    Column("http_status", "int"),
    Column("failure_reason", "string", "STOW failure code or derive/transport reason"),
    Column("attempts", "int"),
    Column("source_bytes_read", "long"),
    Column("sources_read", "int", "Source instances whose bytes were read"),
    Column("mlflow_run_id", "string"),
    Column("run_id", "string"),
    Column("updated_at", "timestamp"),
)
