"""Mask models for the ``seg`` deriver: any callable, or an MLflow pyfunc loaded by URI.

The contract, for a plain callable and for the pyfunc's ``predict`` alike:

* input: one series as a C-contiguous ``numpy.float32`` array ``(frames, rows, columns)``
  in spatial order (see :func:`~dicom_lakehouse.derive.base.sort_sources`), Modality LUT
  applied (Hounsfield units for CT). Not a DataFrame: a pyfunc gets the array as it is,
  so log it with a tensor signature such as ``TensorSpec(np.float32, (-1, -1, -1))`` (or
  none; a fixed rows/columns signature refuses other image sizes).
* output: an array-like of the same shape, boolean, or integer/float holding only 0
  and 1 (uint8 is fine). Anything else is refused with ``invalid_mask``.

:class:`MaskModel` carries the model's name and version (and the MLflow URI, run id and
logged-model id when there are any); they go into the SEG's algorithm identification and,
through :attr:`MaskModel.identity`, into its UIDs. :func:`load_mask_model` imports MLflow
only when called (install the ``mlflow`` extra, or use the platform's MLflow).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_lakehouse.errors import DeriveError

__all__ = ["MaskFn", "MaskModel", "as_mask", "load_mask_model"]

logger = logging.getLogger(__name__)

MaskFn = Callable[[np.ndarray], Any]
"""``mask_fn(pixels[frames, rows, columns] float32) -> mask`` of the same shape."""

_VERSION_SUFFIX = re.compile(r"^\d+$")


@dataclass(frozen=True, slots=True)
class MaskModel:
    """A mask function with the provenance a derived segmentation records.

    ``version`` counts for the derived UIDs: a new model version gives new objects.
    """

    predict: MaskFn
    name: str
    version: str
    uri: str | None = None
    run_id: str | None = None
    model_id: str | None = None

    @classmethod
    def from_callable(
        cls, fn: MaskFn, *, name: str | None = None, version: str | None = None
    ) -> MaskModel:
        """Wrap a plain callable; ``name``/``version`` default to the callable's ``name`` and
        ``version`` attributes, else its ``__name__`` (or class name) and ``"0"``."""
        if isinstance(fn, MaskModel):
            return fn
        default_name = getattr(fn, "__name__", None) or type(fn).__name__
        return cls(
            predict=fn,
            name=str(name or getattr(fn, "name", None) or default_name),
            version=str(version or getattr(fn, "version", None) or "0"),
        )

    @property
    def identity(self) -> str:
        """Name, version, run id and logged-model id as one string (an input of the UIDs)."""
        return json.dumps([self.name, self.version, self.run_id or "", self.model_id or ""])

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        """The checked boolean mask for ``pixels`` (see :func:`as_mask`)."""
        try:
            raw = self.predict(pixels)
        except Exception as exc:  # the model is user code: any failure is the model's
            raise DeriveError(
                "model_failed", f"mask model {self.name!r} failed ({type(exc).__name__})"
            ) from exc
        return as_mask(raw, pixels.shape)


def as_mask(raw: Any, shape: tuple[int, ...]) -> np.ndarray:
    """``raw`` as a boolean array of ``shape``; raises ``invalid_mask`` when it is not one.

    Accepts booleans, and integers or floats that are all 0 or 1.
    """
    try:
        mask = np.asarray(raw.to_numpy() if hasattr(raw, "to_numpy") else raw)
    except (TypeError, ValueError) as exc:
        raise DeriveError(
            "invalid_mask", f"model output is not an array ({type(raw).__name__})"
        ) from exc
    if mask.shape != tuple(shape):
        raise DeriveError(
            "invalid_mask", f"model output has shape {mask.shape}, expected {tuple(shape)}"
        )
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype.kind not in "iuf":
        raise DeriveError("invalid_mask", f"model output has dtype {mask.dtype}, expected bool")
    if not np.isin(mask, (0, 1)).all():
        raise DeriveError("invalid_mask", "model output holds values other than 0 and 1")
    return mask.astype(bool)


def _shown(uri: str) -> str:
    """``uri`` without a query or fragment (where a signed URL keeps its token)."""
    return uri.split("?", 1)[0].split("#", 1)[0]


def _registered(
    model_uri: str, tracking_uri: str | None, registry_uri: str | None
) -> tuple[str, str] | None:
    """``(name, version)`` of a ``models:/name/version|latest|stage`` or ``models:/name@alias``
    URI, resolved in the model registry; None for any other URI."""
    if not model_uri.startswith("models:/"):
        return None
    path = model_uri.removeprefix("models:/").strip("/")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    if "/" in path:
        name, suffix = path.split("/", 1)
        if _VERSION_SUFFIX.match(suffix):
            return name, suffix
        quoted = name.replace("'", "\\'")
        versions = [
            v
            for v in client.search_model_versions(f"name = '{quoted}'")
            if suffix.lower() == "latest" or str(v.current_stage).lower() == suffix.lower()
        ]
        if not versions:
            raise DeriveError("model_load_failed", f"no version of model {_shown(model_uri)!r}")
        return name, str(max(int(v.version) for v in versions))
    if "@" in path:
        name, alias = path.rsplit("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    return None  # models:/<logged model id>


def _artifact_location(uri: str, tracking_uri: str | None, registry_uri: str | None) -> str:
    """Where the artifacts of a ``models:/name/version`` or ``models:/<logged model id>``
    URI are, looked up in the given store; any other URI as it is."""
    if not uri.startswith("models:/"):
        return uri
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri)
    path = uri.removeprefix("models:/").strip("/")
    if "/" in path:
        name, version = path.split("/", 1)
        uri = client.get_model_version_download_uri(name, version)
        if not uri.startswith("models:/"):
            return uri
        path = uri.removeprefix("models:/").strip("/")
    return str(client.get_logged_model(path).artifact_location)  # MLflow 3 logged model


def load_mask_model(
    model_uri: str, *, tracking_uri: str | None = None, registry_uri: str | None = None
) -> MaskModel:
    """Load an MLflow pyfunc mask model (``models:/name/1``, ``models:/name@alias``,
    ``models:/m-<id>``, ``runs:/<run id>/<path>``, a local path) as a :class:`MaskModel`.

    A registry URI is pinned to the version it resolves to before loading, so the version
    recorded is the version used; the URI recorded drops any query string (a signed URL's
    token). Unregistered models take their logged-model id (else run
    id) as the version. Raises :class:`DeriveError` ``model_load_failed``.

    ``tracking_uri`` (and ``registry_uri``, default: the tracking URI) name the MLflow
    store to resolve and fetch the model from, whatever the process-wide MLflow URIs and
    ``MLFLOW_*`` variables say; unset, MLflow's own resolution applies.
    """
    if tracking_uri is not None and registry_uri is None:
        registry_uri = tracking_uri
    try:
        import mlflow
        from mlflow.exceptions import MlflowException
    except ImportError as exc:
        raise DeriveError(
            "model_load_failed", "mlflow is not installed (the 'mlflow' extra)"
        ) from exc
    try:
        registered = _registered(model_uri, tracking_uri, registry_uri)
        pinned = f"models:/{registered[0]}/{registered[1]}" if registered else model_uri
        source = pinned
        if tracking_uri is not None or registry_uri is not None:
            # fetch from the named store: load_model (and download_artifacts for models:/
            # URIs, in MLflow 3.x) resolve against the process-wide URIs instead
            source = mlflow.artifacts.download_artifacts(
                artifact_uri=_artifact_location(pinned, tracking_uri, registry_uri),
                tracking_uri=tracking_uri,
            )
        pyfunc = mlflow.pyfunc.load_model(source)
        meta = pyfunc.metadata
        run_id = getattr(meta, "run_id", None) or None
        model_id = getattr(meta, "model_id", None) or None
        if registered is not None:
            name, version = registered
        else:
            info = mlflow.models.get_model_info(source)
            name = info.name or (info.artifact_path or "model").rstrip("/").rsplit("/", 1)[-1]
            version = model_id or run_id or str(info.model_uuid)
    except (MlflowException, OSError) as exc:
        raise DeriveError(
            "model_load_failed",
            f"cannot load mask model {_shown(model_uri)!r} ({type(exc).__name__})",
        ) from exc
    logger.info("mask model loaded: %s version %s", name, version)
    return MaskModel(pyfunc.predict, str(name), str(version), _shown(pinned), run_id, model_id)
