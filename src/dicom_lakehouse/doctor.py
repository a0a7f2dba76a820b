"""``dicom-lakehouse doctor``: check that a configuration can run where it is.

:func:`run_checks` returns one :class:`Check` per concern, in this order:

- ``spark``: a session is available and its Spark line is supported (3.5, 4.0, 4.1);
- ``delta``: the Delta version pairs with that Spark (3.5 with Delta 3.2/3.3, 4.0 with
  4.0, 4.1 with 4.1/4.2; delta-spark 3.3 needs Spark >= 3.5.3) and which platform line
  of ``platforms.md`` the pair matches;
- ``storage.list``: the service folder ``AHDS/{workspace}/dicom/{service}`` lists;
- ``storage.read``: the first 132 bytes of one instance file read (preamble + ``DICM``);
- ``tables``: a scratch file can be created and deleted under ``tables.location``
  (path tables), or the catalog schema exists (catalog tables);
- ``dicomweb`` (when configured): QIDO-RS ``studies?limit=1`` answers with the
  configured authentication;
- ``mlflow`` (when ``mlflow.tracking_uri`` is set): the tracking store answers.

Details and fixes name keys, hosts, HTTP statuses and exception types; they never
carry header values, file names below the service folder, response bodies or
secrets (the values of the environment variables the config names are scrubbed
from every message as a last guard). :func:`render` prints one line per check.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dicom_lakehouse.config import Settings
from dicom_lakehouse.config_show import mask_text
from dicom_lakehouse.errors import (
    ConfigError,
    DicomLakehouseError,
    DicomWebAuthError,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
)
from dicom_lakehouse.lake.backend import BackendSpec, LakeBackend, open_backend
from dicom_lakehouse.lake.layout import FileKind, classify, service_root

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "PLATFORM_LINES",
    "SUPPORTED_DELTA",
    "Check",
    "PlatformLine",
    "matching_platform_lines",
    "render",
    "run_checks",
    "version_checks",
]

logger = logging.getLogger(__name__)

#: Delta lines supported with each Spark line (platforms.md).
SUPPORTED_DELTA: dict[tuple[int, int], tuple[tuple[int, int], ...]] = {
    (3, 5): ((3, 2), (3, 3)),
    (4, 0): ((4, 0),),
    (4, 1): ((4, 1), (4, 2)),
}


@dataclass(frozen=True, slots=True)
class PlatformLine:
    """One runtime of the platforms.md matrix."""

    name: str
    spark: tuple[int, int]
    delta: tuple[int, int]


PLATFORM_LINES: tuple[PlatformLine, ...] = (
    PlatformLine("Databricks 15.4 LTS", (3, 5), (3, 2)),
    PlatformLine("Databricks 16.4 LTS", (3, 5), (3, 3)),
    PlatformLine("Databricks 17.3 LTS", (4, 0), (4, 0)),
    PlatformLine("Fabric Runtime 1.3", (3, 5), (3, 2)),
    PlatformLine("Fabric Runtime 2.0", (4, 1), (4, 2)),
    PlatformLine("Synapse Spark 3.5", (3, 5), (3, 2)),
)
# Databricks ships its own Delta; the runtime version names it.
_DATABRICKS_DELTA = {"15.4": "3.2", "16.4": "3.3", "17.3": "4.0"}

_PREAMBLE = 132
_MAX_FOLDERS = 50
_MAX_ENTRIES = 1000
_MAX_READS = 3
_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, slots=True)
class Check:
    """One check: ``fix`` is a one-line remedy (empty when ``ok``)."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _parse(version: str | None) -> tuple[int, int, int] | None:
    match = _VERSION_RE.match(version or "")
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _line(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def matching_platform_lines(spark_version: str, delta_version: str) -> list[str]:
    """Names of the platforms.md runtimes with this Spark and Delta line."""
    spark, delta = _parse(spark_version), _parse(delta_version)
    if spark is None or delta is None:
        return []
    return [
        line.name for line in PLATFORM_LINES if line.spark == spark[:2] and line.delta == delta[:2]
    ]


def version_checks(
    spark_version: str, delta_version: str | None, delta_source: str = "", runtime: str = ""
) -> list[Check]:
    """The ``spark`` and ``delta`` checks for a pair of versions (no session needed)."""
    spark = _parse(spark_version)
    where = f" on {runtime}" if runtime else ""
    supported = ", ".join(_line(v) for v in SUPPORTED_DELTA)
    if spark is None or spark[:2] not in SUPPORTED_DELTA:
        return [
            Check(
                "spark",
                False,
                f"Spark {spark_version}{where} is not a supported line ({supported})",
                f"run on Spark {supported} (see platforms.md); locally install "
                "dicom-lakehouse[spark]",
            ),
            Check("delta", False, "not checked: the Spark line is unsupported", "fix spark first"),
        ]
    checks = [
        Check("spark", True, f"Spark {spark_version}{where} (supported line {_line(spark[:2])})")
    ]
    allowed = SUPPORTED_DELTA[spark[:2]]
    allowed_text = " or ".join(_line(v) for v in allowed)
    delta = _parse(delta_version)
    source = f" ({delta_source})" if delta_source else ""
    if delta is None:
        checks.append(
            Check(
                "delta",
                False,
                f"Delta version unknown with Spark {spark_version}",
                f"install delta-spark {allowed_text} (locally: dicom-lakehouse[spark]) "
                "and enable its session extension",
            )
        )
    elif delta[:2] not in allowed:
        checks.append(
            Check(
                "delta",
                False,
                f"Delta {delta_version}{source} does not pair with Spark {spark_version}",
                f"use Delta {allowed_text} with Spark {_line(spark[:2])} (see platforms.md)",
            )
        )
    elif delta[:2] == (3, 3) and spark[:2] == (3, 5) and spark[2] < 3:
        checks.append(
            Check(
                "delta",
                False,
                f"Delta {delta_version}{source} needs Spark >= 3.5.3, found {spark_version}",
                "upgrade pyspark to >=3.5.3,<3.6 or use Delta 3.2",
            )
        )
    else:
        lines = matching_platform_lines(spark_version, str(delta_version))
        matched = (
            f"matches {', '.join(lines)}"
            if lines
            else "a supported pair that no listed platform runtime uses"
        )
        checks.append(
            Check(
                "delta",
                True,
                f"Delta {delta_version}{source} with Spark {spark_version}: {matched}",
            )
        )
    return checks


def render(checks: Sequence[Check]) -> str:
    """One line per check: ``ok|FAIL  name  detail  (fix: ...)``."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        line = f"{'ok' if check.ok else 'FAIL':<4}  {check.name:<{width}}  {check.detail}"
        if not check.ok and check.fix:
            line += f"  (fix: {check.fix})"
        lines.append(line)
    return "\n".join(lines)


# -- Spark and Delta -----------------------------------------------------------------


def _probe_errors() -> tuple[type[Exception], ...]:
    """What a JVM probe raises: a missing class or method, or a Py4J error."""
    errors: tuple[type[Exception], ...] = (AttributeError, TypeError)
    with contextlib.suppress(ImportError):
        from py4j.protocol import Py4JError

        errors += (Py4JError,)
    return errors


def _spark_errors() -> tuple[type[Exception], ...]:
    """Errors a Spark call raises (analysis errors, Py4J, Spark Connect)."""
    errors = _probe_errors()
    with contextlib.suppress(ImportError):
        from pyspark.errors import PySparkException

        errors += (PySparkException,)
    return errors


def _delta_version(spark: SparkSession) -> tuple[str | None, str]:
    """The Delta version and where it was read: the JVM, pip, or the Databricks runtime."""
    try:
        package = getattr(spark._jvm.io.delta, "package$")  # type: ignore[union-attr]
        return str(getattr(package, "MODULE$").VERSION()), "JVM"
    except _probe_errors():
        logger.debug("no Delta version in the JVM (Spark Connect or a vendor build)")
    with contextlib.suppress(md.PackageNotFoundError):
        return md.version("delta-spark"), "pip delta-spark"
    runtime = os.environ.get("DATABRICKS_RUNTIME_VERSION", "")
    bundled = _DATABRICKS_DELTA.get(".".join(runtime.split(".")[:2]))
    if bundled:
        return bundled, f"bundled with Databricks Runtime {runtime}"
    return None, ""


def _runtime() -> str:
    runtime = os.environ.get("DATABRICKS_RUNTIME_VERSION")
    return f"Databricks Runtime {runtime}" if runtime else ""


def _spark_checks(
    settings: Settings, spark: SparkSession | None
) -> tuple[list[Check], SparkSession | None]:
    from dicom_lakehouse.spark import get_spark

    try:
        session = get_spark(settings.spark, spark)
    except ConfigError as exc:
        fix = (
            "run inside the platform's Spark session, or set spark.master (e.g. local[2]) "
            "with dicom-lakehouse[spark] installed"
        )
        return [
            Check("spark", False, str(exc), fix),
            Check("delta", False, "not checked: no Spark session", "fix spark first"),
        ], None
    version, source = _delta_version(session)
    checks = version_checks(session.version, version, source, _runtime())
    if checks[1].ok and not os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        extensions = session.conf.get("spark.sql.extensions", "") or ""
        if "DeltaSparkSessionExtension" not in extensions:
            checks[1] = Check(
                "delta",
                False,
                f"{checks[1].detail}, but the Delta session extension is not enabled",
                "set spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension and "
                "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog",
            )
    return checks, session


# -- storage -------------------------------------------------------------------------


def _storage_fix(exc: StorageError, settings: Settings) -> str:
    if isinstance(exc, StorageNotFoundError):
        folder = service_root(settings.lake.workspace, settings.lake.service)
        return (
            f"check lake.root, lake.workspace and lake.service: {folder} must exist under lake.root"
        )
    if isinstance(exc, StorageAuthError):
        return (
            "grant the job's identity Storage Blob Data Reader on the container, or provide "
            "credentials (AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, "
            "lake.storage.sas_token_env, lake.storage.account_key_env)"
        )
    return "check lake.root and that the storage is reachable from this cluster"


def _find_instances(backend: LakeBackend, root: str) -> Iterator[str]:
    """Paths of instance files, breadth first, in a bounded number of listings."""
    queue: list[tuple[str, tuple[str, ...]]] = [(root, ())]
    visited = 0
    while queue and visited < _MAX_FOLDERS:
        folder, parts = queue.pop(0)
        visited += 1
        for count, info in enumerate(backend.list_dir(folder)):
            if count >= _MAX_ENTRIES:
                break
            name = info.path.rsplit("/", 1)[-1]
            if info.is_dir:
                if len(parts) < 3:
                    queue.append((info.path, (*parts, name)))
            elif classify((*parts, name)).kind is FileKind.INSTANCE:
                yield info.path


def _hadoop_storage_checks(settings: Settings, spark: SparkSession | None) -> list[Check]:
    """``lake.access: hadoop``: list and read one file through Spark's Hadoop filesystem."""
    from dicom_lakehouse.lake.hadoop import hadoop_probe

    lake = settings.lake
    where = f"{service_root(lake.workspace, lake.service)} under {mask_text(lake.root)}"
    if spark is None:
        fix = "run doctor where the job runs, with its Spark session"
        return [Check("storage.list", False, "lake.access: hadoop needs a Spark session", fix)]
    try:
        files, dicom = hadoop_probe(spark, lake, limit=_MAX_ENTRIES)
    except StorageError as exc:
        fix = "give the cluster read access to the container (Spark's fs.azure.* settings)"
        return [Check("storage.list", False, f"cannot list {where}: {exc}", fix)]
    checks = [Check("storage.list", True, f"listed {where} through Hadoop: {files} files")]
    if dicom:
        checks.append(Check("storage.read", True, "read an instance file's DICM preamble"))
    else:
        checks.append(
            Check(
                "storage.read",
                False,
                "found no readable instance file with a DICM preamble",
                "check lake.root, lake.workspace and lake.service",
            )
        )
    return checks


def _storage_checks(settings: Settings, spark: SparkSession | None = None) -> list[Check]:
    lake = settings.lake
    if lake.access == "hadoop":
        return _hadoop_storage_checks(settings, spark)
    folder = service_root(lake.workspace, lake.service)
    where = f"{folder} under {mask_text(lake.root)}"
    try:
        backend = open_backend(BackendSpec(lake.root, tuple(sorted(lake.storage.items()))))
        entries = 0
        for entries, _ in enumerate(backend.list_dir(folder), start=1):
            if entries >= _MAX_ENTRIES:
                break
    except ConfigError as exc:
        fix = "fix lake.root / lake.storage (options are strings; secrets only as *_env names)"
        return [
            Check("storage.list", False, str(exc), fix),
            Check(
                "storage.read",
                False,
                "not checked: the lake cannot be listed",
                "fix storage.list first",
            ),
        ]
    except StorageError as exc:
        return [
            Check(
                "storage.list", False, f"cannot list {where}: {exc}", _storage_fix(exc, settings)
            ),
            Check(
                "storage.read",
                False,
                "not checked: the lake cannot be listed",
                "fix storage.list first",
            ),
        ]
    more = "+" if entries >= _MAX_ENTRIES else ""
    checks = [Check("storage.list", True, f"listed {where}: {entries}{more} entries")]
    try:
        magic = reads = 0
        for path in _find_instances(backend, folder):
            data = backend.read_range(path, 0, _PREAMBLE)
            reads += 1
            if len(data) == _PREAMBLE and data[128:132] == b"DICM":
                magic += 1
                break
            if reads >= _MAX_READS:
                break
    except StorageError as exc:
        checks.append(
            Check(
                "storage.read",
                False,
                f"cannot read an instance file: {exc}",
                _storage_fix(exc, settings),
            )
        )
        return checks
    if reads == 0:
        checks.append(
            Check("storage.read", True, "no instance file found to read (empty service folder?)")
        )
    elif magic:
        checks.append(
            Check(
                "storage.read", True, f"read the first {_PREAMBLE} bytes of an instance file (DICM)"
            )
        )
    else:
        checks.append(
            Check(
                "storage.read",
                True,
                f"read {reads} instance file(s), none with the DICM magic at byte 128 "
                "(ingest quarantines such files)",
            )
        )
    return checks


# -- tables --------------------------------------------------------------------------


def _java_error(exc: BaseException) -> str:
    java = getattr(exc, "java_exception", None)
    with contextlib.suppress(Exception):
        if java is not None:
            return str(java.getClass().getName())
    return type(exc).__name__


def _is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file:")


def _local_scratch(location: str) -> str:
    folder = Path(location[len("file:") :] if location.startswith("file:") else location)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f"_dicom_lakehouse_doctor_{uuid.uuid4().hex}"
    scratch.write_bytes(b"ok")
    scratch.unlink()
    return " (folder created)" if created else ""


def _hadoop_scratch(spark: SparkSession, location: str) -> str:
    jvm: Any = spark._jvm
    base = jvm.org.apache.hadoop.fs.Path(location)
    fs = base.getFileSystem(spark._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
    created = not fs.exists(base)
    if created:
        fs.mkdirs(base)
    scratch = jvm.org.apache.hadoop.fs.Path(base, f"_dicom_lakehouse_doctor_{uuid.uuid4().hex}")
    fs.create(scratch, False).close()
    if not fs.delete(scratch, False):
        raise OSError("the scratch file could not be deleted")
    return " (folder created)" if created else ""


def _tables_check(settings: Settings, spark: SparkSession | None) -> Check:
    tables = settings.tables
    if tables.schema_name is not None:
        name = ".".join(p for p in (tables.catalog, tables.schema_name) if p)
        if spark is None:
            return Check(
                "tables", False, f"cannot check schema {name} without Spark", "fix spark first"
            )
        try:
            exists = spark.catalog.databaseExists(name)
        except _spark_errors() as exc:
            return Check(
                "tables",
                False,
                f"cannot look up schema {name} ({_java_error(exc)})",
                "check tables.catalog / tables.schema and the identity's USE CATALOG grant",
            )
        if not exists:
            return Check(
                "tables",
                False,
                f"schema {name} does not exist",
                f"CREATE SCHEMA IF NOT EXISTS {name} (or set tables.catalog / tables.schema)",
            )
        return Check("tables", True, f"schema {name} exists (catalog tables)")
    location = str(tables.location)
    shown = mask_text(location)
    errors: tuple[type[Exception], ...] = (OSError, *_spark_errors())
    try:
        if spark is not None and hasattr(spark, "_jvm"):
            note = _hadoop_scratch(spark, location)
        elif _is_local(location):
            note = _local_scratch(location)
        else:
            return Check(
                "tables",
                False,
                f"cannot test writing to {shown} without a classic Spark session",
                "run doctor where the job runs (a cluster with JVM access)",
            )
    except errors as exc:
        return Check(
            "tables",
            False,
            f"cannot create and delete a scratch file under {shown} ({_java_error(exc)})",
            "grant the job's identity write access to tables.location "
            "(Storage Blob Data Contributor on ADLS), or fix tables.location",
        )
    return Check("tables", True, f"created and deleted a scratch file under {shown}{note}")


# -- DICOMweb ------------------------------------------------------------------------


def _dicomweb_check(settings: Settings) -> Check:
    import requests

    from dicom_lakehouse.dicomweb import BasicAuth, EntraTokenAuth, studies_url
    from dicom_lakehouse.dicomweb.auth import password_from_env

    config = settings.dicomweb
    assert config is not None
    try:
        web = config.client_settings()
    except ConfigError as exc:
        return Check("dicomweb", False, str(exc), "fix dicomweb.url / dicomweb.partition")
    host = urlsplit(web.url).netloc
    auth: Any = None
    fix_auth = "check dicomweb.auth"
    try:
        if web.auth == "basic":
            assert web.username is not None and web.password_env is not None
            fix_auth = f"set the password in ${web.password_env} (dicomweb.password_env)"
            auth = BasicAuth(web.username, password_from_env(web.password_env))
        elif web.auth == "entra":
            fix_auth = (
                "give the job an Entra identity (managed identity, or AZURE_TENANT_ID/"
                "AZURE_CLIENT_ID/AZURE_CLIENT_SECRET) with a DICOM Data role on the service"
            )
            auth = EntraTokenAuth(scope=web.token_scope)
        response = requests.get(
            studies_url(web.base_url),
            params={"limit": 1},
            headers={"Accept": "application/dicom+json"},
            auth=auth,
            timeout=(5.0, 20.0),
            allow_redirects=False,
        )
    except DicomWebAuthError as exc:
        return Check("dicomweb", False, f"no credentials for {host}: {exc}", fix_auth)
    except requests.exceptions.SSLError:
        return Check(
            "dicomweb", False, f"TLS handshake with {host} failed", "check dicomweb.url (https?)"
        )
    except requests.exceptions.Timeout:
        return Check(
            "dicomweb",
            False,
            f"timeout talking to {host}",
            "check the network path to dicomweb.url",
        )
    except requests.exceptions.ConnectionError:
        return Check(
            "dicomweb",
            False,
            f"cannot connect to {host}",
            "check dicomweb.url, DNS and firewall / private endpoint from this cluster",
        )
    except requests.RequestException as exc:
        return Check(
            "dicomweb",
            False,
            f"request to {host} failed ({type(exc).__name__})",
            "check dicomweb.url",
        )
    status = response.status_code
    response.close()
    asked = f"QIDO-RS studies?limit=1 on {host} ({web.auth} auth): HTTP {status}"
    if status in (200, 204):
        return Check("dicomweb", True, asked)
    if status == 401:
        return Check("dicomweb", False, f"{asked}, authentication refused", fix_auth)
    if status == 403:
        return Check(
            "dicomweb",
            False,
            f"{asked}, access denied",
            "grant the identity a DICOM Data role (Owner for write-back) on the service",
        )
    if status == 404:
        return Check(
            "dicomweb",
            False,
            f"{asked}, not found",
            "check dicomweb.url (the base: .../v2 or .../dicom-web/) and dicomweb.partition",
        )
    if 300 <= status < 400:
        return Check("dicomweb", False, f"{asked}, redirected", "use the final URL in dicomweb.url")
    return Check("dicomweb", False, asked, "check dicomweb.url and the server's health")


# -- MLflow --------------------------------------------------------------------------


@contextlib.contextmanager
def _fast_mlflow_http() -> Iterator[None]:
    """Fail fast on an unreachable tracking server (unless the user set these)."""
    defaults = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    added = [name for name in defaults if name not in os.environ]
    for name in added:
        os.environ[name] = defaults[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _mlflow_check(settings: Settings) -> Check:
    uri = str(settings.mlflow.tracking_uri)
    shown = mask_text(uri)
    try:
        import requests
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError:
        return Check(
            "mlflow", False, "mlflow is not installed", "pip install dicom-lakehouse[mlflow]"
        )
    try:
        with _fast_mlflow_http():
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
            experiment = client.get_experiment_by_name(settings.mlflow.experiment)
    except (MlflowException, requests.RequestException, OSError, ValueError) as exc:
        code = getattr(exc, "error_code", None)
        reason = f"{type(exc).__name__}{f' {code}' if code else ''}"
        return Check(
            "mlflow",
            False,
            f"tracking store {shown} does not answer ({reason})",
            "check mlflow.tracking_uri and the identity's access to the tracking server",
        )
    state = "exists" if experiment is not None else "will be created by the first run"
    return Check(
        "mlflow",
        True,
        f"tracking store {shown} answers; experiment {settings.mlflow.experiment} {state}",
    )


# -- all together --------------------------------------------------------------------


def _secret_values(settings: Settings) -> list[str]:
    names = {"AZURE_CLIENT_SECRET", "AZURE_STORAGE_CONNECTION_STRING"}
    names.update(v for k, v in settings.lake.storage.items() if k.endswith("_env"))
    if settings.dicomweb is not None and settings.dicomweb.password_env:
        names.add(settings.dicomweb.password_env)
    return [value for name in names if len(value := os.environ.get(name, "")) >= 4]


def _scrub(check: Check, secrets: Sequence[str]) -> Check:
    detail, fix = mask_text(check.detail), mask_text(check.fix)
    for secret in secrets:
        detail, fix = detail.replace(secret, "***"), fix.replace(secret, "***")
    return replace(check, detail=detail, fix=fix)


def _guarded(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    """Run one check; an error it did not expect fails that check, not the others."""
    unexpected: tuple[type[Exception], ...] = (
        OSError,
        ValueError,
        RuntimeError,
        LookupError,
        *_spark_errors(),
    )
    try:
        return run()
    except DicomLakehouseError as exc:  # package messages carry no PHI or secrets
        return [Check(name, False, str(exc), "see the message")]
    except unexpected as exc:  # third-party messages may carry URLs: the type only
        logger.debug("check %s raised %s", name, type(exc).__name__)
        return [Check(name, False, f"unexpected {type(exc).__name__}", "rerun with -v for the log")]


def run_checks(settings: Settings, spark: SparkSession | None = None) -> list[Check]:
    """Run every check that applies to ``settings``; see the module docstring."""
    checks: list[Check] = []
    session: SparkSession | None = None

    def spark_part() -> list[Check]:
        nonlocal session
        found, session = _spark_checks(settings, spark)
        return found

    checks += _guarded("spark", spark_part)
    checks += _guarded("storage", lambda: _storage_checks(settings, session))
    checks += _guarded("tables", lambda: [_tables_check(settings, session)])
    if settings.dicomweb is not None:
        checks += _guarded("dicomweb", lambda: [_dicomweb_check(settings)])
    if settings.mlflow.tracking_uri:
        checks += _guarded("mlflow", lambda: [_mlflow_check(settings)])
    secrets = _secret_values(settings)
    checks = [_scrub(check, secrets) for check in checks]
    for check in checks:
        logger.debug("doctor %s: %s", check.name, "ok" if check.ok else "FAIL")
    return checks
