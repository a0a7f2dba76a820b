"""The lake layout contract, as pure functions."""

from __future__ import annotations

import pytest

from dicom_lakehouse.lake.layout import (
    DEFAULT_PARTITION,
    REST_SHARD,
    FileKind,
    Layout,
    classify,
    instance_file_name,
    name_prefix,
    service_root,
    shard_key,
    shard_keys,
)

STUDY = "1.2.840.113619.2.55.3"
SERIES = "1.2.840.113619.2.55.3.4"


@pytest.mark.parametrize(
    ("watermark", "name"), [(1, "132_1.dcm"), (2, "692_2.dcm"), (1000, "768_1000.dcm")]
)
def test_instance_names_match_the_contract_examples(watermark: int, name: str) -> None:
    assert instance_file_name(watermark) == name
    assert name_prefix(watermark) == name[:3]


def test_flat_instance_in_a_partition() -> None:
    got = classify(["research", "132_1.dcm"])
    assert (got.kind, got.partition_name, got.watermark, got.layout) == (
        FileKind.INSTANCE,
        "research",
        1,
        Layout.FLAT,
    )


def test_instance_directly_under_the_service_is_default_partition() -> None:
    got = classify(["692_2.dcm"])
    assert got.kind is FileKind.INSTANCE
    assert got.partition_name == DEFAULT_PARTITION


@pytest.mark.parametrize(
    "parts",
    [
        [STUDY, SERIES, "1.2.3.4_17.dcm"],
        ["Microsoft.Default", STUDY, SERIES, "1.2.3.4_17.dcm"],
    ],
)
def test_legacy_layout(parts: list[str]) -> None:
    got = classify(parts)
    assert got.kind is FileKind.INSTANCE
    assert got.layout is Layout.LEGACY
    assert got.watermark == 17
    assert got.partition_name == DEFAULT_PARTITION


@pytest.mark.parametrize(
    "parts",
    [
        ["healthCheck", "health0f8fad5b-d9cb-469f-a165-70867728950e.txt"],
        ["healthCheck", "health.txt"],
        ["Microsoft.Default", "132_1_metadata.json"],
        ["Microsoft.Default", "132_1_frames_range.json"],
        ["Microsoft.Default", "132_ 1_frames_range.json"],
    ],
)
def test_service_files_are_ignored(parts: list[str]) -> None:
    assert classify(parts).kind is FileKind.IGNORED


def test_healthcheck_is_a_legal_partition_name() -> None:
    got = classify(["healthCheck", "132_1.dcm"])
    assert got.kind is FileKind.INSTANCE
    assert got.partition_name == "healthCheck"


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        (["research", "README.txt"], "unexpected_name"),
        (["research", "notes.dcm"], "unexpected_name"),
        (["research", "132_1.DCM"], "unexpected_name"),
        (["bad partition", "132_1.dcm"], "bad_partition_name"),
        (["p" * 65, "132_1.dcm"], "bad_partition_name"),
        (["a", "b", "c", "d", "132_1.dcm"], "unexpected_depth"),
        (["research", "sub", "132_1.dcm"], "unexpected_name"),
    ],
)
def test_foreign_files_are_reported_with_a_reason(parts: list[str], reason: str) -> None:
    got = classify(parts)
    assert got.kind is FileKind.FOREIGN
    assert got.reason == reason


def test_prefix_verification_is_opt_in() -> None:
    assert classify(["research", "999_1.dcm"]).kind is FileKind.INSTANCE
    assert classify(["research", "999_1.dcm"], verify_prefix=True).reason == "prefix_mismatch"
    assert classify(["research", "132_1.dcm"], verify_prefix=True).kind is FileKind.INSTANCE


def test_service_root_rejects_path_tricks() -> None:
    assert service_root("ws", "svc") == "AHDS/ws/dicom/svc"
    with pytest.raises(ValueError):
        service_root("ws/..", "svc")


def test_every_name_falls_in_exactly_one_shard() -> None:
    names = [instance_file_name(w) for w in range(1, 3000)] + ["README.txt", "1.2.3", "0abc", "9"]
    for digits in (1, 2):
        keys = shard_keys(digits)
        assert keys[-1] == REST_SHARD
        assert len(keys) == 9 * 10 ** (digits - 1) + 1
        for name in names:
            assert shard_key(name, digits) in keys


def test_hash_prefix_spreads_names_over_two_digit_shards() -> None:
    counts: dict[str, int] = {}
    for watermark in range(1, 20001):
        key = shard_key(instance_file_name(watermark), 2)
        counts[key] = counts.get(key, 0) + 1
    assert REST_SHARD not in counts
    # XXH64 decimals: '1x' holds ~5.9% a shard, the rest ~0.54%; no shard is empty
    assert len(counts) == 90
    assert max(counts.values()) < 0.08 * 20000
