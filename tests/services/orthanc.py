"""Orthanc as a real DICOMweb peer for the tests.

``orthanc`` is a session-scoped fixture: one ``Orthanc CONFIG.json --logdir=DIR`` process
(Debian ``orthanc`` 1.10 + ``orthanc-dicomweb`` 1.7, installed by
``scripts/install-orthanc.sh``) on a free HTTP port, DICOM server off, basic auth on,
storage in a temporary directory. If it cannot start, every test using it FAILS with
the reason and the end of Orthanc's log: it is never skipped.

A Lua ``ReceivedInstanceFilter`` rejects instances whose PatientID is
:data:`REJECT_PATIENT_ID`: Orthanc then still lists them in ReferencedSOPSequence with
HTTP 200, which the tests use to show why stores are confirmed with QIDO.

Overrides: ``ORTHANC_BIN`` (binary), ``ORTHANC_DICOMWEB_PLUGIN`` (plugin path).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from dicom_lakehouse.dicomweb import DicomWebClient, DicomWebSettings

__all__ = [
    "DEFAULT_PLUGIN",
    "REJECT_PATIENT_ID",
    "OrthancServer",
    "free_port",
    "make_ct_dataset",
    "orthanc",
    "run_orthanc",
]

DEFAULT_PLUGIN = Path("/usr/lib/orthanc/libOrthancDicomWeb.so.1.7")
REJECT_PATIENT_ID = "ORTHANC-REJECT"
PASSWORD_ENV = "ORTHANC_TEST_PASSWORD"
_START_TIMEOUT = 30.0
_INSTALL_HINT = "install it with scripts/install-orthanc.sh"

_LUA_FILTER = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == '{REJECT_PATIENT_ID}' then
    return false
  end
  return true
end
"""


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc: URLs, the test user, and helpers to build clients."""

    root_url: str
    username: str
    password: str = field(repr=False)
    storage_dir: Path
    log_dir: Path
    version: str
    dicomweb_version: str
    password_env: str = PASSWORD_ENV

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, ``http://127.0.0.1:PORT/dicom-web/``."""
        return f"{self.root_url}/dicom-web/"

    def environ(self, password: str | None = None) -> dict[str, str]:
        """An environment holding the password under :attr:`password_env`."""
        return {self.password_env: self.password if password is None else password}

    def settings(self, **overrides: Any) -> DicomWebSettings:
        """Basic-auth settings for this server; keyword arguments override fields."""
        values: dict[str, Any] = {
            "url": self.dicomweb_url,
            "auth": "basic",
            "username": self.username,
            "password_env": self.password_env,
            "max_attempts": 3,
            "backoff_initial": 0.0,
            "read_timeout": 30.0,
        }
        values.update(overrides)
        return DicomWebSettings(**values)

    def client(
        self, *, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> DicomWebClient:
        """A client with the right password (unless ``environ`` says otherwise)."""
        return DicomWebClient(
            self.settings(**overrides), environ=self.environ() if environ is None else environ
        )

    def rest(self, path: str) -> Any:
        """GET Orthanc's own REST API (JSON)."""
        response = requests.get(
            f"{self.root_url}{path}", auth=(self.username, self.password), timeout=10
        )
        response.raise_for_status()
        return response.json()


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary() -> str:
    configured = os.environ.get("ORTHANC_BIN")
    found = configured or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(found).is_file():
        pytest.fail(f"Orthanc binary not found ({found}); {_INSTALL_HINT}", pytrace=False)
    return found


def _plugin() -> Path:
    configured = os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
    candidates = [Path(configured)] if configured else [DEFAULT_PLUGIN]
    if not configured:
        candidates += sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so.*"))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    pytest.fail(
        f"Orthanc DICOMweb plugin not found ({', '.join(map(str, candidates))}); {_INSTALL_HINT}",
        pytrace=False,
    )


def _log_tail(log_dir: Path, console: Path, lines: int = 40) -> str:
    texts = []
    for path in [console, *sorted(log_dir.glob("Orthanc.log*"))]:
        with contextlib.suppress(OSError):
            texts.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-lines:]))
    return "\n".join(texts)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def run_orthanc(workdir: Path) -> Iterator[OrthancServer]:
    """Start Orthanc in ``workdir``, wait for ``/system``, stop it on exit."""
    binary, plugin = _binary(), _plugin()
    storage, log_dir = workdir / "storage", workdir / "logs"
    storage.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    lua = workdir / "filter.lua"
    lua.write_text(_LUA_FILTER)
    # a password fixed for the test session before Spark starts, so executors inherit it
    username, password = "lakehouse", os.environ.setdefault(PASSWORD_ENV, secrets.token_urlsafe(16))
    port = free_port()
    config = {
        "Name": "dicom-lakehouse-tests",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpServerEnabled": True,
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": 0,
        "RemoteAccessAllowed": False,  # clients connect from 127.0.0.1 only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "LuaScripts": [str(lua)],
        "OverwriteInstances": False,
        "SaveJobs": False,
        "StorageCompression": False,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    console = log_dir / "console.txt"
    root_url = f"http://127.0.0.1:{port}"
    with console.open("wb") as out:
        process = subprocess.Popen(
            [binary, str(config_path), f"--logdir={log_dir}"],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        system = _wait_until_up(process, root_url, (username, password), log_dir, console)
        plugins = requests.get(
            f"{root_url}/plugins/dicom-web", auth=(username, password), timeout=5
        )
        if plugins.status_code != 200:
            pytest.fail(
                f"Orthanc started without the DICOMweb plugin ({plugin}):\n"
                + _log_tail(log_dir, console),
                pytrace=False,
            )
        yield OrthancServer(
            root_url=root_url,
            username=username,
            password=password,
            storage_dir=storage,
            log_dir=log_dir,
            version=str(system.get("Version")),
            dicomweb_version=str(plugins.json().get("Version")),
        )
    finally:
        _stop(process)


def _wait_until_up(
    process: subprocess.Popen[bytes],
    root_url: str,
    auth: tuple[str, str],
    log_dir: Path,
    console: Path,
) -> dict[str, Any]:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"Orthanc exited with code {process.returncode} at start:\n"
                + _log_tail(log_dir, console),
                pytrace=False,
            )
        try:
            response = requests.get(f"{root_url}/system", auth=auth, timeout=2)
        except requests.ConnectionError:
            time.sleep(0.05)
            continue
        if response.status_code == 200:
            return dict(response.json())
        time.sleep(0.05)
    _stop(process)
    pytest.fail(
        f"Orthanc did not answer /system within {_START_TIMEOUT:.0f} s:\n"
        + _log_tail(log_dir, console),
        pytrace=False,
    )


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A running Orthanc with the DICOMweb plugin, for the whole session."""
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def make_ct_dataset(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    patient_id: str = "LAKEHOUSE-TEST",
    instance_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Dataset:
    """A small valid CT image (4x4, 16-bit) with fresh UIDs unless given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = "Lakehouse^Test"
    ds.StudyDate = "20240101"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.add_new(0x7FE00010, "OW", bytes(range(instance_number % 200, instance_number % 200 + 32)))
    return ds
