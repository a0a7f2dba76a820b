"""Deterministic UIDs and numbers for derived objects.

A derived object's UIDs are a hash of what it is derived from and how: the source
SeriesInstanceUID, the source SOP Instance UIDs (sorted, so the caller's order does not
matter), the deriver's name and version and the model's identity (empty without a model).
The same inputs always give the same UIDs, so a re-run stores the same instances again
instead of new copies; a new deriver or model version gives new ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

__all__ = ["DEFAULT_UID_PREFIX", "DerivationKey"]

DEFAULT_UID_PREFIX = PYDICOM_ROOT_UID
"""pydicom's root (``1.2.826.0.1.3680043.8.498.``); pass an organisation root to replace it."""

_NAMESPACE = "dicom_lakehouse.derive/1"  # bump only to change every derived UID on purpose


@dataclass(frozen=True, slots=True)
class DerivationKey:
    """What a derived object is made from and by; its hash gives the object's UIDs."""

    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    deriver: str
    deriver_version: str
    model: str = ""

    @classmethod
    def of(
        cls,
        series_instance_uid: str,
        sop_instance_uids: Iterable[str],
        deriver: str,
        deriver_version: str,
        model: str = "",
    ) -> DerivationKey:
        """A key with the SOP Instance UIDs sorted (the caller's order does not count)."""
        return cls(
            str(series_instance_uid),
            tuple(sorted(str(uid) for uid in sop_instance_uids)),
            deriver,
            deriver_version,
            model,
        )

    def uid(self, role: str, prefix: str = DEFAULT_UID_PREFIX) -> UID:
        """The UID for ``role`` (``series``, ``instance:1``, ...) of the derived object.

        The inputs go to :func:`pydicom.uid.generate_uid` as one JSON array, so no two
        different keys hash the same text (plain concatenation would mix up boundaries).
        """
        payload = json.dumps(
            [
                _NAMESPACE,
                role,
                self.series_instance_uid,
                list(self.sop_instance_uids),
                self.deriver,
                self.deriver_version,
                self.model,
            ],
            separators=(",", ":"),
        )
        return generate_uid(prefix=prefix, entropy_srcs=[payload])
