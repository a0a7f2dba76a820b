"""DICOMweb client against a real Orthanc (fixture ``orthanc``, tests/services/orthanc.py).

Orthanc 1.10 + dicomweb 1.7 differ from the Azure DICOM service, and these tests pin the
differences instead of papering over them: a duplicate gets 200 and is listed as
referenced; an unparseable part gives 400 although the valid parts were stored; a 409
can still list stored instances; an instance rejected by a filter is listed as
referenced with 200 yet not stored (so stores are confirmed with QIDO).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator

import pytest
import requests

from dicom_lakehouse.dicomweb import DicomWebClient, DicomWebSettings, EncodedInstance, StoreStatus
from dicom_lakehouse.errors import DicomWebAuthError, DicomWebRequestError, DicomWebTransientError
from tests.helpers import StormServer, storm_proxy
from tests.services.orthanc import REJECT_PATIENT_ID, OrthancServer, free_port, make_ct_dataset


def test_store_batch_then_confirm_with_qido_and_wado(orthanc: OrthancServer) -> None:
    study = make_ct_dataset()
    series = str(study.SeriesInstanceUID)
    datasets = [
        make_ct_dataset(study_uid=str(study.StudyInstanceUID), series_uid=series, instance_number=i)
        for i in range(1, 8)
    ]
    with orthanc.client(max_batch_instances=3, concurrency=2) as client:
        results = client.store(datasets)
        assert [r.sop_instance_uid for r in results] == [str(d.SOPInstanceUID) for d in datasets]
        assert {(r.status, r.http_status, r.attempts) for r in results} == {
            (StoreStatus.STORED, 200, 1)
        }
        assert all(r.retrieve_url and r.retrieve_url.endswith(r.sop_instance_uid) for r in results)

        found = client.search_instances(str(study.StudyInstanceUID), page_size=3)  # 3 pages
        found_uids = sorted(item["00080018"]["Value"][0] for item in found)
        assert found_uids == sorted(r.sop_instance_uid for r in results)
        target = datasets[4]
        assert client.qido_instance_exists(
            str(target.StudyInstanceUID), series, str(target.SOPInstanceUID)
        )
        assert not client.qido_instance_exists(str(target.StudyInstanceUID), series, "1.2.3.4")

        back = client.retrieve_instance(
            str(target.StudyInstanceUID), series, str(target.SOPInstanceUID)
        )
    assert back.SOPInstanceUID == target.SOPInstanceUID
    assert back.StudyInstanceUID == target.StudyInstanceUID
    assert back.SeriesInstanceUID == target.SeriesInstanceUID
    assert back.PixelData == target.PixelData
    assert back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_duplicate_store_is_200_and_referenced_and_the_copy_is_unchanged(
    orthanc: OrthancServer,
) -> None:
    original = make_ct_dataset()
    changed = copy.deepcopy(original)
    changed.SeriesDescription = "second version"
    uids = (
        str(original.StudyInstanceUID),
        str(original.SeriesInstanceUID),
        str(original.SOPInstanceUID),
    )
    with orthanc.client() as client:
        [first] = client.store([original])
        [again] = client.store([changed])
        stored = client.retrieve_instance(*uids)
    assert first.status is StoreStatus.STORED
    # Orthanc does not flag duplicates (the Azure service answers 45070 -> already_stored):
    assert (again.status, again.http_status, again.failure_reason) == (
        StoreStatus.STORED,
        200,
        None,
    )
    assert "SeriesDescription" not in stored  # OverwriteInstances is false: first copy kept
    assert len(orthanc.rest(f"/series/{_orthanc_series_id(orthanc, uids[1])}/instances")) == 1


def _orthanc_series_id(orthanc: OrthancServer, series_uid: str) -> str:
    response = requests.post(
        f"{orthanc.root_url}/tools/lookup",
        data=series_uid,
        auth=(orthanc.username, orthanc.password),
        timeout=10,
    )
    response.raise_for_status()
    [match] = response.json()
    return str(match["ID"])


def test_unparseable_part_gives_400_but_valid_parts_are_stored(orthanc: OrthancServer) -> None:
    good_a, good_b = make_ct_dataset(), make_ct_dataset()
    garbage = EncodedInstance("1.2.826.0.1.3680043.8.498.999", b"this is not DICOM" * 8)
    with orthanc.client() as client:
        a, bad, b = client.store([good_a, garbage, good_b])
        assert (bad.status, bad.http_status, bad.failure_reason, bad.attempts) == (
            StoreStatus.FAILED,
            400,
            None,
            1,  # a 400 is never retried
        )
        for result, ds in ((a, good_a), (b, good_b)):
            assert (result.status, result.http_status) == (StoreStatus.STORED, 400)
            assert client.qido_instance_exists(
                str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
            )


def test_409_with_a_study_mismatch_still_lists_the_stored_instance(
    orthanc: OrthancServer,
) -> None:
    member = make_ct_dataset()
    stranger = make_ct_dataset()  # another study
    study = str(member.StudyInstanceUID)
    with orthanc.client() as client:
        ok, mismatch = client.store([member, stranger], study_instance_uid=study)
        assert (ok.status, ok.http_status) == (StoreStatus.STORED, 409)
        assert (mismatch.status, mismatch.http_status, mismatch.failure_reason) == (
            StoreStatus.FAILED,
            409,
            272,  # Orthanc's code; the Azure service uses 43265
        )
        assert mismatch.attempts == 1
        assert client.qido_instance_exists(
            study, str(member.SeriesInstanceUID), str(member.SOPInstanceUID)
        )
        assert not client.qido_instance_exists(
            str(stranger.StudyInstanceUID),
            str(stranger.SeriesInstanceUID),
            str(stranger.SOPInstanceUID),
        )


def test_filtered_instance_is_listed_as_stored_but_qido_finds_nothing(
    orthanc: OrthancServer,
) -> None:
    rejected = make_ct_dataset(patient_id=REJECT_PATIENT_ID)
    with orthanc.client() as client:
        [result] = client.store([rejected])
        assert (result.status, result.http_status) == (StoreStatus.STORED, 200)
        assert not client.qido_instance_exists(
            str(rejected.StudyInstanceUID),
            str(rejected.SeriesInstanceUID),
            str(rejected.SOPInstanceUID),
        )


def test_put_is_refused_by_orthanc_with_a_hint(orthanc: OrthancServer) -> None:
    with (
        orthanc.client(method="put") as client,
        pytest.raises(DicomWebRequestError, match=r"HTTP 405.*use method post") as info,
    ):
        client.store([make_ct_dataset()])
    assert info.value.attempts == 1


def test_wrong_password_is_a_clear_auth_error_without_the_password(
    orthanc: OrthancServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wr0ng-" + orthanc.password[::-1]
    with (
        orthanc.client(environ=orthanc.environ(wrong)) as client,
        pytest.raises(DicomWebAuthError, match="HTTP 401") as info,
    ):
        client.store([make_ct_dataset()])
    error = info.value
    assert error.http_status == 401 and error.attempts == 1
    assert orthanc.username in str(error)
    for text in (str(error), repr(error), repr(client), caplog.text):
        assert wrong not in text and orthanc.password not in text


def test_server_down_is_retried_then_fails_clearly() -> None:
    sleeps: list[float] = []
    port = free_port()  # nothing listens there
    settings = DicomWebSettings(
        url=f"http://127.0.0.1:{port}/dicom-web/", max_attempts=4, backoff_initial=0.5
    )
    with DicomWebClient(settings, sleep=sleeps.append) as client:
        with pytest.raises(DicomWebTransientError, match="connection error") as info:
            client.store([make_ct_dataset()])
        with pytest.raises(DicomWebTransientError):
            client.search_instances("1.2.3")
    assert info.value.attempts == 4 and info.value.http_status is None
    assert isinstance(info.value.__cause__, requests.ConnectionError)
    assert len(sleeps) == 6  # 3 between the 4 STOW attempts, 3 for QIDO
    for attempt, delay in enumerate(sleeps[:3], start=1):
        ceiling = 0.5 * 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling


@pytest.fixture
def storm(orthanc: OrthancServer) -> Iterator[StormServer]:
    with storm_proxy(orthanc.root_url, storms=3) as server:
        yield server


def test_503_storm_is_retried_with_backoff_then_stored(
    orthanc: OrthancServer, storm: StormServer
) -> None:
    sleeps: list[float] = []
    settings = orthanc.settings(
        url=f"http://127.0.0.1:{storm.port}/dicom-web/", max_attempts=5, backoff_initial=0.2
    )
    ds = make_ct_dataset()
    with DicomWebClient(settings, environ=orthanc.environ(), sleep=sleeps.append) as client:
        [result] = client.store([ds])
        assert (result.status, result.http_status, result.attempts) == (StoreStatus.STORED, 200, 4)
        assert client.qido_instance_exists(
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )
    assert storm.seen[:4] == ["POST"] * 4
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps, start=1):
        ceiling = 0.2 * 2 ** (attempt - 1)
        assert ceiling / 2 <= delay <= ceiling
