"""`dicom-lakehouse demo`: every job over the sample lake, MLflow runs, write-back to Orthanc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_lakehouse.cli import main

pytestmark = pytest.mark.spark


def test_demo_runs_every_job_and_tracks_them(spark, orthanc, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import mlflow

    web = orthanc.settings()
    code = main(
        [
            "demo",
            "--dir",
            str(tmp_path),
            "--json",
            "--dicomweb-url",
            web.url,
            "--dicomweb-user",
            web.username,
            "--dicomweb-password-env",
            web.password_env,
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["files_ingested"] > 0
    assert summary["cohort"]["instances"] > 0
    assert summary["writeback"]["failed"] == 0, summary["writeback"]
    assert summary["writeback"]["stored"] + summary["writeback"]["already_stored"] > 0, summary[
        "writeback"
    ]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["dicom-lakehouse"], output_format="list")
    jobs = {run.data.params.get("job") for run in runs}
    assert {"ingest", "refine", "cohort", "writeback"} <= jobs
    ingest = next(r for r in runs if r.data.params.get("job") == "ingest")
    assert ingest.data.metrics["files_ingested"] == summary["files_ingested"]
    for run in runs:  # no secrets in params
        assert orthanc.password not in json.dumps(run.data.params)
