"""``dicom-lakehouse config show``: the resolved configuration as YAML, secrets masked.

:func:`render` prints every key of :class:`~dicom_lakehouse.config.Settings` (defaults
included) as YAML. Values of keys named like a secret (password, secret, token, key,
sas, credential, connection string) are shown as ``***``; ``*_env`` keys hold the NAME
of an environment variable and are shown as that name (or masked when the value is
not a valid name, e.g. a secret pasted there by mistake). Credentials embedded in URLs
(``scheme://user:pass@host``, ``?sig=...``) are masked wherever they appear.

:func:`load_with_sources` loads the settings like :func:`~dicom_lakehouse.config.
load_config` and also tells, for every key set by a layer, which layer set it (and
through which environment variable), so :func:`render` can annotate each line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from dicom_lakehouse.config import Settings, load_config
from dicom_lakehouse.errors import ConfigError

__all__ = [
    "MASK",
    "is_secret_key",
    "load_with_sources",
    "mask_secrets",
    "mask_text",
    "render",
    "sources_of",
]

logger = logging.getLogger(__name__)

MASK = "***"
KeyPath = tuple[str, ...]

_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_REF_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<default>:-[^}]*)?\}")
_WORD_SPLIT_RE = re.compile(r"[^A-Za-z0-9]+")
_SECRET_SUBSTRINGS = ("password", "passwd", "secret", "token", "credential", "connectionstring")
# Greedy up to the last "@": a port followed by "@" in a path is masked too (safe side).
_URL_USERINFO_RE = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^@\s]+@")
_QUERY_SECRET_RE = re.compile(
    r"(?P<head>[?&](?:sig|token|access_token|code|key|password|secret)=)[^&#\s]+",
    re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    """True for key names that may hold a secret (``*_env`` names hold env var NAMES)."""
    lowered = key.lower()
    if "connection_string" in lowered:
        return True
    for word in _WORD_SPLIT_RE.split(lowered):
        if not word:
            continue
        if any(part in word for part in _SECRET_SUBSTRINGS):
            return True
        if word.endswith("key") or word.startswith("sas"):
            return True
    return False


def _is_env_name_field(key: str) -> bool:
    return key.lower().endswith("_env")


def mask_text(text: str) -> str:
    """Mask credentials embedded in URLs (``user:pass@``, ``?sig=``) in free text."""
    text = _URL_USERINFO_RE.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m['head']}{MASK}", text)


def _mask_value(key: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _mask_value(str(k), v) for k, v in value.items()}
    if value is None:
        return None
    if _is_env_name_field(key):
        return value if isinstance(value, str) and _ENV_NAME_RE.fullmatch(value) else MASK
    if is_secret_key(key):
        return MASK
    if isinstance(value, list | tuple):
        return [_mask_value("", item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value


def mask_secrets(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` (nested mappings) with secret values replaced by ``***``."""
    return {str(k): _mask_value(str(k), v) for k, v in data.items()}


def _flow(value: Any) -> str:
    """One YAML scalar or flow sequence on one line."""
    text = yaml.safe_dump([value], default_flow_style=True, width=10**9, allow_unicode=True)
    return text.strip()[1:-1]


def _emit(
    data: Mapping[str, Any],
    sources: Mapping[KeyPath, str],
    path: KeyPath,
    indent: int,
    out: list[str],
) -> None:
    pad = "  " * indent
    for key, value in data.items():
        here = (*path, key)
        if isinstance(value, Mapping) and value:
            out.append(f"{pad}{_flow(key)}:")
            _emit(value, sources, here, indent + 1, out)
            continue
        line = f"{pad}{_flow(key)}: {_flow(value if not isinstance(value, Mapping) else {})}"
        source = sources.get(here)
        out.append(f"{line}  # {source}" if source else line)


def render(settings: Settings, sources: Mapping[KeyPath, str] | None = None) -> str:
    """The resolved configuration as YAML with secrets masked.

    ``sources`` (from :func:`load_with_sources`) adds a ``# from ...`` comment to each
    key a layer set; keys without one hold the code default.
    """
    data = mask_secrets(settings.model_dump(mode="json", by_alias=True))
    lines: list[str] = []
    _emit(data, {k: f"from {v}" for k, v in (sources or {}).items()}, (), 0, lines)
    return "\n".join(lines) + "\n"


def _leaves(data: Mapping[str, Any], path: KeyPath = ()) -> dict[KeyPath, Any]:
    found: dict[KeyPath, Any] = {}
    for key, value in data.items():
        here = (*path, str(key))
        if isinstance(value, Mapping):
            found.update(_leaves(value, here))  # an empty mapping merges into nothing
        else:
            found[here] = value
    return found


def _describe(label: str, raw: Any, environ: Mapping[str, str]) -> str:
    names = _ENV_REF_RE.finditer(raw) if isinstance(raw, str) else iter(())
    notes = []
    for match in names:
        name = match["name"]
        if name in environ:
            notes.append(f"${name}")
        elif match["default"] is not None:
            notes.append(f"default of ${{{name}}}")
        else:
            notes.append(f"${name} (unset)")
    return f"{label} ({', '.join(notes)})" if notes else label


def sources_of(
    paths: Sequence[str | Path],
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[KeyPath, str]:
    """Which layer (file or ``--set``) set each key last, and through which env var."""
    env = os.environ if environ is None else environ
    found: dict[KeyPath, str] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    for path in paths:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}") from exc
        if isinstance(loaded, Mapping):
            layers.append((str(path), loaded))
    if overrides:
        layers.append(("--set", overrides))
    for label, data in layers:
        for key, raw in _leaves(data).items():
            # deep_merge: a non-mapping replaces what earlier layers set below it, and a
            # mapping replaces an earlier non-mapping at one of its parents.
            for earlier in [
                k for k in found if k != key and (k[: len(key)] == key or key[: len(k)] == k)
            ]:
                del found[earlier]
            found[key] = _describe(label, raw, env)
    return found


def load_with_sources(
    paths: Sequence[str | Path], overrides: Mapping[str, Any] | None = None
) -> tuple[Settings, dict[KeyPath, str]]:
    """``load_config(paths, overrides)`` plus :func:`sources_of` for :func:`render`."""
    settings = load_config(paths, overrides)
    return settings, sources_of(paths, overrides)
