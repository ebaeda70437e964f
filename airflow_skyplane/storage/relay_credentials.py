"""What a relay reads: the credential file the controller wrote for its store, through each cloud
SDK's own refresh hook, so renewed credentials are taken up without a restart.

The gateway side only, apart from the minting on the task's side (:mod:`.aws_credentials`,
:mod:`.gcs_credentials`, :mod:`.azure_credentials`, which reach Airflow's hooks): this module imports
no Airflow, only the cloud SDKs a relay installs with the ``gateway`` extra.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import google.auth.credentials
from azure.core.credentials import AzureSasCredential

from airflow_skyplane.exceptions import CredentialsError
from airflow_skyplane.storage.grants import CredentialFile

if TYPE_CHECKING:
    import boto3


def file_session(path: str) -> boto3.Session:
    """A boto3 session whose credentials come from the credential file at ``path``, read again
    whenever botocore refreshes them (near their expiry)."""
    import boto3
    import botocore.session
    from botocore.credentials import CredentialProvider, RefreshableCredentials

    source = CredentialFile(path)

    def metadata() -> dict[str, Any]:
        fields = source.fields()
        expires = source.expires_at if source.expires_at is not None else time.time() + 365 * 86400
        return {
            "access_key": fields["access_key_id"],
            "secret_key": fields["secret_access_key"],
            "token": fields.get("session_token"),
            "expiry_time": datetime.fromtimestamp(expires, tz=timezone.utc).isoformat(),
        }

    class FromCredentialFile(CredentialProvider):  # type: ignore[misc]
        METHOD = "skyplane-credential-file"
        CANONICAL_NAME = "SkyplaneCredentialFile"

        def load(self) -> RefreshableCredentials:
            return RefreshableCredentials.create_from_metadata(
                metadata=metadata(), refresh_using=metadata, method=self.METHOD
            )

    core = botocore.session.get_session()
    core.get_component("credential_provider").insert_before("env", FromCredentialFile())
    return boto3.Session(botocore_session=core)


class FileToken(google.auth.credentials.Credentials):  # type: ignore[misc]
    """An access token read from a credential file, read again whenever google-auth refreshes it."""

    def __init__(self, path: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._file = CredentialFile(path)

    def refresh(self, request: Any) -> None:
        fields = self._file.fields()
        token = fields.get("token")
        if not isinstance(token, str) or not token:
            raise CredentialsError(f"the relay's credential file {str(self._file.path)!r} holds no token")
        self.token = token
        expires = self._file.expires_at
        self.expiry = (
            datetime.fromtimestamp(expires, tz=timezone.utc).replace(tzinfo=None)
            if expires is not None
            else None
        )


class FileSas(AzureSasCredential):  # type: ignore[misc]
    """A SAS read from a credential file; the Azure SDK asks for it on every request, and gets the
    file's current one."""

    def __init__(self, path: str) -> None:
        self._file = CredentialFile(path)
        super().__init__(self._read())

    def _read(self) -> str:
        sas = self._file.fields().get("sas")
        if not isinstance(sas, str) or not sas:
            raise CredentialsError(f"the relay's credential file {str(self._file.path)!r} holds no SAS")
        return sas

    @property
    def signature(self) -> str:
        return self._read()

    def __repr__(self) -> str:
        return f"FileSas({str(self._file.path)!r})"
