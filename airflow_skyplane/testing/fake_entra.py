"""The token service of a fake Microsoft Entra ID tenant, served by
:class:`~airflow_skyplane.testing.fake_arm.FakeARM`.

Entra ID has no emulator. A service principal's login (``ClientSecretCredential`` of
``azure-identity``, which asks MSAL) needs two answers from its authority: the tenant's OpenID
configuration (``/<tenant>/v2.0/.well-known/openid-configuration``) and a token from its token
endpoint (``/<tenant>/oauth2/v2.0/token``, the ``client_credentials`` grant with the client id and
secret). :class:`EntraTokens` gives both for the principals registered with it, refuses any other
login as Entra ID does (``invalid_client``), and checks the bearer tokens the management clients
then send, so a test proves the credentials of the connection are the ones used.
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any
from urllib.parse import parse_qs


class EntraTokens:
    """Service principals of fake tenants, and the access tokens issued to them."""

    def __init__(self, *, lifetime_s: int = 3600) -> None:
        self.lifetime_s = lifetime_s
        self._principals: dict[tuple[str, str], str] = {}  # (tenant, client id) -> secret
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client id, expiry)
        self._lock = threading.Lock()
        #: (tenant, client id, scope) of every token issued
        self.issued: list[tuple[str, str, str]] = []

    def add_principal(self, tenant: str, client_id: str, client_secret: str) -> None:
        """Admit the service principal ``client_id`` of ``tenant`` with ``client_secret``."""
        with self._lock:
            self._principals[(tenant, client_id)] = client_secret

    @property
    def enforced(self) -> bool:
        """Whether any principal is registered: then every management request needs a token."""
        return bool(self._principals)

    def answer(self, base_url: str, method: str, path: str, form: bytes) -> tuple[int, Any] | None:
        """The answer to a request of the token service, or None when ``path`` is not one."""
        parts = path.split("?", 1)[0].strip("/").split("/")
        if len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            tenant = parts[0]
            root = f"{base_url}/{tenant}"
            return 200, {
                "issuer": f"{root}/v2.0",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "token_endpoint": f"{root}/oauth2/v2.0/token",
                "response_types_supported": ["code", "token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"] and method == "POST":
            return self._token(parts[0], {k: v[0] for k, v in parse_qs(form.decode()).items()})
        return None

    def _token(self, tenant: str, form: dict[str, str]) -> tuple[int, Any]:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        with self._lock:
            expected = self._principals.get((tenant, client_id))
            if form.get("grant_type") != "client_credentials" or expected is None or expected != secret:
                return 401, {
                    "error": "invalid_client",
                    "error_description": f"AADSTS7000215: Invalid client secret provided ({client_id}).",
                }
            token = secrets.token_urlsafe(24)
            self._tokens[token] = (client_id, time.time() + self.lifetime_s)
            self.issued.append((tenant, client_id, form.get("scope", "")))
        return 200, {"token_type": "Bearer", "expires_in": self.lifetime_s, "access_token": token}

    def client_of(self, authorization: str | None) -> str | None:
        """The client id of the live token ``authorization`` carries, or None."""
        with self._lock:
            found = self._tokens.get((authorization or "").removeprefix("Bearer "))
        return found[0] if found is not None and found[1] > time.time() else None

    def check(self, authorization: str | None) -> bool:
        """Whether ``authorization`` (a request's header) carries a live token issued here."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        with self._lock:
            found = self._tokens.get(authorization.removeprefix("Bearer "))
        return found is not None and found[1] > time.time()
