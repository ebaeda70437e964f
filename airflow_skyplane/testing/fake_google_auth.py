"""Google's token service, faked on loopback, and a token check in front of the GCS emulator.

The GCS emulator accepts any request, with or without a token, so it cannot show which credentials
a gateway sends. Here:

* :class:`FakeGoogleAuth` is the token service of a service account key it makes
  (:meth:`~FakeGoogleAuth.service_account`, whose ``token_uri`` points at it): ``POST /token`` takes
  the JWT that google-auth signs with the key (the signature is checked with the key's public half)
  and answers an access token; ``POST /v1/token`` is the token exchange (STS) that downscopes a token
  it issued with a Credential Access Boundary, as Google's does (the downscoped token expires with
  its source). Tokens last ``token_lifetime_s``;
* :class:`GCSTokenCheck` is a proxy in front of the emulator that refuses (401) a request without a
  live token of that service, and (403) a downscoped token's request outside its boundary: the
  bucket, the role's permissions (``storage.objectViewer``: read; ``storage.objectAdmin``: read,
  write, delete) and a condition of the form ``resource.name.startsWith('...') || ...``. It records
  every request with the token's kind (``service-account`` or ``downscoped``), its subject and its
  serial number (which token it was, without the token).

Standard library and ``cryptography`` only.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from airflow_skyplane.testing.faultproxy import FaultProxy, ProxyRequest, ProxyResponse
from airflow_skyplane.testing.loopback_http import answer_json, serve, shut

ROLE_PERMISSIONS = {
    "roles/storage.objectViewer": {"get", "list"},
    "roles/storage.objectAdmin": {"get", "list", "create", "delete", "update"},
}
_STARTS = re.compile(r"^resource\.name\.startsWith\('((?:[^'\\]|\\.)*)'\)$")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Token:
    subject: str  # the service account's email
    expires_at: float
    #: the access boundary rules of a downscoped token (None: the account's own token)
    rules: list[dict[str, Any]] | None = None
    #: the order in which the fake issued it (a name for the token that is not the token)
    serial: int = 0

    @property
    def kind(self) -> str:
        return "service-account" if self.rules is None else "downscoped"


class FakeGoogleAuth:
    """The OAuth token endpoint and the token exchange of service accounts it made."""

    def __init__(self, *, token_lifetime_s: float = 3600.0) -> None:
        self.token_lifetime_s = token_lifetime_s
        self.tokens: dict[str, Token] = {}
        self.exchanges: list[dict[str, Any]] = []  # the boundaries asked for, in order
        self._keys: dict[str, Any] = {}  # email -> public key
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> FakeGoogleAuth:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass  # tokens travel here: log nothing

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode()).items()}
                answer_json(self, *owner.handle(self.path, form))

        self._server = serve(Handler, "fake-google-auth")
        return self

    def stop(self) -> None:
        shut(self._server)
        self._server = None

    def __enter__(self) -> FakeGoogleAuth:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def sts_endpoint(self) -> str:
        return self.url + "/v1/token"

    def service_account(self, name: str = "transfers", project: str = "skyplane-emulated") -> dict[str, str]:
        """A new service account's key file (JSON as Google gives it), its token URI here."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"{name}@{project}.iam.gserviceaccount.com"
        with self._lock:
            self._keys[email] = key.public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "token_uri": self.url + "/token",
        }

    # -- the endpoints ---------------------------------------------------------------------------
    def _issue(self, subject: str, expires_at: float, rules: list[dict[str, Any]] | None) -> str:
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            self.tokens[token] = Token(subject, expires_at, rules, serial=len(self.tokens) + 1)
        return token

    def handle(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path.startswith("/token"):
            subject = self._verify_jwt(form.get("assertion", ""))
            if subject is None:
                return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            expires = time.time() + self.token_lifetime_s
            token = self._issue(subject, expires, None)
            return 200, {
                "access_token": token,
                "expires_in": int(self.token_lifetime_s),
                "token_type": "Bearer",
            }
        if path.startswith("/v1/token"):
            source = self.lookup(form.get("subject_token", ""))
            if source is None or source.rules is not None:
                return 400, {"error": "invalid_grant", "error_description": "The subject token is invalid."}
            # the options come URL-quoted twice, as Google's endpoint takes them
            options = json.loads(urllib.parse.unquote(form.get("options") or "") or "{}")
            rules = options.get("accessBoundary", {}).get("accessBoundaryRules")
            if not rules:
                return 400, {"error": "invalid_request", "error_description": "No access boundary."}
            with self._lock:
                self.exchanges.append(options["accessBoundary"])
            token = self._issue(source.subject, source.expires_at, rules)  # it expires with its source
            return 200, {
                "access_token": token,
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer",
                "expires_in": max(1, int(source.expires_at - time.time())),
            }
        return 404, {"error": "not_found"}

    def _verify_jwt(self, assertion: str) -> str | None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        try:
            header, payload, signature = assertion.split(".")
            claims = json.loads(_unb64(payload))
            with self._lock:
                key = self._keys.get(claims.get("iss", ""))
            if key is None or claims.get("exp", 0) < time.time():
                return None
            key.verify(_unb64(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except (ValueError, InvalidSignature):
            return None
        return str(claims["iss"])

    def lookup(self, token: str) -> Token | None:
        """The live token ``token`` (None: unknown or expired)."""
        with self._lock:
            found = self.tokens.get(token)
        if found is None or found.expires_at <= time.time():
            return None
        return found


def allows(rules: list[dict[str, Any]], bucket: str, name: str | None, permission: str) -> bool:
    """Whether access boundary ``rules`` allow ``permission`` on object ``name`` of ``bucket`` (on
    the bucket itself when ``name`` is None)."""
    for rule in rules:
        if rule.get("availableResource") != f"//storage.googleapis.com/projects/_/buckets/{bucket}":
            continue
        granted: set[str] = set()
        for item in rule.get("availablePermissions", []):
            granted |= ROLE_PERMISSIONS.get(item.removeprefix("inRole:"), set())
        if permission not in granted:
            continue
        condition = (rule.get("availabilityCondition") or {}).get("expression")
        if condition is None:
            return True
        resource = f"projects/_/buckets/{bucket}" + (f"/objects/{name}" if name is not None else "")
        for clause in condition.split(" || "):
            found = _STARTS.match(clause.strip())
            if found is None:
                raise ValueError(f"the fake reads no condition like {clause!r}")
            prefix = re.sub(r"\\(.)", r"\1", found.group(1))
            if resource.startswith(prefix):
                return True
    return False


@dataclass
class Checked:
    """What the token check saw of one request."""

    kind: str  # service-account, downscoped, none (no token), invalid
    subject: str
    method: str
    bucket: str
    name: str | None
    permission: str
    status: int  # 0: forwarded; else the refusal
    path: str = ""
    #: which token it was, as the fake numbered it when it issued it (not the token)
    serial: int = 0
    #: when the request came (time.monotonic())
    at: float = 0.0


@dataclass
class _Uploads:
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # upload id -> (bucket, name)


class GCSTokenCheck(FaultProxy):
    """A proxy in front of the GCS emulator that lets through only requests with a live token of
    ``auth``, within the token's access boundary."""

    def __init__(self, upstream: str, auth: FakeGoogleAuth) -> None:
        super().__init__(upstream)
        self.auth = auth
        self.seen: list[Checked] = []
        self._uploads = _Uploads()
        self._seen_lock = threading.Lock()
        self.intercept(self._check)
        self.rewrite(self._remember_upload)

    def _operation(self, request: ProxyRequest) -> tuple[str, str | None, str] | None:
        """(bucket, object name or None, permission) of a JSON API request."""
        url = urllib.parse.urlsplit(request.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = url.path
        for lead in ("/download", "/upload"):
            if path.startswith(lead + "/storage/v1/"):
                path = path[len(lead) :]
        match = re.match(r"^/storage/v1/b/([^/]+)(?:/o(?:/(.+?))?)?(/compose)?$", path)
        if match is None:
            return None
        bucket, name, compose = match.group(1), match.group(2), match.group(3)
        name = urllib.parse.unquote(name) if name is not None else None
        if "/o" not in path:
            return bucket, None, "get"  # the bucket's metadata
        if url.path.startswith("/upload/"):
            if "upload_id" in query:
                with self._seen_lock:
                    known = self._uploads.names.get(query["upload_id"])
                return (known[0], known[1], "create") if known else (bucket, None, "create")
            return bucket, query.get("name") or _name_in_body(request.body), "create"
        if compose:
            return bucket, name, "create"
        if name is None:
            return bucket, None, "list"
        return bucket, name, {"GET": "get", "DELETE": "delete"}.get(request.method, "update")

    def _check(self, request: ProxyRequest) -> ProxyResponse | None:
        operation = self._operation(request)
        if operation is None:
            return None  # not the storage API (the emulator's own endpoints)
        bucket, name, permission = operation
        header = request.header("Authorization")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        found = self.auth.lookup(token) if token else None
        status = 0
        if found is None:
            status = 401
        elif found.rules is not None and not allows(found.rules, bucket, name, permission):
            status = 403
        kind = found.kind if found is not None else ("none" if not token else "invalid")
        with self._seen_lock:
            self.seen.append(
                Checked(
                    kind,
                    found.subject if found else "",
                    request.method,
                    bucket,
                    name,
                    permission,
                    status,
                    request.path,
                    found.serial if found else 0,
                    time.monotonic(),
                )
            )
        if status == 0:
            return None
        reason = "Invalid Credentials" if status == 401 else "Access denied by the credential access boundary"
        body = json.dumps({"error": {"code": status, "message": reason, "errors": [{"message": reason}]}})
        return ProxyResponse(status, [("Content-Type", "application/json")], body.encode())

    def _remember_upload(self, request: ProxyRequest, response: ProxyResponse) -> ProxyResponse:
        """A resumable upload's later requests name only its id: remember which object it writes."""
        if request.method == "POST" and "uploadType=resumable" in request.path:
            location = dict((k.lower(), v) for k, v in response.headers).get("location", "")
            upload = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query).get("upload_id")
            operation = self._operation(request)
            if upload and operation:
                with self._seen_lock:
                    self._uploads.names[upload[0]] = (operation[0], operation[1] or "")
        return response


def _name_in_body(body: bytes) -> str | None:
    """The object name in the JSON metadata of a multipart or resumable upload's first request."""
    start = body.find(b"{")
    if start < 0:
        return None
    try:
        metadata, _ = json.JSONDecoder().raw_decode(body[start:].decode(errors="replace"))
    except ValueError:
        return None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None
