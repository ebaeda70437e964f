"""What AWS does that moto does not, in a proxy in front of moto: sessions that expire, and console
output that shows a VM's host keys.

:class:`AWSFront` is a :class:`~airflow_skyplane.testing.faultproxy.FaultProxy` to moto; a test points
the AWS connection's ``endpoint_url`` (and ``service_config.sts.endpoint_url``) at it. It

* records every STS session it sees moto hand out (``AssumeRole``, ``GetFederationToken``,
  ``GetSessionToken``): its name, access key id and expiry; with ``session_lifetime_s`` it makes the
  sessions named ``skyplane-*`` (the relays') expire after that many seconds, so that a test sees them
  expire and be renewed. moto gives every federation token the same example key; the front gives
  each its own, as AWS does;
* refuses every request signed with the key of a session past its expiry, as AWS does
  (``ExpiredToken``): moto accepts expired sessions;
* answers EC2 ``GetConsoleOutput`` with what the emulated VM printed at boot
  (:meth:`AWSFront.set_console`, called by :class:`~airflow_skyplane.testing.vms.EmulatedVMs` with
  the host keys of the VM's sshd, as cloud-init prints them), base64 as the API returns it; empty for
  an instance that has printed nothing yet (moto returns a fixed text).

It counts what it did: ``sessions``, the requests each access key signed (``signed``), and the
requests refused for an expired session (``refused_expired``). Standard library only.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
import string
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from airflow_skyplane.testing.faultproxy import FaultProxy, ProxyRequest, ProxyResponse

_CREDENTIAL = re.compile(r"Credential=([A-Z0-9]+)/\d{8}/([\w-]+)/([\w-]+)/")
_STS_ACTIONS = ("AssumeRole", "GetFederationToken", "GetSessionToken")


@dataclass(frozen=True)
class Session:
    """An STS session the front saw handed out."""

    action: str
    name: str
    access_key_id: str
    expires_at: float
    #: the session policy it was asked with (JSON text), if any
    policy: str = ""


@dataclass
class FrontCounters:
    sessions: list[Session] = field(default_factory=list)
    #: access key id -> (method, path) of every request it signed
    signed: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    refused_expired: list[tuple[str, str, str]] = field(default_factory=list)
    consoles_served: dict[str, int] = field(default_factory=dict)


def _form(request: ProxyRequest) -> dict[str, str]:
    if request.method != "POST" or "x-www-form-urlencoded" not in request.header("Content-Type"):
        return {}
    return {k: v[0] for k, v in urllib.parse.parse_qs(request.body.decode(errors="replace")).items()}


def _key_of(request: ProxyRequest) -> tuple[str, str] | None:
    """(access key id, service) a request was signed with."""
    found = _CREDENTIAL.search(request.header("Authorization"))
    if found:
        return found.group(1), found.group(3)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.path).query)
    credential = query.get("X-Amz-Credential", [""])[0].split("/")
    return (credential[0], credential[3]) if len(credential) >= 4 else None


def _xml(status: int, body: str) -> ProxyResponse:
    return ProxyResponse(status, [("Content-Type", "text/xml")], body.encode())


def _expired(service: str) -> ProxyResponse:
    message = "The security token included in the request is expired"
    if service == "s3":
        return _xml(400, f"<Error><Code>ExpiredToken</Code><Message>{message}</Message></Error>")
    if service == "sts":
        return _xml(
            403,
            f"<ErrorResponse><Error><Type>Sender</Type><Code>ExpiredToken</Code><Message>{message}"
            "</Message></Error></ErrorResponse>",
        )
    error = f"<Error><Code>ExpiredToken</Code><Message>{message}</Message></Error>"
    return _xml(400, f"<Response><Errors>{error}</Errors></Response>")


def _random(prefix: str, length: int) -> str:
    alphabet = string.ascii_uppercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


class AWSFront(FaultProxy):
    """A proxy to moto (``upstream``) that makes STS sessions expire and serves console output."""

    def __init__(self, upstream: str, *, session_lifetime_s: float | None = None) -> None:
        super().__init__(upstream)
        self.session_lifetime_s = session_lifetime_s
        self.front = FrontCounters()
        self._consoles: dict[str, str] = {}
        self._expiry: dict[str, float] = {}
        self._front_lock = threading.Lock()
        self.intercept(self._answer)
        self.rewrite(self._sts_answer)

    def set_console(self, instance_id: str, text: str) -> None:
        """What instance ``instance_id`` printed on its console (the VM's boot)."""
        with self._front_lock:
            self._consoles[instance_id] = text

    def sessions(self, prefix: str = "skyplane") -> list[Session]:
        with self._front_lock:
            return [s for s in self.front.sessions if s.name.startswith(prefix)]

    # -- requests ----------------------------------------------------------------------------------
    def _answer(self, request: ProxyRequest) -> ProxyResponse | None:
        signer = _key_of(request)
        if signer is not None:
            key, service = signer
            now = time.time()
            with self._front_lock:
                self.front.signed.setdefault(key, []).append((request.method, request.path))
                expires = self._expiry.get(key)
                if expires is not None and now >= expires:
                    self.front.refused_expired.append((key, request.method, request.path))
                    return _expired(service)
        form = _form(request)
        if form.get("Action") == "GetConsoleOutput":
            instance = form.get("InstanceId", "")
            with self._front_lock:
                text = self._consoles.get(instance)
                if text is not None:
                    self.front.consoles_served[instance] = self.front.consoles_served.get(instance, 0) + 1
            if text is None:
                return None  # moto checks the instance exists; its fixed text is blanked on the way back
            return self._console(instance, text)
        return None

    @staticmethod
    def _console(instance: str, text: str) -> ProxyResponse:
        output = base64.b64encode(text.encode()).decode()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return _xml(
            200,
            '<GetConsoleOutputResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>{_random('', 8)}</requestId><instanceId>{instance}</instanceId>"
            f"<timestamp>{stamp}</timestamp><output>{output}</output></GetConsoleOutputResponse>",
        )

    def _sts_answer(self, request: ProxyRequest, response: ProxyResponse) -> ProxyResponse:
        form = _form(request)
        action = form.get("Action", "")
        if action == "GetConsoleOutput" and response.status == 200:  # an instance that printed nothing yet
            body = re.sub(rb"<output>.*?</output>", b"<output></output>", response.body, flags=re.S)
            return ProxyResponse(response.status, response.headers, body, response.reason)
        if action not in _STS_ACTIONS or response.status != 200:
            return response
        text = response.body.decode()
        name = form.get("RoleSessionName") or form.get("Name") or ""
        if action == "GetFederationToken":  # one key per token, as AWS gives
            fresh = {
                "AccessKeyId": _random("ASIA", 16),
                "SecretAccessKey": secrets.token_urlsafe(30),
                "SessionToken": secrets.token_urlsafe(90),
            }
            for tag, value in fresh.items():
                text = re.sub(f"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", text)
        found = re.search(r"<Expiration>([^<]+)</Expiration>", text)
        key = re.search(r"<AccessKeyId>([^<]+)</AccessKeyId>", text)
        if not found or not key:
            return response
        expires = dt.datetime.fromisoformat(found.group(1).replace("Z", "+00:00")).timestamp()
        if self.session_lifetime_s is not None and name.startswith("skyplane"):
            expires = time.time() + self.session_lifetime_s
            stamp = dt.datetime.fromtimestamp(expires, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            text = text.replace(found.group(0), f"<Expiration>{stamp}</Expiration>")
        with self._front_lock:
            self._expiry[key.group(1)] = expires
            self.front.sessions.append(Session(action, name, key.group(1), expires, form.get("Policy", "")))
        return ProxyResponse(response.status, response.headers, text.encode(), response.reason)
