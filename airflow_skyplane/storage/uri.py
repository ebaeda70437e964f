"""Parse the storage URIs users write in DAGs.

=========================================================  ======================================
URI                                                        store
=========================================================  ======================================
``s3://bucket/prefix``                                     Amazon S3 (``aws`` connection)
``gs://bucket/prefix``                                     Google Cloud Storage (``google_cloud_platform``)
``az://container/prefix``                                  Azure Blob, account from the ``wasb`` connection
``https://ACCOUNT.blob.core.windows.net/container/prefix``  Azure Blob, account named in the URI
``file:///absolute/directory``                             a local directory (tests, demos, NFS mounts)
=========================================================  ======================================

Everything after the bucket is a key prefix, kept verbatim (a trailing ``/`` matters: ``s3://b/logs``
also matches ``logs-2024/``, ``s3://b/logs/`` does not). Percent-escapes are decoded, so keys with
spaces can be written either way.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from airflow_skyplane.exceptions import InvalidURIError

SCHEMES = ("s3", "gs", "az", "file")
_EXAMPLES = "s3://bucket/prefix, gs://bucket/prefix, az://container/prefix or file:///absolute/path"

# S3 and GCS bucket names: 3-63 (GCS: up to 222 with dots) lowercase letters, digits, dots, dashes,
# underscores (GCS only); Azure containers: 3-63 lowercase letters, digits and single dashes.
_BUCKET = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$"),
    "az": re.compile(r"^(?!.*--)[a-z0-9][a-z0-9\-]{1,61}[a-z0-9]$"),
}
_AZURE_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.blob\.core\.windows\.net$")


@dataclass(frozen=True)
class StorageURI:
    """A parsed URI: ``scheme``, ``bucket`` (container, or the directory for ``file``), ``prefix``,
    and for Azure the ``account`` when the URI names it."""

    scheme: str
    bucket: str
    prefix: str = ""
    account: str | None = None

    def __str__(self) -> str:
        if self.scheme == "file":
            return (
                "file://" + os.path.join(self.bucket, self.prefix) if self.prefix else f"file://{self.bucket}"
            )
        if self.scheme == "az" and self.account:
            return f"https://{self.account}.blob.core.windows.net/{self.bucket}/{self.prefix}"
        return f"{self.scheme}://{self.bucket}/{self.prefix}"

    def overlaps(self, other: StorageURI) -> bool:
        """True when the two prefixes share objects: the same bucket, one prefix inside the other."""
        same = (self.scheme, self.bucket, self.account) == (other.scheme, other.bucket, other.account)
        return same and (self.prefix.startswith(other.prefix) or other.prefix.startswith(self.prefix))

    def join(self, key: str) -> str:
        """The URI of ``key`` (a key relative to the bucket)."""
        base = StorageURI(self.scheme, self.bucket, "", self.account)
        return str(base).rstrip("/") + "/" + key


def parse_uri(uri: str) -> StorageURI:
    """Parse ``uri``; :class:`InvalidURIError` names what is wrong and shows the accepted forms."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidURIError(f"storage URI {uri!r} is empty: write it as {_EXAMPLES}")
    if uri != uri.strip():
        raise InvalidURIError(f"storage URI {uri!r} has leading or trailing spaces: remove them")
    if "://" not in uri:
        raise InvalidURIError(f"storage URI {uri!r} has no scheme: write it as {_EXAMPLES}")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise InvalidURIError(
            f"storage URI {uri!r} has a query or fragment ('?' or '#'): percent-encode them in keys "
            "(%3F, %23) or remove them"
        )
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidURIError(
                f"storage URI {uri!r} names host {parts.netloc!r}: local paths are file:///absolute/path "
                "(three slashes)"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidURIError(f"storage URI {uri!r} is not an absolute path: use file:///absolute/path")
        normalized = os.path.normpath(path)
        if normalized != path.rstrip("/") and path != "/":
            raise InvalidURIError(
                f"storage URI {uri!r} contains '.', '..' or repeated slashes: write the plain path "
                f"file://{normalized}"
            )
        return StorageURI("file", normalized)
    if scheme in ("https", "http") and parts.hostname and _AZURE_HOST.match(parts.hostname):
        match = _AZURE_HOST.match(parts.hostname)
        assert match is not None
        container, _, prefix = parts.path.lstrip("/").partition("/")
        return _checked("az", container, unquote(prefix), uri, account=match["account"])
    if scheme not in ("s3", "gs", "az"):
        hint = (
            " (Azure Blob URIs are az://container/prefix or https://ACCOUNT.blob.core.windows.net/...)"
            if scheme in ("wasb", "wasbs", "abfs", "abfss", "https", "http")
            else ""
        )
        raise InvalidURIError(
            f"storage URI {uri!r} has unknown scheme {parts.scheme!r}{hint}: use one of s3, gs, az, file"
        )
    return _checked(scheme, parts.netloc, unquote(parts.path[1:]), uri)


def _checked(scheme: str, bucket: str, prefix: str, uri: str, account: str | None = None) -> StorageURI:
    kind = "container" if scheme == "az" else "bucket"
    if not bucket:
        raise InvalidURIError(f"storage URI {uri!r} names no {kind}: write it as {_EXAMPLES}")
    if not _BUCKET[scheme].match(bucket):
        allowed = {"s3": "digits, dots and dashes", "gs": "digits, dots, dashes and underscores"}
        raise InvalidURIError(
            f"storage URI {uri!r}: {bucket!r} is not a valid {scheme} {kind} name: use 3-63 lowercase "
            f"letters, {allowed.get(scheme, 'digits and single dashes')}, starting and ending with a "
            "letter or digit"
        )
    if "\x00" in prefix:
        raise InvalidURIError(f"storage URI {uri!r} contains a NUL character: remove it")
    return StorageURI(scheme, bucket, prefix, account)
