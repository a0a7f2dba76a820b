"""Silver refine, cohorts and compatibility views on a real local Spark + Delta."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pydicom
import pytest

from dicom_lakehouse.cohort import CohortError, build_cohort, read_cohort
from dicom_lakehouse.compat import register_compat_views
from dicom_lakehouse.config import Settings
from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.lake.layout import instance_file_name
from dicom_lakehouse.refine import RefineSummary, run_refine
from dicom_lakehouse.testing import SampleFile, SampleLake, build_sample_lake
from tests.conftest import settings_for

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def refined(spark, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("silver")
    lake = build_sample_lake(root / "lake", studies_per_partition=3)
    settings = settings_for(root / "lake", root / "tables")
    run_ingest(settings, spark)
    summary = run_refine(settings, spark)
    return lake, settings, summary, DeltaTables(spark, settings.tables), root


def test_first_refine_is_a_full_build_with_one_row_per_current_instance(refined) -> None:  # type: ignore[no-untyped-def]
    lake, _, summary, tables = refined[:4]
    assert summary.full
    rows = tables.read("silver_instances").collect()
    keys = [(r["partition_name"], r["sop_instance_uid"]) for r in rows]
    assert len(keys) == len(set(keys))
    expected = {(f.partition_name, f.sop_instance_uid): f for f in lake.current_instances}
    assert set(keys) == set(expected)
    for row in rows:
        assert row["file_path"] == expected[(row["partition_name"], row["sop_instance_uid"])].path
    assert summary.instances == len(rows)


def test_latest_watermark_wins_and_history_stays_in_bronze(refined) -> None:  # type: ignore[no-untyped-def]
    lake, _, _, tables = refined[:4]
    original = next(f for f in lake.instances if not f.is_current)
    silver_rows = (
        tables.read("silver_instances")
        .where(
            f"sop_instance_uid = '{original.sop_instance_uid}'"
            f" AND partition_name = '{original.partition_name}'"
        )
        .collect()
    )
    assert len(silver_rows) == 1
    assert silver_rows[0]["watermark"] > original.watermark
    assert silver_rows[0]["is_updated_version"] is True
    assert silver_rows[0]["versions"] == 2
    bronze = tables.read("bronze_instances").where(f"file_path = '{original.path}'").count()
    assert bronze == 1


def test_series_and_study_counts_agree_with_instances(refined) -> None:  # type: ignore[no-untyped-def]
    _, _, summary, tables = refined[:4]
    inst = tables.read("silver_instances")
    series = tables.read("silver_series")
    studies = tables.read("silver_studies")
    assert series.groupBy().sum("instance_count").first()[0] == inst.count()
    assert studies.groupBy().sum("instance_count").first()[0] == inst.count()
    per_study = {
        (r["partition_name"], r["study_instance_uid"]): r["n"]
        for r in inst.groupBy("partition_name", "study_instance_uid")
        .agg({"series_instance_uid": "approx_count_distinct"})
        .withColumnRenamed("approx_count_distinct(series_instance_uid)", "n")
        .collect()
    }
    for row in studies.collect():
        assert row["series_count"] == per_study[(row["partition_name"], row["study_instance_uid"])]
    assert summary.series == series.count() and summary.studies == studies.count()


def test_patients_roll_up_every_study_once(refined) -> None:  # type: ignore[no-untyped-def]
    tables = refined[3]
    studies = tables.read("silver_studies")
    patients = tables.read("silver_patients")
    assert patients.groupBy().sum("study_count").first()[0] == studies.count()
    assert patients.groupBy().sum("instance_count").first()[0] == (
        tables.read("silver_instances").count()
    )
    keys = ["partition_name", "issuer_of_patient_id", "patient_id"]
    assert patients.count() == studies.select(*keys).distinct().count() > 1


def test_patient_attributes_come_from_the_study_written_last(spark) -> None:  # type: ignore[no-untyped-def]
    from datetime import date, datetime

    from dicom_lakehouse import silver

    columns = (
        "partition_name string, issuer_of_patient_id string, patient_id string,"
        " study_instance_uid string, patient_name string, patient_family_name string,"
        " patient_given_name string, patient_sex string, patient_birth_date date,"
        " study_date date, instance_count long, last_modified timestamp"
    )
    old, new = datetime(2024, 1, 1), datetime(2025, 6, 1)
    rows = [
        ("p", None, "A", "1.1", "Old^Name", "Old", "Name", "F", date(1960, 1, 2),
         date(2020, 1, 1), 3, old),
        ("p", None, "A", "1.2", "New^Name", "New", "Name", None, None,
         date(2019, 5, 5), 4, new),
        ("p", "ISS", "A", "1.3", "Other^One", "Other", "One", "M", None,
         date(2021, 1, 1), 1, old),
    ]  # fmt: skip
    out = silver.patients_from_studies(spark.createDataFrame(rows, columns)).collect()
    by_issuer = {r["issuer_of_patient_id"]: r for r in out}
    assert len(out) == 2  # a NULL issuer is one patient, apart from issuer ISS
    patient = by_issuer[None]
    assert patient["patient_name"] == "New^Name"  # the study written last
    assert patient["patient_sex"] == "F"  # its NULL does not erase an older value
    assert patient["patient_birth_date"] == date(1960, 1, 2)
    assert (patient["study_count"], patient["instance_count"]) == (2, 7)
    assert patient["first_study_date"] == date(2019, 5, 5)
    assert patient["last_study_date"] == date(2020, 1, 1)
    assert by_issuer["ISS"]["study_count"] == 1


def test_typed_columns_match_the_headers(refined) -> None:  # type: ignore[no-untyped-def]
    lake, _, _, tables = refined[:4]
    by_sop = {r["sop_instance_uid"]: r for r in tables.read("silver_instances").collect()}
    checked = 0
    for f in lake.current_instances:
        ds = pydicom.dcmread(lake.root / f.path, stop_before_pixels=True, force=True)
        row = by_sop[f.sop_instance_uid]
        if "SliceThickness" in ds and ds.SliceThickness not in (None, ""):
            assert row["slice_thickness"] == pytest.approx(float(ds.SliceThickness))
            checked += 1
        if ds.get("StudyDate") and len(ds.StudyDate) == 8:
            assert row["study_date"].strftime("%Y%m%d") == ds.StudyDate
        if ds.get("PatientName") and "^" in str(ds.PatientName):
            assert row["patient_family_name"] == ds.PatientName.family_name
    assert checked > 5


def test_bad_values_become_null_and_are_counted(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from dicom_lakehouse import silver

    df = spark.createDataFrame(
        [
            ("20231301", "1.25\\1.25", "", "Ünal^Özge", "1200", "057Y"),
            ("20240229", "1.25", "12", "Yamada^Tarou=山田^太郎", "2575.5", "ABC"),
            ("", None, "99", "", "25", None),
        ],
        "da string, ds string, tm string, pn string, tm2 string, age string",
    )
    out = df.select(
        silver.parse_da(F.col("da")).alias("da"),
        silver.to_double(F.col("ds")).alias("ds"),
        silver.parse_tm(F.col("tm")).alias("tm"),
        silver.pn_component(F.col("pn"), 0).alias("family"),
        silver.parse_tm(F.col("tm2")).alias("tm2"),
        silver.age_years(F.col("age"), F.lit(None).cast("date"), F.lit(None).cast("date")).alias(
            "age"
        ),
    ).collect()
    assert [r["da"] for r in out] == [None, __import__("datetime").date(2024, 2, 29), None]
    assert [r["ds"] for r in out] == [None, 1.25, None]  # multi-valued DS is not one number
    assert [r["tm"] for r in out] == [None, "12:00:00", None]
    assert [r["family"] for r in out] == ["Ünal", "Yamada", None]
    assert [r["tm2"] for r in out] == ["12:00:00", None, None]  # 25 h is no time
    assert [r["age"] for r in out] == [57.0, None, None]


def test_parse_da_keeps_only_real_dates(spark) -> None:  # type: ignore[no-untyped-def]
    """Impossible, implausible and malformed DA values become NULL (ANSI or not)."""
    from datetime import date

    from pyspark.sql import functions as F

    from dicom_lakehouse import silver

    cases = {
        "20240101": date(2024, 1, 1),
        " 19991231 ": date(1999, 12, 31),
        "20240229": date(2024, 2, 29),
        "18000101": date(1800, 1, 1),
        "20230229": None,  # not a leap year
        "20230431": None,
        "20231301": None,
        "20230001": None,
        "20230100": None,
        "17991231": None,  # before 1800: a placeholder, not a date
        "00000000": None,
        "2024-01-01": None,
        "2024011": None,
        "202401011": None,
        "2024O101": None,
        "": None,
    }
    df = spark.createDataFrame([(k,) for k in cases], "da string")
    out = df.select("da", silver.parse_da(F.col("da")).alias("parsed")).collect()
    assert {r["da"]: r["parsed"] for r in out} == cases


def _add_instance(
    lake_root: Path,
    template: Path,
    partition: str,
    watermark: int,
    sop: str,
    study: str | None = None,
    **attributes: str,
) -> Path:
    ds = pydicom.dcmread(template)
    ds.SOPInstanceUID = sop
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if study is not None:  # a new study (and series) of the same patient
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[study, "series"])
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    folder = lake_root / "AHDS/ws1/dicom/svc1" / partition
    path = folder / instance_file_name(watermark)
    path.write_bytes(buffer.getvalue())
    return path


class _Refined(NamedTuple):
    """A sample lake ingested and refined once, and an instance of it to copy."""

    lake: SampleLake
    settings: Settings
    tables: DeltaTables
    first: RefineSummary
    target: SampleFile


def _refined_lake(spark, tmp_path: Path, **sections: dict) -> _Refined:  # type: ignore[no-untyped-def]
    lake = build_sample_lake(tmp_path / "lake", studies_per_partition=2, include_testdata=False)
    settings = settings_for(tmp_path / "lake", tmp_path / "tables", **sections)
    run_ingest(settings, spark)
    first = run_refine(settings, spark)
    target = next(f for f in lake.current_instances if f.partition_name == "research")
    return _Refined(lake, settings, DeltaTables(spark, settings.tables), first, target)


def test_incremental_refine_touches_only_changed_studies_and_deletes_propagate(
    spark, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    lake, settings, tables, first, target = _refined_lake(spark, tmp_path)
    # one new instance in an existing study
    new_sop = pydicom.uid.generate_uid(entropy_srcs=["incremental-test"])
    _add_instance(tmp_path / "lake", lake.root / target.path, "research", 9000, new_sop)
    run_ingest(settings, spark)
    second = run_refine(settings, spark)
    assert not second.full
    assert second.studies_recomputed == 1
    assert second.instances == first.instances + 1
    assert tables.read("silver_instances").where(f"sop_instance_uid = '{new_sop}'").count() == 1
    study = (
        tables.read("silver_studies")
        .where(f"study_instance_uid = '{target.study_instance_uid}'")
        .first()
    )
    assert (
        study["instance_count"]
        == sum(
            1 for f in lake.current_instances if f.study_instance_uid == target.study_instance_uid
        )
        + 1
    )
    # delete every file of another study
    victim = next(
        f for f in lake.current_instances if f.study_instance_uid != target.study_instance_uid
    )
    gone = [f for f in lake.instances if f.study_instance_uid == victim.study_instance_uid]
    for f in gone:
        (lake.root / f.path).unlink()
    run_ingest(settings, spark)
    third = run_refine(settings, spark)
    assert third.instances_deleted == len({f.sop_instance_uid for f in gone})
    assert (
        tables.read("silver_instances")
        .where(f"study_instance_uid = '{victim.study_instance_uid}'")
        .count()
        == 0
    )
    assert (
        tables.read("silver_studies")
        .where(f"study_instance_uid = '{victim.study_instance_uid}'")
        .count()
        == 0
    )
    assert tables.read("silver_series").groupBy().sum("instance_count").first()[0] == (
        tables.read("silver_instances").count()
    )
    # nothing new: nothing recomputed
    fourth = run_refine(settings, spark)
    assert fourth.ingest_runs_refined == 0 and fourth.instances_changed == 0
    shutil.rmtree(tmp_path / "tables", ignore_errors=True)


def _rows(tables: DeltaTables, name: str) -> list[tuple]:  # type: ignore[type-arg]
    df = tables.read(name)
    return sorted(tuple(row) for row in df.select(*sorted(df.columns)).collect())


def _refine_counted(settings, spark, tables: DeltaTables):  # type: ignore[no-untyped-def]
    """An incremental refine whose summary counts (derived from its own commits where
    it can) equal the tables' counted rows."""
    summary = run_refine(settings, spark)
    assert not summary.full
    counted = {
        "instances": tables.read("silver_instances").count(),
        "series": tables.read("silver_series").count(),
        "studies": tables.read("silver_studies").count(),
        "patients": tables.read("silver_patients").count(),
        "study_conflicts": tables.read("silver_studies").where("attribute_conflicts > 0").count(),
    }
    assert {key: getattr(summary, key) for key in counted} == counted
    return summary


def test_incremental_refines_end_equal_to_a_full_rebuild(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A new study, new instances, a new version of an existing one, a conflicting
    study attribute and a deleted study, each refined incrementally (appends where
    silver never had the rows, MERGEs otherwise; small changes, so with interpreted
    expressions): every silver table then equals a full rebuild's with compiled
    code, and each summary's counts equal the tables' (also after another writer's
    commit)."""
    lake, settings, tables, _, target = _refined_lake(spark, tmp_path)
    new_study = pydicom.uid.generate_uid(entropy_srcs=["equal-to-full", "study"])
    for n in range(2):
        sop = pydicom.uid.generate_uid(entropy_srcs=["equal-to-full", "study", str(n)])
        _add_instance(
            tmp_path / "lake", lake.root / target.path, "research", 9000 + n, sop, new_study
        )
    run_ingest(settings, spark)
    assert _refine_counted(settings, spark, tables).studies_recomputed == 1
    study_rows = tables.read("silver_studies").where(f"study_instance_uid = '{new_study}'")
    assert [r["instance_count"] for r in study_rows.collect()] == [2]
    # the new study's patient is an existing one: their row now counts it too
    patient_id = study_rows.first()["patient_id"]
    of_patient = f"partition_name = 'research' AND patient_id = '{patient_id}'"
    patient_rows = tables.read("silver_patients").where(of_patient).collect()
    assert [r["study_count"] for r in patient_rows] == [
        tables.read("silver_studies").where(of_patient).count()
    ]
    assert patient_rows[0]["study_count"] >= 2
    new_sop = pydicom.uid.generate_uid(entropy_srcs=["equal-to-full"])
    studies = tables.read("silver_studies")
    conflicts = studies.where("attribute_conflicts > 0").count()
    in_target = f"study_instance_uid = '{target.study_instance_uid}'"
    target_conflicted = studies.where(in_target).first()["attribute_conflicts"] > 0
    # a study description that disagrees with the rest of its study
    _add_instance(
        tmp_path / "lake",
        lake.root / target.path,
        "research",
        9100,
        new_sop,
        StudyDescription="disagrees",
    )
    # a newer version of an instance that is already in silver
    _add_instance(
        tmp_path / "lake", lake.root / target.path, "research", 9101, target.sop_instance_uid
    )
    run_ingest(settings, spark)
    changed = _refine_counted(settings, spark, tables)
    assert changed.instances_changed == 2
    assert changed.study_conflicts == conflicts + (0 if target_conflicted else 1)
    victim = next(
        f for f in lake.current_instances if f.study_instance_uid != target.study_instance_uid
    )
    for f in lake.instances:
        if f.study_instance_uid == victim.study_instance_uid:
            (lake.root / f.path).unlink()
    run_ingest(settings, spark)
    # another writer's commit: that table is counted, not derived
    tables.delta_table("silver_series").optimize().executeCompaction()
    assert _refine_counted(settings, spark, tables).instances_deleted > 0
    names = ["silver_instances", "silver_series", "silver_studies", "silver_patients"]
    incremental = {name: _rows(tables, name) for name in names}
    compiled = settings_for(
        tmp_path / "lake", tmp_path / "tables", silver={"interpreted_max_rows": 0}
    )
    run_refine(compiled, spark, full=True)
    for name in names:
        assert incremental[name] == _rows(tables, name), name
    updated = (
        tables.read("silver_instances")
        .where(f"sop_instance_uid = '{target.sop_instance_uid}'")
        .first()
    )
    assert updated["watermark"] == 9101 and updated["versions"] == 2


def test_cohort_matches_an_independent_count(refined) -> None:  # type: ignore[no-untyped-def]
    lake, settings, _, _, _ = refined
    where = (
        "modality = 'CT' AND patient_sex = 'F' AND patient_age_years BETWEEN 50 AND 70 "
        "AND slice_thickness <= 1.25"
    )
    summary = build_cohort(settings, "ct_women", where, level="instance")
    expected = set()
    for f in lake.current_instances:
        ds = pydicom.dcmread(lake.root / f.path, stop_before_pixels=True, force=True)
        age = ds.get("PatientAge", "")
        if (
            ds.get("Modality") == "CT"
            and ds.get("PatientSex") == "F"
            and age.endswith("Y")
            and 50 <= int(age[:-1]) <= 70
            and ds.get("SliceThickness") is not None
            and float(ds.SliceThickness) <= 1.25
        ):
            expected.add(f.sop_instance_uid)
    assert expected, "the sample lake must hold matching instances"
    members = read_cohort(settings, "ct_women").collect()
    assert {r["sop_instance_uid"] for r in members} == expected
    assert summary.instances == len(expected)
    assert summary.version == 1
    again = build_cohort(settings, "ct_women", where, level="instance")
    assert again.version == 2 and again.instances == summary.instances


def test_study_level_cohort_holds_whole_studies(refined) -> None:  # type: ignore[no-untyped-def]
    _, settings, _, tables, _ = refined
    summary = build_cohort(settings, "mr_studies", "modalities LIKE '%MR%'", level="study")
    studies = {
        (r["partition_name"], r["study_instance_uid"])
        for r in tables.read("silver_studies").where("modalities LIKE '%MR%'").collect()
    }
    members = read_cohort(settings, "mr_studies").collect()
    assert {(r["partition_name"], r["study_instance_uid"]) for r in members} == studies
    instances = [
        r
        for r in tables.read("silver_instances").collect()
        if (r["partition_name"], r["study_instance_uid"]) in studies
    ]
    assert summary.instances == len(instances) and summary.studies == len(studies)


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("no_such_column = 1", "no_such_column"),
        ("modality = ", "invalid cohort predicate"),
    ],
)
def test_bad_predicate_is_a_clear_error(refined, where: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    _, settings, _, _, _ = refined
    with pytest.raises(CohortError) as err:
        build_cohort(settings, "bad", where)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message and "at org.apache" not in message


def test_cohort_retrieve_urls_with_a_dicomweb_endpoint(refined) -> None:  # type: ignore[no-untyped-def]
    _, settings, _, _, _ = refined
    with_web = settings.model_copy(
        update={
            "dicomweb": __import__(
                "dicom_lakehouse.config", fromlist=["DicomWebConfig"]
            ).DicomWebConfig(
                url="https://ws1-svc1.dicom.azurehealthcareapis.com/v2", partition_routes=True
            )
        }
    )
    build_cohort(with_web, "urls", "modality = 'MR'")
    row = read_cohort(settings, "urls").first()
    assert row["retrieve_url"] == (
        f"https://ws1-svc1.dicom.azurehealthcareapis.com/v2/partitions/{row['partition_name']}"
        f"/studies/{row['study_instance_uid']}/series/{row['series_instance_uid']}"
        f"/instances/{row['sop_instance_uid']}"
    )


def test_compat_views_answer_the_template_queries(spark, refined) -> None:  # type: ignore[no-untyped-def]
    _, _, summary, tables, _ = refined
    register_compat_views(spark, tables)
    assert spark.sql("SELECT * FROM instance").count() == summary.instances
    rows = spark.sql("SELECT sopInstanceUid, filePath FROM instance").collect()
    assert all(r["filePath"].startswith("AHDS/ws1/dicom/svc1/") for r in rows)
    for view, extra in (("series", "instanceCount"), ("study", "seriesCount")):
        columns = spark.sql(f"SELECT * FROM {view}").columns
        for col in (
            "partitionName",
            "studyInstanceUid",
            "lastModifiedTimestamp",
            "studyDate",
            "studyDescription",
            "issuerOfPatientId",
            "patientId",
            "patientName",
            "modality",
            extra,
        ):
            assert col in columns, (view, col)
    total = spark.sql("SELECT sum(instanceCount) FROM study").first()[0]
    assert total == summary.instances
    assert dict(spark.sql("SELECT * FROM instance").dtypes)["studyDate"] == "date"


def test_cohort_is_logged_to_mlflow_without_the_predicate(refined, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    _, settings, _, _, _ = refined
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracked = settings.model_copy(
        update={"mlflow": settings.mlflow.model_copy(update={"tracking_uri": uri})}
    )
    where = "patient_id = 'PHI-LIKE-ID' OR modality = 'CT'"
    summary = build_cohort(tracked, "tracked", where)
    assert summary.mlflow_run_id
    mlflow.set_tracking_uri(uri)
    run = mlflow.get_run(summary.mlflow_run_id)
    assert "PHI-LIKE-ID" not in json.dumps(run.data.params)
    assert run.data.metrics["instances"] == summary.instances
    inputs = run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "tracked@v1"


def _stopped_at(monkeypatch: pytest.MonkeyPatch, module: object, step: str, job) -> None:  # type: ignore[no-untyped-def]
    """Run ``job`` with ``module.step`` raising: a run stopped at that step."""

    def stop(*args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError(f"stopped at {step}")

    with monkeypatch.context() as patch:
        patch.setattr(module, step, stop)
        with pytest.raises(RuntimeError, match="stopped at"):
            job()


def test_rows_landed_by_an_ingest_killed_before_its_record_reach_silver(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """An ingest dies after its bronze commit and before its ``ingest_runs`` record
    (simulated by a failing record step; test_ingest kills a real process). The
    re-run finds nothing new to land, yet the next refine brings the dead run's
    rows into silver."""
    from dicom_lakehouse import ingest

    lake, settings, tables, first, target = _refined_lake(spark, tmp_path)
    new_sop = pydicom.uid.generate_uid(entropy_srcs=["killed-before-record"])
    _add_instance(tmp_path / "lake", lake.root / target.path, "research", 9000, new_sop)
    _stopped_at(monkeypatch, ingest, "_record_run", lambda: run_ingest(settings, spark))
    assert tables.read("bronze_instances").where(f"sop_instance_uid = '{new_sop}'").count() == 1
    rerun = run_ingest(settings, spark)
    assert rerun.files_ingested == 0
    second = run_refine(settings, spark)
    assert not second.full
    assert tables.read("silver_instances").where(f"sop_instance_uid = '{new_sop}'").count() == 1
    assert second.instances == first.instances + 1
    shutil.rmtree(tmp_path / "tables", ignore_errors=True)


def test_a_refine_that_stopped_after_writing_instances_is_repaired_by_the_next(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A refine fails after its instances commit, before the rollups (simulated by a
    failing rollup step). The next refine finds nothing gone any more, yet its
    series, studies and patients end equal to a full rebuild's."""
    from dicom_lakehouse import refine

    lake, settings, tables, _, _ = _refined_lake(spark, tmp_path)
    studies = sorted({f.study_instance_uid for f in lake.current_instances})
    partly, wholly = studies[0], studies[1]
    (lake.root / next(f for f in lake.instances if f.study_instance_uid == partly).path).unlink()
    for f in lake.instances:
        if f.study_instance_uid == wholly:
            (lake.root / f.path).unlink()
    run_ingest(settings, spark)
    _stopped_at(monkeypatch, refine, "_rollups", lambda: run_refine(settings, spark))
    assert tables.read("silver_instances").where(f"study_instance_uid = '{wholly}'").count() == 0
    assert tables.read("silver_studies").where(f"study_instance_uid = '{wholly}'").count() == 1
    again = run_refine(settings, spark)
    assert not again.full and again.instances_deleted == 0
    names = ["silver_instances", "silver_series", "silver_studies", "silver_patients"]
    incremental = {name: _rows(tables, name) for name in names}
    run_refine(settings, spark, full=True)
    for name in names:
        assert incremental[name] == _rows(tables, name), name
    shutil.rmtree(tmp_path / "tables", ignore_errors=True)


def test_batches_an_ingest_commits_after_a_refine_reach_silver(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A long ingest commits its first batch, a refine runs, then the ingest commits
    its second batch and its record. The refine in between took the run from bronze's
    history; the next refine still brings the second batch into silver."""
    refined = _refined_lake(spark, tmp_path, ingest={"batch_files": 3})
    lake, settings, tables, first, target = refined
    sops = [pydicom.uid.generate_uid(entropy_srcs=["long-ingest", str(i)]) for i in range(6)]
    for i, sop in enumerate(sops):
        _add_instance(tmp_path / "lake", lake.root / target.path, "research", 9000 + i, sop)
    in_silver = f"sop_instance_uid IN ({', '.join(repr(s) for s in sops)})"
    append, seen = DeltaTables.append, []

    def refine_before_the_second_batch(self, df, name, **kw):  # type: ignore[no-untyped-def]
        if name == "bronze_instances" and kw.get("txn", ("", 0))[1] == 1 and not seen:
            seen.append(run_refine(settings, spark))
        return append(self, df, name, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(DeltaTables, "append", refine_before_the_second_batch)
        landed = run_ingest(settings, spark)
    assert landed.batches == 2 and landed.files_ingested == len(sops)
    # the refine in between saw the first batch only
    assert 0 < seen[0].instances - first.instances < len(sops)
    last = run_refine(settings, spark)
    assert not last.full and last.ingest_runs_refined == 1
    assert tables.read("silver_instances").where(in_silver).count() == len(sops)
    assert last.instances == first.instances + len(sops)
    shutil.rmtree(tmp_path / "tables", ignore_errors=True)


def test_runs_beyond_one_read_of_history_reach_silver(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Two ingests between refines, with history read one commit at a time: the
    refine reads the rest of history (no scan of the run tables) and brings both
    runs' rows into silver."""
    from dicom_lakehouse import refine

    lake, settings, tables, first, target = _refined_lake(spark, tmp_path)
    sops = [pydicom.uid.generate_uid(entropy_srcs=["history", str(i)]) for i in range(2)]
    for i, sop in enumerate(sops):
        _add_instance(tmp_path / "lake", lake.root / target.path, "research", 9000 + i, sop)
        run_ingest(settings, spark)

    def no_scan(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("run tables scanned although history holds every commit")

    with monkeypatch.context() as patch:
        patch.setattr(refine, "_RECENT_COMMITS", 1)
        patch.setattr(refine, "_run_ids", no_scan)
        second = _refine_counted(settings, spark, tables)
    assert second.ingest_runs_refined == 2
    in_silver = f"sop_instance_uid IN ({', '.join(repr(s) for s in sops)})"
    assert tables.read("silver_instances").where(in_silver).count() == len(sops)
    assert second.instances == first.instances + len(sops)
    shutil.rmtree(tmp_path / "tables", ignore_errors=True)


def test_a_refine_after_a_full_rebuild_with_nothing_new_runs_no_repair(
    spark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A full rebuild that refined no new run still records the versions it left, so
    the next incremental refine does not take the rebuilt silver for a refine that
    stopped half-way (no repair aggregate), and its counts stay right."""
    from dicom_lakehouse import refine

    lake, settings, tables, _, target = _refined_lake(spark, tmp_path)
    rebuilt = run_refine(settings, spark, full=True)
    assert rebuilt.ingest_runs_refined == 0
    study = pydicom.uid.generate_uid(entropy_srcs=["after-full", "study"])
    sop = pydicom.uid.generate_uid(entropy_srcs=["after-full", "sop"])
    _add_instance(tmp_path / "lake", lake.root / target.path, "research", 9000, sop, study)
    run_ingest(settings, spark)

    def no_repair(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("repair aggregate after a recorded full rebuild")

    with monkeypatch.context() as patch:
        patch.setattr(refine, "_lagging_studies", no_repair)
        summary = _refine_counted(settings, spark, tables)
    assert summary.instances == rebuilt.instances + 1 and summary.studies_recomputed == 1
    shutil.rmtree(tmp_path / "tables", ignore_errors=True)


def test_interpreted_expressions_are_scoped_to_the_block(spark) -> None:  # type: ignore[no-untyped-def]
    """Inside the block the session compiles no code; after it (also after an
    error) the settings are what they were; disabled, nothing changes."""
    from dicom_lakehouse.spark import interpreted_expressions

    key = "spark.sql.codegen.factoryMode"
    spark.conf.set(key, "FALLBACK")
    with pytest.raises(RuntimeError), interpreted_expressions(spark):
        assert spark.conf.get(key) == "NO_CODEGEN"
        assert spark.range(3).selectExpr("sum(id * 2) AS s").first()["s"] == 6
        raise RuntimeError("boom")
    assert spark.conf.get(key) == "FALLBACK"
    with interpreted_expressions(spark, enabled=False):
        assert spark.conf.get(key) == "FALLBACK"
    spark.conf.unset(key)
    with interpreted_expressions(spark):
        assert spark.conf.get(key) == "NO_CODEGEN"
    assert spark.conf.get(key, None) in (None, "FALLBACK")  # unset again: the default
