"""The config model and its layers (conf/*.yaml), and ``config show`` masking."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dicom_lakehouse.config import (
    IngestConfig,
    MlflowConfig,
    SilverConfig,
    SparkConfig,
    load_config,
    settings_from_mapping,
)
from dicom_lakehouse.config_show import (
    MASK,
    is_secret_key,
    load_with_sources,
    mask_secrets,
    render,
)
from dicom_lakehouse.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
MINIMAL = {
    "lake": {"root": "/data/lake", "workspace": "ws1", "service": "svc1"},
    "tables": {"location": "/data/tables"},
}
FAKE_SECRET = "fAkE-SeCrEt-6f1c2a/+="  # a made-up value: must never be printed

#: What each platform layer needs from the environment (values are examples).
PLATFORM_ENV = {
    "local": {},
    "databricks": {
        "DICOM_LAKE_ROOT": "/Volumes/main/dicom/lake",
        "DICOM_WORKSPACE": "ws1",
        "DICOM_SERVICE": "svc1",
        "DICOM_CATALOG": "main",
    },
    "synapse": {
        "DICOM_LAKE_ROOT": "abfss://lake@account1.dfs.core.windows.net",
        "DICOM_WORKSPACE": "ws1",
        "DICOM_SERVICE": "svc1",
        "DICOM_TABLES_ROOT": "abfss://tables@account1.dfs.core.windows.net/dicom",
    },
    "fabric": {"DICOM_WORKSPACE": "ws1", "DICOM_SERVICE": "svc1"},
}
_ALL_VARS = sorted(
    {name for env in PLATFORM_ENV.values() for name in env}
    | {"DICOM_SCHEMA", "DICOM_TABLES", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT"}
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No config variable set, whatever the shell running the tests has."""
    for name in _ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


# -- the model -----------------------------------------------------------------------


def test_minimal_config_validates_with_every_other_key_defaulted(tmp_path: Path) -> None:
    settings = load_config([_write(tmp_path / "min.yaml", MINIMAL)])
    assert settings.lake.root == "/data/lake"
    assert settings.lake.partitions is None and settings.lake.storage == {}
    assert settings.tables.location == "/data/tables" and settings.tables.schema_name is None
    assert settings.spark == SparkConfig() and settings.spark.master is None
    assert settings.ingest == IngestConfig() and settings.ingest.header_bytes == 16384
    assert settings.silver == SilverConfig()
    assert settings.mlflow == MlflowConfig() and settings.mlflow.tracking_uri is None
    assert settings.dicomweb is None


@pytest.mark.parametrize(
    ("mapping", "named"),
    [
        ({**MINIMAL, "lake": {**MINIMAL["lake"], "rooot": "/x"}}, "lake.rooot"),
        ({**MINIMAL, "ingest": {"header_bytez": 1}}, "ingest.header_bytez"),
        ({**MINIMAL, "spark_conf": {}}, "spark_conf"),
        (
            {"lake": {"workspace": "ws1", "service": "svc1"}, "tables": MINIMAL["tables"]},
            "lake.root",
        ),
        ({**MINIMAL, "ingest": {"io_threads": 0}}, "ingest.io_threads"),
    ],
)
def test_a_bad_key_is_named(mapping: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(mapping)
    assert named in str(caught.value)


def test_env_interpolation_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DL_TEST_ROOT", "/mnt/lake")
    monkeypatch.delenv("DL_TEST_UNSET", raising=False)
    monkeypatch.setenv("DL_TEST_SET", "svc9")
    layer = {
        "lake": {
            "root": "${DL_TEST_ROOT}",
            "workspace": "${DL_TEST_UNSET:-ws7}",
            "service": "${DL_TEST_SET:-ignored}",
        },
        "tables": {"location": "${DL_TEST_ROOT}/tables/${DL_TEST_UNSET:-}x"},
    }
    settings = load_config([_write(tmp_path / "env.yaml", layer)])
    assert settings.lake.root == "/mnt/lake"
    assert settings.lake.workspace == "ws7"  # unset: the default
    assert settings.lake.service == "svc9"  # set: the variable, not the default
    assert settings.tables.location == "/mnt/lake/tables/x"  # empty default, two references


def test_a_missing_env_var_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DL_TEST_MISSING", raising=False)
    layer = {**MINIMAL, "tables": {"location": "${DL_TEST_MISSING}"}}
    with pytest.raises(ConfigError) as caught:
        load_config([_write(tmp_path / "missing.yaml", layer)])
    message = str(caught.value)
    assert "DL_TEST_MISSING" in message and "tables.location" in message


def test_layers_merge_in_order_and_overrides_win(tmp_path: Path) -> None:
    first = _write(
        tmp_path / "first.yaml",
        {**MINIMAL, "ingest": {"io_threads": 4, "batch_files": 10}, "spark": {"conf": {"a": "1"}}},
    )
    second = _write(
        tmp_path / "second.yaml",
        {"ingest": {"io_threads": 16}, "spark": {"conf": {"b": "2"}}, "lake": {"root": "/l2"}},
    )
    settings = load_config([first, second])
    assert settings.ingest.io_threads == 16  # later file wins
    assert settings.ingest.batch_files == 10  # siblings survive a nested merge
    assert settings.spark.conf == {"a": "1", "b": "2"}
    assert settings.lake.root == "/l2" and settings.lake.workspace == "ws1"
    reverse = load_config([second, first])
    assert reverse.ingest.io_threads == 4 and reverse.lake.root == "/data/lake"
    overridden = load_config([first, second], {"ingest": {"io_threads": 2}})
    assert overridden.ingest.io_threads == 2  # --set beats every file


# -- the conf/ layers ----------------------------------------------------------------


@pytest.mark.parametrize("platform", list(PLATFORM_ENV))
def test_every_layer_validates_over_base_with_its_env(
    platform: str, clean_env: pytest.MonkeyPatch
) -> None:
    for name, value in PLATFORM_ENV[platform].items():
        clean_env.setenv(name, value)
    layered = load_config([CONF / "base.yaml", CONF / f"{platform}.yaml"])
    alone = load_config([CONF / f"{platform}.yaml"])
    assert layered == alone  # base.yaml holds code defaults only (one-file Databricks tasks)
    if platform == "local":
        assert layered.spark.master == "local[2]" and layered.lake.root == ".demo/lake"
        assert not layered.mlflow.tracking_uri
    else:
        assert layered.spark.master is None  # the platform's session
        assert layered.lake.workspace == "ws1" and layered.lake.service == "svc1"
        assert layered.dicomweb is not None and layered.dicomweb.auth == "entra"
        assert layered.dicomweb.url == "https://ws1-svc1.dicom.azurehealthcareapis.com/v2"
    if platform == "databricks":
        assert layered.tables.catalog == "main" and layered.tables.schema_name == "dicom"
        assert layered.tables.location is None and layered.mlflow.tracking_uri == "databricks"
    if platform == "synapse":
        assert layered.lake.root.startswith("abfss://")
        assert str(layered.tables.location).startswith("abfss://")
    if platform == "fabric":
        assert layered.lake.root.startswith("/lakehouse/default/Files/")
        assert layered.tables.location == "Tables" and layered.tables.prefix == "dicom_"


@pytest.mark.parametrize("platform", [p for p, env in PLATFORM_ENV.items() if env])
def test_a_layer_without_its_env_names_the_missing_variable(
    platform: str, clean_env: pytest.MonkeyPatch
) -> None:
    needed = PLATFORM_ENV[platform]
    for skipped in needed:
        for name, value in needed.items():
            if name != skipped:
                clean_env.setenv(name, value)
            else:
                clean_env.delenv(name, raising=False)
        with pytest.raises(ConfigError) as caught:
            load_config([CONF / "base.yaml", CONF / f"{platform}.yaml"])
        assert skipped in str(caught.value), (platform, skipped)


def test_layers_hold_no_secret_values() -> None:
    env_ref = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}$")
    env_name = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, str(k))
        elif node is not None and key and is_secret_key(key):
            if key.endswith("_env"):
                assert isinstance(node, str) and env_name.match(node), (key, "not an env name")
            else:
                assert isinstance(node, str) and env_ref.match(node), (key, "a literal secret")

    for path in sorted(CONF.glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))


# -- config show ---------------------------------------------------------------------


def test_config_show_masks_secrets_and_shows_env_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DL_TEST_WEB_PASSWORD", FAKE_SECRET)  # the value the name points to
    layer = {
        **MINIMAL,
        "lake": {**MINIMAL["lake"], "storage": {"sas_token_env": "DL_TEST_SAS"}},
        "spark": {
            "conf": {
                "fs.azure.account.key.acct1.dfs.core.windows.net": FAKE_SECRET,
                "spark.hadoop.fs.azure.account.oauth2.client.secret": FAKE_SECRET,
                "spark.sql.shuffle.partitions": "8",
            }
        },
        "mlflow": {"tracking_uri": f"https://user:{FAKE_SECRET}@mlflow.example.com/?sig=abc"},
        "dicomweb": {
            "url": "https://ws1-svc1.dicom.azurehealthcareapis.com/v2",
            "auth": "basic",
            "username": "lakehouse",
            "password_env": "DL_TEST_WEB_PASSWORD",
        },
    }
    path = _write(tmp_path / "secret.yaml", layer)
    settings, sources = load_with_sources([path])
    text = render(settings, sources)
    assert FAKE_SECRET not in text and "sig=abc" not in text
    shown = yaml.safe_load(text)  # still YAML, comments aside
    conf = shown["spark"]["conf"]
    assert conf["fs.azure.account.key.acct1.dfs.core.windows.net"] == MASK
    assert conf["spark.hadoop.fs.azure.account.oauth2.client.secret"] == MASK
    assert conf["spark.sql.shuffle.partitions"] == "8"  # not a secret: shown
    assert shown["dicomweb"]["password_env"] == "DL_TEST_WEB_PASSWORD"  # a name: shown
    assert shown["lake"]["storage"]["sas_token_env"] == "DL_TEST_SAS"
    assert shown["mlflow"]["tracking_uri"] == f"https://user:{MASK}@mlflow.example.com/?sig={MASK}"
    assert shown["dicomweb"]["username"] == "lakehouse"
    assert shown["ingest"]["header_bytes"] == 16384  # defaults are part of the resolved config


def test_config_show_masks_a_secret_pasted_into_an_env_name_field() -> None:
    masked = mask_secrets({"dicomweb": {"password_env": FAKE_SECRET, "username": "u"}})
    assert masked == {"dicomweb": {"password_env": MASK, "username": "u"}}


def test_config_show_tells_where_values_came_from(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("DICOM_WORKSPACE", "ws5")
    over = _write(tmp_path / "over.yaml", {"lake": {"service": "svc5"}})
    settings, sources = load_with_sources(
        [CONF / "base.yaml", CONF / "local.yaml", over], {"ingest": {"io_threads": 3}}
    )
    lines = {line.split(":")[0].strip(): line for line in render(settings, sources).splitlines()}
    assert "conf/local.yaml" in lines["workspace"] and "$DICOM_WORKSPACE" in lines["workspace"]
    assert "over.yaml" in lines["service"]  # the later layer, not local.yaml
    assert "default of ${DICOM_LAKE_ROOT}" in lines["root"]
    assert "--set" in lines["io_threads"]
    assert "base.yaml" in lines["batch_files"]
    assert "#" not in lines["defer_size"]  # a code default has no source
    assert settings.lake.workspace == "ws5" and settings.ingest.io_threads == 3
