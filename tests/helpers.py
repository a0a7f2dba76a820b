"""Helpers shared by the write-back and DICOMweb tests (no fixtures here).

* :func:`dicomweb_config` / :func:`lake_with_cohort`: the write-back job's setup: a
  sample lake ingested, refined and a series cohort built, with Orthanc as the target;
* :func:`dciodvfy_errors`: dicom3tools' validator, its ``Error`` lines;
* :class:`StormServer` / :func:`storm_proxy`: a tiny HTTP proxy in front of a real server
  that answers 503 to the first ``storms`` requests and counts every request;
* :func:`mlflow_store`: point MLflow's tracking AND registry at one store for a block, and
  put MLflow's process-wide state back exactly as it was (a test that leaves a registry URI
  behind sends later tests' models to the wrong store).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from dicom_lakehouse.cohort import CohortSummary
    from dicom_lakehouse.config import DicomWebConfig, Settings
    from dicom_lakehouse.testing import SampleLake
    from tests.services.orthanc import OrthancServer

__all__ = [
    "StormServer",
    "dciodvfy_errors",
    "dicomweb_config",
    "lake_with_cohort",
    "mlflow_store",
    "storm_proxy",
]


def dicomweb_config(
    orthanc: OrthancServer, url: str | None = None, **tuning: Any
) -> DicomWebConfig:
    """Basic auth to the test Orthanc, at ``url`` (a proxy in front of it) when given."""
    from dicom_lakehouse.config import DicomWebConfig

    return DicomWebConfig(
        url=url or orthanc.dicomweb_url,
        auth="basic",
        username=orthanc.username,
        password_env=orthanc.password_env,
        **tuning,
    )


def lake_with_cohort(
    spark: Any,
    root: Path,
    dicomweb: DicomWebConfig,
    *,
    cohort: str,
    where: str = "modality = 'CT'",
    **lake_options: Any,
) -> tuple[SampleLake, Settings, CohortSummary]:
    """A sample lake under ``root/lake`` (``lake_options`` go to ``build_sample_lake``)
    ingested and refined into ``root/tables``, and the series cohort ``cohort``."""
    from dicom_lakehouse.cohort import build_cohort
    from dicom_lakehouse.ingest import run_ingest
    from dicom_lakehouse.refine import run_refine
    from dicom_lakehouse.testing import build_sample_lake
    from tests.conftest import settings_for

    lake = build_sample_lake(root / "lake", **lake_options)
    settings = settings_for(root / "lake", root / "tables").model_copy(
        update={"dicomweb": dicomweb}
    )
    run_ingest(settings, spark)
    run_refine(settings, spark)
    summary = build_cohort(settings, cohort, where, level="series")
    return lake, settings, summary


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for the DICOM file at ``path``."""
    binary = shutil.which("dciodvfy") or "/usr/bin/dciodvfy"
    proc = subprocess.run([binary, str(path)], capture_output=True, text=True, check=False)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


class _StormHandler(BaseHTTPRequestHandler):
    """Answers 503 for the first ``storms`` requests, then forwards to the target."""

    server: StormServer

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.seen.append(self.command)
            storm = len(self.server.seen) <= self.server.storms
        if storm:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        upstream = requests.request(
            self.command, self.server.target + self.path, headers=headers, data=body, timeout=30
        )
        self.send_response(upstream.status_code)
        for key in ("Content-Type",):
            if key in upstream.headers:
                self.send_header(key, upstream.headers[key])
        self.send_header("Content-Length", str(len(upstream.content)))
        self.end_headers()
        self.wfile.write(upstream.content)

    def log_message(self, format: str, *args: Any) -> None:
        pass


for _verb in ("GET", "POST", "PUT"):
    setattr(_StormHandler, f"do_{_verb}", _StormHandler._handle)


class StormServer(ThreadingHTTPServer):
    """The proxy: ``seen`` lists the method of every request received, in order."""

    daemon_threads = True

    def __init__(self, target: str, storms: int) -> None:
        super().__init__(("127.0.0.1", 0), _StormHandler)
        self.target, self.storms = target, storms
        self.seen: list[str] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def storm_proxy(target: str, storms: int) -> Iterator[StormServer]:
    """A running :class:`StormServer` in front of ``target`` (a root URL, no trailing /)."""
    server = StormServer(target, storms)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_store(uri: str) -> Iterator[str]:
    """MLflow's tracking and registry URIs set to ``uri`` inside the block; afterwards the
    module globals and ``MLFLOW_*`` variables are what they were (unset stays unset)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    saved = (tracking._tracking_uri, registry._registry_uri)
    env = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(saved[0])  # type: ignore[arg-type]  # None: back to unset
        registry._registry_uri = saved[1]
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
