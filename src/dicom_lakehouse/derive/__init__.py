"""Derivers: DICOM objects made from one series, to write back through STOW-RS.

Pure Python (pydicom, highdicom, numpy; MLflow only to load a model). A
:class:`Deriver` takes the full datasets of one series and returns derived datasets
that reference their sources, share their study, carry deterministic UIDs and are
Explicit VR Little Endian. Get one by name::

    sc = get_deriver("sc")                               # montage Secondary Capture
    seg = get_deriver("seg", model_uri="models:/lung-seg/3")  # MLflow pyfunc mask model
    seg = get_deriver("seg", mask_fn=my_fn, model_name="thr", model_version="2")

Errors are :class:`~dicom_lakehouse.errors.DeriveError` with a stable ``reason``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dicom_lakehouse.derive.base import Deriver, SourceSeries, load_series, sort_sources
from dicom_lakehouse.derive.model import MaskFn, MaskModel, as_mask, load_mask_model
from dicom_lakehouse.derive.sc import SecondaryCaptureDeriver
from dicom_lakehouse.derive.seg import SegmentationDeriver
from dicom_lakehouse.derive.uids import DEFAULT_UID_PREFIX, DerivationKey
from dicom_lakehouse.errors import ConfigError, DeriveError

__all__ = [
    "DEFAULT_UID_PREFIX",
    "DERIVERS",
    "DerivationKey",
    "DeriveError",
    "Deriver",
    "MaskFn",
    "MaskModel",
    "SecondaryCaptureDeriver",
    "SegmentationDeriver",
    "SourceSeries",
    "as_mask",
    "get_deriver",
    "load_mask_model",
    "load_series",
    "sort_sources",
]


def _seg(
    *,
    model: MaskModel | MaskFn | str | None = None,
    model_uri: str | None = None,
    mask_fn: MaskFn | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    tracking_uri: str | None = None,
    registry_uri: str | None = None,
    **options: Any,
) -> SegmentationDeriver:
    given = [m for m in (model, model_uri, mask_fn) if m is not None]
    if len(given) != 1:
        raise ConfigError("seg needs exactly one of 'model', 'model_uri' or 'mask_fn'")
    if (tracking_uri or registry_uri) and model_uri is None:
        raise ConfigError("'tracking_uri'/'registry_uri' go with 'model_uri' only")
    chosen = given[0]
    if model_uri is not None and (tracking_uri or registry_uri):
        chosen = load_mask_model(model_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    if model_name is not None or model_version is not None:
        if mask_fn is None:
            raise ConfigError("'model_name'/'model_version' go with 'mask_fn' only")
        chosen = MaskModel.from_callable(mask_fn, name=model_name, version=model_version)
    return SegmentationDeriver(chosen, **options)


DERIVERS: dict[str, Callable[..., Deriver]] = {
    SecondaryCaptureDeriver.name: SecondaryCaptureDeriver,
    SegmentationDeriver.name: _seg,
}
"""Deriver factories by name; :func:`get_deriver` passes the options on."""


def get_deriver(name: str, **options: Any) -> Deriver:
    """The deriver called ``name`` (``sc``, ``seg``) built with ``options``.

    ``sc`` options: see :class:`SecondaryCaptureDeriver`. ``seg`` takes exactly one of
    ``model`` (a :class:`MaskModel`, callable or URI), ``model_uri`` (an MLflow model URI,
    resolved in the store ``tracking_uri``/``registry_uri`` when given) or ``mask_fn`` (a
    callable, with optional ``model_name``/``model_version``), plus the options of
    :class:`SegmentationDeriver`. Raises
    :class:`~dicom_lakehouse.errors.ConfigError` for an unknown name or option, and
    :class:`DeriveError` ``model_load_failed`` when a model cannot be loaded.
    """
    try:
        factory = DERIVERS[name]
    except KeyError:
        raise ConfigError(f"unknown deriver {name!r}; known: {sorted(DERIVERS)}") from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"invalid options for deriver {name!r}: {exc}") from exc
