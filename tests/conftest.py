"""Shared fixtures: one local Spark session with Delta for the whole run."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.services.orthanc", "tests.services.azurite"]

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Spark's Python workers inherit the environment of the JVM, which starts once per
# session: secrets the executors need in tests are set here, before it starts.
os.environ.setdefault("ORTHANC_TEST_PASSWORD", secrets.token_urlsafe(16))
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """A real local Spark session with the Delta extension (UI off, 2 shuffle partitions)."""
    from dicom_lakehouse.testing import local_spark

    session = local_spark()
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sample_lake_session(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One embedded sample lake for read-only tests."""
    from dicom_lakehouse.testing import build_sample_lake

    return build_sample_lake(tmp_path_factory.mktemp("lake"))


def config_mapping(lake_root: Path, tables: Path, **over: object) -> dict:  # type: ignore[type-arg]
    """The tests' job configuration: the minimal config plus ``over`` layered on top."""
    from dicom_lakehouse.config import deep_merge

    base = {
        "lake": {"root": str(lake_root), "workspace": "ws1", "service": "svc1"},
        "tables": {"location": str(tables)},
        "spark": {"master": "local[2]"},
    }
    return deep_merge(base, over)


def settings_for(lake_root: Path, tables: Path, **over: object):  # type: ignore[no-untyped-def]
    from dicom_lakehouse.config import settings_from_mapping

    return settings_from_mapping(config_mapping(lake_root, tables, **over))


def write_config(path: Path, lake_root: Path, tables: Path, **over: object) -> Path:
    """The same configuration as a YAML file, for CLI runs."""
    import yaml

    path.write_text(yaml.safe_dump(config_mapping(lake_root, tables, **over)))
    return path
