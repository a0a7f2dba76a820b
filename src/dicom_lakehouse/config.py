"""The one configuration model: YAML files layered over code defaults.

``load_config(paths)`` deep-merges the files in order (later wins), expands
``${VAR}`` / ``${VAR:-default}`` from the environment, and validates. Errors
name the bad key. Secrets are never config values: the config holds only the
*names* of environment variables that carry them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicom_lakehouse.errors import ConfigError
from dicom_lakehouse.lake.layout import is_valid_partition_name

__all__ = [
    "DicomWebConfig",
    "IngestConfig",
    "LakeConfig",
    "MlflowConfig",
    "Settings",
    "SilverConfig",
    "SparkConfig",
    "TablesConfig",
    "load_config",
]

_ENV_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class LakeConfig(_Model):
    """Where the DICOM service's files are."""

    root: str = Field(description="Container root: a local/mounted path or abfss:// URL")
    workspace: str
    service: str
    partitions: tuple[str, ...] | None = Field(
        default=None, description="Partitions to walk; all when unset"
    )
    shard_digits: int = Field(default=1, ge=0, le=3, description="Listing shards per partition")
    driver_listing_limit: int = Field(
        default=10_000,
        ge=0,
        description="A lake of up to this many files is listed on the driver (no Spark job); "
        "0 always lists on executors",
    )
    verify_name_prefix: bool = Field(
        default=False, description="Report flat names whose hash prefix is wrong as foreign"
    )
    storage: dict[str, str] = Field(
        default_factory=dict, description="Backend options (no secrets: env var names only)"
    )
    access: Literal["direct", "hadoop"] = Field(
        default="direct",
        description="direct: the package's own backends (local path, ADLS SDK) with ranged "
        "reads; hadoop: Spark's Hadoop filesystem and the cluster's credentials (any Hadoop "
        "URI: abfss, wasbs, dbfs, file), slower: it reads whole files",
    )
    hadoop_head_bytes: int = Field(
        default=1024 * 1024,
        ge=4096,
        description="access=hadoop: bytes of each file handed to the header parser",
    )
    hadoop_max_file_bytes: int = Field(
        default=1024**3,
        ge=1,
        le=2**31 - 1,
        description="access=hadoop: larger files are quarantined (file_too_large) unread",
    )

    @model_validator(mode="after")
    def _check(self) -> LakeConfig:
        for label, value in (("workspace", self.workspace), ("service", self.service)):
            if not value or "/" in value:
                raise ValueError(f"{label} must be one folder name")
        for name in self.partitions or ():
            if not is_valid_partition_name(name):
                raise ValueError(f"partitions: {name!r} is not a legal partition name")
        return self


class TablesConfig(_Model):
    """Where the Delta tables go: a folder of path-based tables, or a catalog schema."""

    location: str | None = None
    catalog: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    prefix: str = Field(default="", description="Prefix for every table name")

    @model_validator(mode="after")
    def _check(self) -> TablesConfig:
        if self.location is None and self.schema_name is None:
            raise ValueError("set tables.location (a folder) or tables.schema (a catalog schema)")
        if self.catalog is not None and self.schema_name is None:
            raise ValueError("tables.catalog needs tables.schema")
        return self


class SparkConfig(_Model):
    """How to get a session. Without ``master`` an existing session is required
    (Databricks, Fabric, Synapse); with it a local session is started."""

    master: str | None = None
    app_name: str = "dicom-lakehouse"
    conf: dict[str, str] = Field(default_factory=dict)
    extra_packages: tuple[str, ...] = ()


class IngestConfig(_Model):
    """Header extraction and batching."""

    header_bytes: int = Field(default=16384, ge=1024, description="First ranged read, bytes")
    max_header_bytes: int = Field(default=64 * 1024 * 1024, ge=65536)
    defer_size: int = Field(default=4096, ge=256, description="Values above this are skipped")
    bulk_data_threshold: int = Field(default=1024, ge=16)
    io_threads: int = Field(default=8, ge=1, le=128)
    batch_files: int = Field(default=100_000, ge=1, description="Files per Delta commit")
    files_per_task: int = Field(default=1000, ge=1, description="Files per Spark read task")
    lease_minutes: float = Field(
        default=10.0, gt=0, description="Lease that keeps overlapping runs from both writing"
    )
    skip_unchanged_listing: bool = Field(
        default=True,
        description="Skip the bronze comparison when the listing equals the last run's",
    )


class SilverConfig(_Model):
    """Refining bronze into the silver tables."""

    zorder: bool = Field(default=True, description="Z-order by study_date, modality on rebuild")
    compat_tables: bool = Field(
        default=False,
        description="Also write the Azure template's instance/series/study as Delta tables",
    )
    interpreted_max_rows: int = Field(
        default=200_000,
        ge=0,
        description="Refine at most this many new file versions without compiling code",
    )


class DicomWebConfig(_Model):
    """A DICOMweb endpoint (the DICOM service or any standard server)."""

    url: str
    partition: str | None = None
    auth: Literal["none", "basic", "entra"] = "none"
    username: str | None = None
    password_env: str | None = Field(default=None, description="Env var holding the password")
    method: Literal["post", "put"] = "post"
    partition_routes: bool = Field(
        default=False, description="Build /partitions/{partition} retrieve URLs per row"
    )
    # Client tuning; unset keeps the client's defaults (see DicomWebSettings).
    max_batch_instances: int | None = Field(default=None, ge=1, description="Per request")
    max_batch_bytes: int | None = Field(default=None, ge=1, description="Per request")
    concurrency: int | None = Field(default=None, ge=1, description="Requests at a time")
    connect_timeout: float | None = Field(default=None, gt=0, description="Seconds")
    read_timeout: float | None = Field(default=None, gt=0, description="Seconds")
    max_attempts: int | None = Field(default=None, ge=1, description="Retries included")
    backoff_initial: float | None = Field(default=None, ge=0, description="Seconds")
    backoff_max: float | None = Field(default=None, ge=0, description="Seconds")

    def client_settings(self) -> Any:
        """The :class:`~dicom_lakehouse.dicomweb.DicomWebSettings` for this endpoint."""
        from dicom_lakehouse.dicomweb import DicomWebSettings

        tuning = {
            name: getattr(self, name) for name in _CLIENT_TUNING if getattr(self, name) is not None
        }
        return DicomWebSettings(
            url=self.url,
            partition=self.partition,
            auth=self.auth,
            username=self.username,
            password_env=self.password_env,
            method=self.method,
            **tuning,
        )


_CLIENT_TUNING = (
    "max_batch_instances",
    "max_batch_bytes",
    "concurrency",
    "connect_timeout",
    "read_timeout",
    "max_attempts",
    "backoff_initial",
    "backoff_max",
)


class MlflowConfig(_Model):
    tracking_uri: str | None = None
    experiment: str = "dicom-lakehouse"


class Settings(_Model):
    """The whole configuration."""

    lake: LakeConfig
    tables: TablesConfig
    spark: SparkConfig = SparkConfig()
    ingest: IngestConfig = IngestConfig()
    silver: SilverConfig = SilverConfig()
    mlflow: MlflowConfig = MlflowConfig()
    dicomweb: DicomWebConfig | None = None


def _interpolate(value: Any, where: str) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            name, default = match["name"], match["default"]
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set")

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``over`` into ``base``: mappings merge, everything else replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top")
    return data


def load_config(
    paths: Sequence[str | Path] = (), overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Load and validate the settings from YAML files layered in order."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, _read_yaml(Path(path)))
    if overrides:
        merged = deep_merge(merged, overrides)
    return settings_from_mapping(merged)


def settings_from_mapping(data: Mapping[str, Any]) -> Settings:
    """Validate an already merged mapping."""
    try:
        return Settings.model_validate(_interpolate(dict(data), ""))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(part) for part in err["loc"]) or "(top)"
            problems.append(f"{key}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
