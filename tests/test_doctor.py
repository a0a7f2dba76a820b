"""``doctor.run_checks`` on a real local Spark session, the sample lake and Orthanc."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dicom_lakehouse.config import settings_from_mapping
from dicom_lakehouse.doctor import (
    Check,
    matching_platform_lines,
    render,
    run_checks,
    version_checks,
)
from tests.conftest import settings_for
from tests.services.orthanc import free_port

FAKE_PASSWORD = "fAkE-doctor-pw-93e1"  # a made-up secret: never in any detail


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# -- the version matrix (no session) --------------------------------------------------


@pytest.mark.parametrize(
    ("spark", "delta", "lines"),
    [
        ("3.5.0", "3.2.0", ["Databricks 15.4 LTS", "Fabric Runtime 1.3", "Synapse Spark 3.5"]),
        ("3.5.2", "3.3.1", ["Databricks 16.4 LTS"]),
        ("4.0.0", "4.0.0", ["Databricks 17.3 LTS"]),
        ("4.1.1", "4.2.0", ["Fabric Runtime 2.0"]),
        ("4.1.0", "4.1.0", []),  # supported, but no listed runtime pairs exactly these
        ("3.4.1", "2.4.0", []),
    ],
)
def test_platform_lines_follow_the_matrix(spark: str, delta: str, lines: list[str]) -> None:
    assert matching_platform_lines(spark, delta) == lines


@pytest.mark.parametrize(
    ("spark", "delta", "spark_ok", "delta_ok", "words"),
    [
        ("3.5.9", "3.3.3", True, True, "Databricks 16.4 LTS"),
        ("3.5.1", "3.2.0", True, True, "Synapse Spark 3.5"),
        ("3.5.1", "3.3.0", True, False, "3.5.3"),  # delta-spark 3.3 needs pyspark >= 3.5.3
        ("3.5.4", "4.0.0", True, False, "does not pair"),
        ("4.0.0", "3.3.0", True, False, "does not pair"),
        ("4.1.1", "4.2.0", True, True, "Fabric Runtime 2.0"),
        ("4.3.0", "4.4.0", False, False, "not a supported line"),
        ("3.4.1", "2.4.0", False, False, "not a supported line"),
        ("3.5.3", None, True, False, "unknown"),
    ],
)
def test_version_checks(
    spark: str, delta: str | None, spark_ok: bool, delta_ok: bool, words: str
) -> None:
    spark_check, delta_check = version_checks(spark, delta)
    assert (spark_check.ok, delta_check.ok) == (spark_ok, delta_ok)
    failed = next((c for c in (spark_check, delta_check) if not c.ok), delta_check)
    assert words in failed.detail
    for check in (spark_check, delta_check):
        assert check.ok or check.fix, check  # every FAIL carries a remedy


def test_render_gives_one_line_per_check_with_the_fix_on_failures() -> None:
    text = render(
        [
            Check("spark", True, "Spark 3.5.9"),
            Check("storage.list", False, "cannot list", "check lake.root"),
        ]
    )
    ok, fail = text.splitlines()
    assert ok.split() == ["ok", "spark", "Spark", "3.5.9"]
    assert fail.startswith("FAIL  storage.list  cannot list")
    assert fail.endswith("(fix: check lake.root)")
    assert "fix" not in ok


# -- on the local sample lake ----------------------------------------------------------


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from dicom_lakehouse.testing import build_sample_lake

    root = tmp_path_factory.mktemp("doctor")
    return build_sample_lake(root / "lake"), root


@pytest.mark.spark
def test_all_checks_pass_on_the_local_sample_lake(spark: Any, lake: Any) -> None:
    sample, root = lake
    tables = root / "tables-new"  # does not exist yet: the first ingest creates it
    checks = run_checks(settings_for(sample.root, tables), spark)
    found = _by_name(checks)
    assert list(found) == ["spark", "delta", "storage.list", "storage.read", "tables"]
    assert all(c.ok for c in checks), render(checks)
    assert f"Spark {spark.version}" in found["spark"].detail
    # pyspark 3.5.x + Delta 3.3 is the Databricks 16.4 line; 4.0 + 4.0 is 17.3
    line = "17.3 LTS" if spark.version.startswith("4.") else "16.4 LTS"
    assert f"matches Databricks {line}" in found["delta"].detail
    assert "AHDS/ws1/dicom/svc1" in found["storage.list"].detail
    assert "(DICM)" in found["storage.read"].detail
    assert "scratch file" in found["tables"].detail
    assert tables.is_dir() and not list(tables.iterdir())  # the scratch file is gone


@pytest.mark.spark
def test_a_wrong_lake_root_fails_with_a_fix(spark: Any, lake: Any) -> None:
    _, root = lake
    checks = _by_name(run_checks(settings_for(root / "no-such-lake", root / "tables"), spark))
    listing = checks["storage.list"]
    assert not listing.ok
    assert "AHDS/ws1/dicom/svc1" in listing.detail and "not found" in listing.detail
    assert "lake.root" in listing.fix
    assert not checks["storage.read"].ok and checks["storage.read"].fix
    assert checks["spark"].ok and checks["tables"].ok  # the others still run


@pytest.mark.spark
def test_hadoop_access_is_checked_through_hadoop(spark: Any, lake: Any) -> None:
    sample, root = lake
    good = run_checks(settings_for(sample.root, root / "t", lake={"access": "hadoop"}), spark)
    found = _by_name(good)
    assert found["storage.list"].ok and "through Hadoop" in found["storage.list"].detail
    assert found["storage.read"].ok and "DICM" in found["storage.read"].detail
    bad = _by_name(
        run_checks(settings_for(root / "nowhere", root / "t", lake={"access": "hadoop"}), spark)
    )
    assert not bad["storage.list"].ok and "does not exist" in bad["storage.list"].detail


@pytest.mark.spark
def test_an_unwritable_tables_location_fails(spark: Any, lake: Any) -> None:
    sample, root = lake
    blocker = root / "a-file"
    blocker.write_text("not a folder")
    check = _by_name(run_checks(settings_for(sample.root, blocker / "tables"), spark))["tables"]
    assert not check.ok and "tables.location" in check.fix


@pytest.mark.spark
def test_catalog_tables_need_an_existing_schema(spark: Any, lake: Any) -> None:
    sample, _ = lake
    spark.sql("CREATE DATABASE IF NOT EXISTS doctor_present")

    def catalog(**tables: str) -> Any:
        lake_config = {"root": str(sample.root), "workspace": "ws1", "service": "svc1"}
        return settings_from_mapping({"lake": lake_config, "tables": tables})

    present = catalog(schema="doctor_present")
    missing = catalog(catalog="spark_catalog", schema="doctor_absent")
    try:
        ok = _by_name(run_checks(present, spark))["tables"]
        fail = _by_name(run_checks(missing, spark))["tables"]
    finally:
        spark.sql("DROP DATABASE IF EXISTS doctor_present")
    assert ok.ok and "doctor_present exists" in ok.detail
    assert not fail.ok and "spark_catalog.doctor_absent does not exist" in fail.detail
    assert "CREATE SCHEMA" in fail.fix


# -- DICOMweb and MLflow ---------------------------------------------------------------


@pytest.mark.spark
def test_an_unreachable_dicomweb_fails_without_the_secret(
    spark: Any, lake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample, root = lake
    monkeypatch.setenv("DOCTOR_TEST_PASSWORD", FAKE_PASSWORD)
    port = free_port()  # nothing listens there
    settings = settings_for(
        sample.root,
        root / "tables",
        dicomweb={
            "url": f"http://127.0.0.1:{port}/dicom-web/",
            "auth": "basic",
            "username": "doctor",
            "password_env": "DOCTOR_TEST_PASSWORD",
        },
    )
    checks = run_checks(settings, spark)
    web = _by_name(checks)["dicomweb"]
    assert not web.ok
    assert f"127.0.0.1:{port}" in web.detail and web.fix
    text = render(checks) + repr(checks)
    assert FAKE_PASSWORD not in text
    assert all(c.ok for c in checks if c.name != "dicomweb"), render(checks)


@pytest.mark.spark
def test_dicomweb_reachable_with_the_right_password_and_refused_with_a_wrong_one(
    spark: Any, lake: Any, orthanc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample, root = lake
    web = orthanc.settings()
    config = {
        "url": web.url,
        "auth": "basic",
        "username": web.username,
        "password_env": "DOCTOR_TEST_PASSWORD",
    }
    settings = settings_for(sample.root, root / "tables", dicomweb=config)
    monkeypatch.setenv("DOCTOR_TEST_PASSWORD", orthanc.password)
    good = run_checks(settings, spark)
    assert _by_name(good)["dicomweb"].ok, render(good)
    assert "HTTP 200" in _by_name(good)["dicomweb"].detail
    monkeypatch.setenv("DOCTOR_TEST_PASSWORD", FAKE_PASSWORD)
    bad = run_checks(settings, spark)
    refused = _by_name(bad)["dicomweb"]
    assert not refused.ok and "HTTP 401" in refused.detail
    assert "DOCTOR_TEST_PASSWORD" in refused.fix  # names the variable, never its value
    for text in (render(good), render(bad)):
        assert orthanc.password not in text and FAKE_PASSWORD not in text
    monkeypatch.delenv("DOCTOR_TEST_PASSWORD")
    unset = _by_name(run_checks(settings, spark))["dicomweb"]
    assert not unset.ok and "DOCTOR_TEST_PASSWORD" in unset.detail


@pytest.mark.spark
def test_mlflow_store_checked_when_configured(spark: Any, lake: Any, tmp_path: Path) -> None:
    sample, root = lake
    store = settings_for(
        sample.root, root / "tables", mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    )
    ok = _by_name(run_checks(store, spark))["mlflow"]
    assert ok.ok and "answers" in ok.detail, ok
    port = free_port()
    down = settings_for(
        sample.root,
        root / "tables",
        mlflow={"tracking_uri": f"http://user:{FAKE_PASSWORD}@127.0.0.1:{port}"},
    )
    before = dict(os.environ)
    fail = _by_name(run_checks(down, spark))["mlflow"]
    assert not fail.ok and fail.fix
    assert FAKE_PASSWORD not in fail.detail and "***" in fail.detail
    assert dict(os.environ) == before  # the fail-fast HTTP settings are put back
    none = run_checks(settings_for(sample.root, root / "tables"), spark)
    assert "mlflow" not in _by_name(none) and "dicomweb" not in _by_name(none)
