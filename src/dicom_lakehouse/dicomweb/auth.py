"""Authentication for DICOMweb requests: none, HTTP basic, Microsoft Entra bearer tokens.

Each scheme is a :class:`requests.auth.AuthBase`. Secrets (the password, the token)
live in private attributes only: never in reprs, log records or exception messages,
and the objects refuse to be pickled (build them where they are used, from
:class:`~dicom_lakehouse.dicomweb.DicomWebSettings`, which holds no secret: the
password is read from the environment variable that ``password_env`` names).
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import requests
from requests.auth import AuthBase

from dicom_lakehouse.errors import DicomWebAuthError

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

__all__ = [
    "DICOM_SCOPE",
    "BasicAuth",
    "EntraTokenAuth",
    "describe_auth",
    "password_from_env",
]

logger = logging.getLogger(__name__)

#: Token scope of the Azure DICOM service (audience https://dicom.healthcareapis.azure.com).
DICOM_SCOPE = "https://dicom.healthcareapis.azure.com/.default"


class _NoPickle:
    __slots__ = ()

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"{type(self).__name__} holds a secret and is not picklable; "
            "ship DicomWebSettings and build the client where it is used"
        )


def password_from_env(password_env: str, environ: Mapping[str, str] | None = None) -> str:
    """Read the password from the variable named ``password_env`` (its value never shown)."""
    value = (os.environ if environ is None else environ).get(password_env)
    if not value:
        raise DicomWebAuthError(
            f"basic auth: environment variable {password_env!r} (dicomweb.password_env) "
            "is not set or empty"
        )
    return value


class BasicAuth(_NoPickle, AuthBase):
    """HTTP basic authentication with a redacted repr."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        self._header = f"Basic {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=<redacted>)"

    def describe(self) -> str:
        """A safe description for error messages."""
        return f"basic auth as {self.username!r}"


class EntraTokenAuth(_NoPickle, AuthBase):
    """Bearer tokens from a :class:`azure.core.credentials.TokenCredential`.

    The token is cached and refreshed ``refresh_margin`` seconds before ``expires_on``
    (at most half the token's lifetime, so short-lived tokens are not refetched on every
    request). Thread-safe. ``credential=None`` uses ``DefaultAzureCredential``.
    """

    def __init__(
        self,
        credential: TokenCredential | None = None,
        *,
        scope: str = DICOM_SCOPE,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = DefaultAzureCredential()
        self._credential = credential
        self.scope = scope
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._fetched_at = 0.0

    def _needs_refresh(self, now: float) -> bool:
        token = self._token
        if token is None:
            return True
        lifetime = max(0.0, token.expires_on - self._fetched_at)
        margin = min(self.refresh_margin, lifetime / 2)
        return now >= token.expires_on - margin

    def token(self) -> str:
        """The current access token, fetched or refreshed when due."""
        with self._lock:
            now = self._clock()
            token = self._token
            if token is None or self._needs_refresh(now):
                token = self._fetch()
                self._token, self._fetched_at = token, now
                logger.debug("fetched a Microsoft Entra token for %s", self.scope)
            return token.token

    def _fetch(self) -> AccessToken:
        from azure.core.exceptions import AzureError

        try:
            return self._credential.get_token(self.scope)
        except AzureError as exc:
            raise DicomWebAuthError(
                f"could not get a Microsoft Entra token for scope {self.scope!r} "
                f"({type(exc).__name__})"
            ) from exc

    def invalidate(self) -> None:
        """Drop the cached token (the next request fetches a new one)."""
        with self._lock:
            self._token = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        return request

    def __repr__(self) -> str:
        return f"EntraTokenAuth(scope={self.scope!r}, credential={type(self._credential).__name__})"

    def describe(self) -> str:
        """A safe description for error messages."""
        return f"Microsoft Entra token for {self.scope!r}"


def describe_auth(auth: Any) -> str:
    """Describe an auth object without its secret."""
    describe = getattr(auth, "describe", None)
    return describe() if callable(describe) else "no authentication"
