"""AWS credentials for relays: an STS session limited to the transfer's prefixes, and a botocore
credential provider that reads it from the relay's credential file.

**Minting** (in the task, through ``S3Hook``'s connection). A session policy allows ``s3:GetObject``
(reading gateway) or ``s3:PutObject`` (writing gateway, which covers the parts of a multipart
upload) on ``arn:aws:s3:::<bucket>/<prefix>*`` only, plus the KMS calls S3 makes on the session's
behalf for encrypted buckets; the session's rights are those of the connection's identity *and* this
policy. Which STS call mints it depends on the connection:

* a connection with ``role_arn`` (``assume_role``): ``AssumeRole`` of that role with the policy,
  called with the connection's base credentials, as ``S3Hook`` itself assumes it; up to 12 hours
  (the role's ``MaxSessionDuration``; one hour when the role allows no more);
* long-term keys of an IAM user: ``GetFederationToken`` with the policy, up to 36 hours;
* temporary credentials of an assumed role (an instance profile, SSO): ``AssumeRole`` of the same
  role with the policy (one hour: role chaining), when the role's trust policy allows it; otherwise
  the connection's own credentials, renewed by the controller, with a warning.

Each session lasts as long as the fleet where the cloud allows (a transfer left to run detached
needs no renewal then), else it is renewed before it expires.

**Reading** (on the relay, no Airflow). :func:`file_session` is a boto3 session whose credentials
are botocore ``RefreshableCredentials`` loaded from the credential file: within botocore's refresh
window before their expiry they are read again from the file, which the controller has replaced by
then, so a gateway never restarts for new credentials.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_skyplane.exceptions import CredentialsError
from airflow_skyplane.storage.grants import Grant, Issued

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: STS limits: a session lasts 15 minutes at least; AssumeRole 12 hours at most (1 hour by default and
#: for role chaining), GetFederationToken 36 hours; a session policy is at most 2048 characters
MIN_SESSION_S = 900
MAX_ASSUME_ROLE_S = 12 * 3600
ROLE_CHAINING_S = 3600
MAX_FEDERATION_S = 36 * 3600
MAX_POLICY_CHARS = 2048
#: how long the connection's own temporary credentials are counted on: botocore renews them 15 minutes
#: before they expire, so what it hands out lasts 10 minutes at least
OWN_TEMPORARY_S = 600


def _literal(prefix: str) -> str:
    """A key prefix in an ARN: ``*``, ``?`` and ``$`` taken literally (IAM policy variables)."""
    return "".join("${" + c + "}" if c in "*?$" else c for c in prefix)


def session_policy(partition: str, grant: Grant, *, whole_bucket: bool = False) -> str:
    """The session policy of ``grant``: its objects only, read or write (JSON text)."""
    prefixes = [""] if whole_bucket else list(grant.prefixes)
    statements: list[dict[str, Any]] = [
        {
            "Sid": "TransferObjects",
            "Effect": "Allow",
            "Action": ["s3:PutObject"] if grant.write else ["s3:GetObject"],
            "Resource": [f"arn:{partition}:s3:::{grant.bucket}/{_literal(p)}*" for p in prefixes],
        },
        {  # SSE-KMS buckets: S3 calls KMS with the caller's rights
            "Sid": "KmsThroughS3",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": "*",
            "Condition": {"StringLike": {"kms:ViaService": "s3.*.amazonaws.com"}},
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, separators=(",", ":"))


def _policy(partition: str, grant: Grant) -> str:
    policy = session_policy(partition, grant)
    if len(policy) > MAX_POLICY_CHARS:
        log.warning(
            "s3://%s: the transfer's prefixes make a session policy longer than STS takes; the relays' "
            "credentials are limited to the bucket instead",
            grant.bucket,
        )
        policy = session_policy(partition, grant, whole_bucket=True)
    return policy


def _code(err: BaseException) -> str:
    return str((getattr(err, "response", None) or {}).get("Error", {}).get("Code", ""))


def _duration(grant: Grant, most: int) -> int:
    return int(min(most, max(MIN_SESSION_S, grant.lifetime())))


def _issued(credentials: dict[str, Any], what: str) -> Issued:
    expiration = credentials["Expiration"]
    if isinstance(expiration, str):
        expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    return Issued(
        {
            "access_key_id": credentials["AccessKeyId"],
            "secret_access_key": credentials["SecretAccessKey"],
            "session_token": credentials["SessionToken"],
        },
        expiration.timestamp(),
        what,
    )


def _where(grant: Grant) -> str:
    return ", ".join(f"s3://{grant.bucket}/{p}" for p in grant.prefixes) + (
        " (write)" if grant.write else " (read)"
    )


def issue(conn_id: str | None, client: Any, grant: Grant) -> Issued:
    """Credentials for a relay to do what ``grant`` allows, minted from connection ``conn_id``
    (``client``: the task's S3 client of that connection, for its region and partition)."""
    from airflow.providers.amazon.aws.hooks.base_aws import BaseSessionFactory
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook
    from botocore.exceptions import BotoCoreError, ClientError

    hook = S3Hook(aws_conn_id=conn_id)
    conn = hook.conn_config
    region = client.meta.region_name
    via = f"connection {conn_id!r}" if conn_id else "the default AWS credentials"
    if grant.mode == "connection":
        return _own(hook, region, via, grant)
    policy = _policy(client.meta.partition, grant)
    try:
        if conn.role_arn and conn.assume_role_method in (None, "assume_role"):
            base = BaseSessionFactory(conn=conn, region_name=region).basic_session
            sts = base.client(
                "sts",
                endpoint_url=conn.get_service_endpoint_url("sts", sts_connection_assume=True),
                config=conn.botocore_config,
            )
            return _assume(
                sts, conn.role_arn, grant, policy, dict(conn.assume_role_kwargs), MAX_ASSUME_ROLE_S
            )
        session = hook.get_session(region_name=region)
        found = session.get_credentials()
        frozen = found.get_frozen_credentials() if found is not None else None
        if frozen is None:
            raise CredentialsError(
                f"no AWS credentials found with {via} to mint the relays' credentials: set login/password "
                "(access key) or a role in the aws connection"
            )
        sts = session.client(
            "sts", endpoint_url=conn.get_service_endpoint_url("sts"), config=conn.botocore_config
        )
        if not frozen.token:  # an IAM user's long-term keys
            response = sts.get_federation_token(
                Name=grant.session_name[:32],
                Policy=policy,
                DurationSeconds=_duration(grant, MAX_FEDERATION_S),
            )
            return _issued(response["Credentials"], f"STS federation token limited to {_where(grant)}")
        return _chain(sts, hook, region, via, grant, policy)
    except ClientError as err:
        code = _code(err)
        if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
            raise CredentialsError(
                f"{via} may not mint the relays' credentials for {_where(grant)} ({code}): allow it "
                "sts:GetFederationToken (IAM user keys) or sts:AssumeRole of its role_arn (see "
                "docs/connections.md), or set relay_credentials='connection' to hand relays the "
                "connection's own credentials"
            ) from None
        raise CredentialsError(
            f"STS refused the relays' credentials for {_where(grant)} with {via} ({code}): check the "
            "aws connection's role_arn and keys"
        ) from None
    except BotoCoreError as err:
        raise CredentialsError(
            f"cannot reach STS to mint the relays' credentials with {via} ({type(err).__name__}): check "
            "the connection's region and endpoint (service_config.sts.endpoint_url)"
        ) from None


def _assume(sts: Any, role_arn: str, grant: Grant, policy: str, extra: dict[str, Any], most: int) -> Issued:
    from botocore.exceptions import ClientError

    request = {
        **{k: v for k, v in extra.items() if k not in ("DurationSeconds", "Policy", "RoleSessionName")},
        "RoleArn": role_arn,
        "RoleSessionName": grant.session_name[:64],
        "Policy": policy,
        "DurationSeconds": _duration(grant, most),
    }
    try:
        response = sts.assume_role(**request)
    except ClientError as err:
        if _code(err) != "ValidationError" or request["DurationSeconds"] <= ROLE_CHAINING_S:
            raise
        # the role's MaxSessionDuration (1 hour unless raised) is below the fleet's lifetime: the
        # controller renews the session before it ends
        request["DurationSeconds"] = ROLE_CHAINING_S
        response = sts.assume_role(**request)
    return _issued(response["Credentials"], f"STS session of {role_arn} limited to {_where(grant)}")


def _chain(sts: Any, hook: Any, region: str | None, via: str, grant: Grant, policy: str) -> Issued:
    """Temporary credentials of an assumed role: the same role again with the policy, if its trust
    policy allows; else the connection's own credentials (they cannot be narrowed)."""
    from botocore.exceptions import ClientError

    arn = sts.get_caller_identity()["Arn"]
    parts = arn.split(":")
    if len(parts) == 6 and parts[5].startswith("assumed-role/"):
        role = f"arn:{parts[1]}:iam::{parts[4]}:role/{parts[5].split('/')[1]}"
        try:
            return _assume(sts, role, grant, policy, {}, ROLE_CHAINING_S)
        except ClientError as err:
            if _code(err) not in ("AccessDenied", "AccessDeniedException"):
                raise
    log.warning(
        "%s holds temporary credentials that cannot be narrowed to %s (no role_arn in the connection, "
        "and its role may not assume itself): the relays get the connection's own credentials, renewed "
        "before they expire",
        via,
        _where(grant),
    )
    return _own(hook, region, via, grant)


def _own(hook: Any, region: str | None, via: str, grant: Grant) -> Issued:
    """The connection's own credentials, as its hook resolves them now."""
    found = hook.get_session(region_name=region).get_credentials()
    frozen = found.get_frozen_credentials() if found is not None else None
    if frozen is None:
        raise CredentialsError(f"no AWS credentials found with {via}: set login/password or a role")
    fields = {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key}
    if frozen.token:
        fields["session_token"] = frozen.token
    expires = time.time() + OWN_TEMPORARY_S if frozen.token else None
    return Issued(fields, expires, f"the credentials of {via} (not narrowed)", scoped=False)
