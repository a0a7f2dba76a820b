"""Write-back end to end: cohort -> derive -> STOW-RS into a real Orthanc -> QIDO,
dciodvfy, and back through the lake into bronze."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.lake.layout import instance_file_name
from dicom_lakehouse.refine import run_refine
from dicom_lakehouse.writeback import LEDGER, run_writeback
from tests import helpers

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def lake_with_cohort(spark, orthanc, tmp_path_factory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("writeback")
    lake, settings, cohort = helpers.lake_with_cohort(
        spark,
        root,
        helpers.dicomweb_config(orthanc),
        cohort="ct_series",
        studies_per_partition=1,
        include_testdata=False,
        image_size=32,
    )
    return lake, settings, cohort, root


def test_sc_writeback_stores_valid_referenced_objects_once(
    spark, orthanc, lake_with_cohort, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    lake, settings, cohort, _ = lake_with_cohort
    summary = run_writeback(settings, "ct_series", "sc", spark=spark)
    assert summary.series == cohort.series > 0
    assert summary.failed == 0 and summary.derived == cohort.series  # one SC per series
    assert summary.stored + summary.already_stored == summary.derived
    # at most one full read per source instance: never more bytes than the sources hold
    members = {f.sop_instance_uid: f for f in lake.current_instances}
    ledger = DeltaTables(spark, settings.tables).read(LEDGER).collect()
    assert len(ledger) == summary.derived
    source_bytes = sum(
        (lake.root / members[s].path).stat().st_size
        for row in ledger
        for s in row["source_sop_uids"].split(",")
    )
    assert 0 < summary.source_bytes_read <= source_bytes
    client = orthanc.client()
    for row in ledger:
        found = client.search_instances(
            row["source_study_uid"], sop_instance_uid=row["derived_sop_uid"]
        )
        assert len(found) == 1, "QIDO finds the derived instance"
        ds = client.retrieve_instance(
            row["source_study_uid"], row["derived_series_uid"], row["derived_sop_uid"]
        )
        assert ds.StudyInstanceUID == row["source_study_uid"]
        referenced = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
        assert referenced <= set(row["source_sop_uids"].split(","))
        out = tmp_path / f"{row['derived_sop_uid']}.dcm"
        ds.save_as(out, enforce_file_format=True)
        assert helpers.dciodvfy_errors(out) == [], "dciodvfy reports no errors"
    # a re-run stores nothing new
    again = run_writeback(settings, "ct_series", "sc", spark=spark)
    assert again.series_skipped == again.series and again.derived == 0
    assert DeltaTables(spark, settings.tables).read(LEDGER).count() == len(ledger)


def test_rerun_after_a_lost_ledger_converges_without_duplicates(
    spark, orthanc, lake_with_cohort
) -> None:  # type: ignore[no-untyped-def]
    """A crash after STOW but before the ledger commit: the re-run sends the same
    deterministic instances again and the server keeps one copy of each."""
    _, settings, _, _ = lake_with_cohort
    tables = DeltaTables(spark, settings.tables)
    first = tables.read(LEDGER).collect()
    from delta.tables import DeltaTable

    DeltaTable.forPath(spark, tables.ref(LEDGER)).delete()  # the commit that never happened
    again = run_writeback(settings, "ct_series", "sc", spark=spark)
    assert again.derived == len(first) and again.failed == 0
    rows = tables.read(LEDGER).collect()
    assert {r["derived_sop_uid"] for r in rows} == {r["derived_sop_uid"] for r in first}
    client = orthanc.client()
    for row in rows:
        found = client.search_instances(row["source_study_uid"], row["derived_series_uid"])
        assert len(found) == 1  # still one instance in the derived series


def test_derived_objects_come_back_through_the_lake(spark, orthanc, lake_with_cohort) -> None:  # type: ignore[no-untyped-def]
    """The service writes stored instances to the lake; here we copy Orthanc's
    stored files into the lake as the service would, ingest and refine."""
    lake, settings, _, _ = lake_with_cohort
    tables = DeltaTables(spark, settings.tables)
    ledger = tables.read(LEDGER).collect()
    client = orthanc.client()
    top = max(f.watermark or 0 for f in lake.files)
    folder = lake.root / "AHDS/ws1/dicom/svc1/Microsoft.Default"
    for offset, row in enumerate(ledger, start=1):
        ds = client.retrieve_instance(
            row["source_study_uid"], row["derived_series_uid"], row["derived_sop_uid"]
        )
        ds.save_as(folder / instance_file_name(top + offset), enforce_file_format=True)
    ingest = run_ingest(settings, spark)
    assert ingest.files_ingested == len(ledger)
    run_refine(settings, spark)
    silver = tables.read("silver_instances")
    derived = silver.where(
        silver.sop_instance_uid.isin([r["derived_sop_uid"] for r in ledger])
    ).collect()
    assert len(derived) == len(ledger)
    assert {r["sop_class_uid"] for r in derived} == {str(pydicom.uid.SecondaryCaptureImageStorage)}


def test_seg_writeback_from_a_registered_mlflow_model(
    spark, orthanc, lake_with_cohort, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A tiny real pyfunc (a threshold segmenter) registered in a SQLite store, scored on
    the executors; the SEG objects land in Orthanc, reference their sources, pass dciodvfy.

    The job gets its store from the config only: MLflow's process-wide URIs point at
    another (empty) store while it runs, as another test or a notebook may leave them."""
    import mlflow
    import numpy as np

    class Threshold(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return np.asarray(model_input) > -10_000  # everything is "tissue"

    _, settings, cohort, _ = lake_with_cohort
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with helpers.mlflow_store(uri):
        experiment = mlflow.create_experiment("seg", artifact_location=(tmp_path / "a").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            mlflow.pyfunc.log_model(
                name="model",
                python_model=Threshold(),
                pip_requirements=[],
                registered_model_name="threshold-seg",
            )
    tracked = settings.model_copy(
        update={"mlflow": settings.mlflow.model_copy(update={"tracking_uri": uri})}
    )
    decoy = f"sqlite:///{tmp_path}/decoy.db"
    with helpers.mlflow_store(decoy):
        summary = run_writeback(
            tracked, "ct_series", "seg", model_uri="models:/threshold-seg/1", spark=spark
        )
        assert not mlflow.MlflowClient(decoy, decoy).search_registered_models()
    tables = DeltaTables(spark, settings.tables)
    rows = tables.read(LEDGER).where("deriver = 'seg'").collect()
    reasons = sorted({(r["status"], r["failure_reason"]) for r in rows if r["status"] != "stored"})
    assert summary.failed == 0 and summary.retryable == 0, (summary, reasons)
    assert summary.derived == cohort.series
    assert {r["status"] for r in rows} == {"stored"} and len(rows) == cohort.series
    assert {r["model_version"] for r in rows} == {"threshold-seg:1"}
    assert all(r["mlflow_run_id"] == summary.mlflow_run_id for r in rows)
    client = orthanc.client()
    for row in rows:
        ds = client.retrieve_instance(
            row["source_study_uid"], row["derived_series_uid"], row["derived_sop_uid"]
        )
        assert ds.Modality == "SEG"
        referenced = {
            i.ReferencedSOPInstanceUID
            for s in ds.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence
        }
        assert referenced == set(row["source_sop_uids"].split(","))
        out = tmp_path / f"{row['derived_sop_uid']}.dcm"
        ds.save_as(out, enforce_file_format=True)
        assert helpers.dciodvfy_errors(out) == []
    run = mlflow.MlflowClient(uri, uri).get_run(str(summary.mlflow_run_id))
    assert run.data.params["deriver"] == "seg"
    assert run.data.metrics["derived"] == summary.derived
