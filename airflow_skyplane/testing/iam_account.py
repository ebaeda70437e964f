"""An AWS account in moto with IAM enforced, whose task identity has exactly the policies a test gives.

:func:`enforce_iam` sets up, in a moto server of the test's own (IAM is the whole server's):

* an administrator (every action), for the test's set-up and checks;
* the role the task's connection names (``role_arn``) with the given policy attached, and a trust
  policy that lets the connection's user assume it;
* that user, whose own policy lets it assume the role (and nothing else, unless given more);

then turns moto's enforcement on (``/moto-api/reset-auth``, moto's own switch behind
``INITIAL_NO_AUTH_ACTION_COUNT``): from then on every request is checked against the signer's
policies, as AWS does, and refused otherwise.

Standard library and boto3 only (the ``sky`` extra).
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

ACCOUNT = "123456789012"  # moto's account
USER = "skyplane-worker"
ROLE = "skyplane-transfer"
ADMIN = "skyplane-admin"


@dataclass(frozen=True)
class IAMAccount:
    endpoint: str
    region: str
    admin_keys: tuple[str, str] = field(repr=False)
    user_keys: tuple[str, str] = field(repr=False)
    role_arn: str = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"

    def admin_client(self, service: str, region: str | None = None) -> Any:
        """A boto3 client of the administrator, straight to moto."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=region or self.region,
            aws_access_key_id=self.admin_keys[0],
            aws_secret_access_key=self.admin_keys[1],
        )

    def connection(self, endpoint: str | None = None) -> dict[str, Any]:
        """The task's Airflow connection: the user's keys and the role to assume; AWS calls, STS
        included, through ``endpoint`` (a front of moto) or moto itself."""
        url = endpoint or self.endpoint
        return {
            "conn_type": "aws",
            "login": self.user_keys[0],
            "password": self.user_keys[1],
            "extra": {
                "endpoint_url": url,
                "region_name": self.region,
                "role_arn": self.role_arn,
                "service_config": {"sts": {"endpoint_url": url}},
            },
        }


def _keys(iam: Any, user: str) -> tuple[str, str]:
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def enforce_iam(
    endpoint: str, role_policy: Mapping[str, Any], *, region: str = "us-east-1",
    user_policy: Mapping[str, Any] | None = None,
) -> IAMAccount:  # fmt: skip
    """Create the administrator, the role (with ``role_policy``) and the user (allowed to assume it,
    plus ``user_policy``) in the moto at ``endpoint``; then enforce IAM there."""
    import boto3

    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name=region,
        aws_access_key_id="setup", aws_secret_access_key="setup",  # noqa: S106 - before enforcement
    )  # fmt: skip
    iam.create_user(UserName=ADMIN)
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName=ADMIN, PolicyName="admin", PolicyDocument=json.dumps(everything))
    admin = _keys(iam, ADMIN)
    iam.create_user(UserName=USER)
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
    assume = {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}
    iam.put_user_policy(
        UserName=USER,
        PolicyName="assume-transfer-role",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [assume]}),
    )
    if user_policy:
        iam.put_user_policy(UserName=USER, PolicyName="extra", PolicyDocument=json.dumps(user_policy))
    trust = {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRole",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/{USER}"},
    }]}  # fmt: skip
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=43200)
    created = iam.create_policy(PolicyName="skyplane-transfer", PolicyDocument=json.dumps(role_policy))
    iam.attach_role_policy(RoleName=ROLE, PolicyArn=created["Policy"]["Arn"])
    user = _keys(iam, USER)
    request = urllib.request.Request(  # noqa: S310 - the test's own moto on loopback
        f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request, timeout=30).close()  # noqa: S310
    return IAMAccount(endpoint, region, admin, user, role_arn)


def documented_policy(markdown: str, name: str) -> dict[str, Any]:
    """The JSON policy a document shows after the marker ``<!-- policy: NAME -->`` (the first fenced
    block after it), so that a test enforces exactly what the documentation tells users to grant."""
    marker = f"<!-- policy: {name} -->"
    at = markdown.find(marker)
    if at < 0:
        raise LookupError(f"no policy {name!r} in the document (marker {marker!r})")
    start = markdown.index("```json", at) + len("```json")
    end = markdown.index("```", start)
    policy: dict[str, Any] = json.loads(markdown[start:end])
    return policy


@contextlib.contextmanager
def documented_account(
    workdir: str | os.PathLike[str], connections_md: str, *, session_lifetime_s: float
) -> Iterator[tuple[IAMAccount, Any]]:
    """A moto of its own with IAM enforced, the task's role holding exactly the ``aws-transfer``
    policy of ``connections_md`` (docs/connections.md), behind an
    :class:`~airflow_skyplane.testing.aws_front.AWSFront` whose relay sessions last
    ``session_lifetime_s``: yields the account and the front (connect through ``front.url``)."""
    from airflow_skyplane.testing.aws_front import AWSFront
    from airflow_skyplane.testing.sky import EmulatedSky

    with EmulatedSky(workdir, services=("s3",)) as sky:
        account = enforce_iam(sky.endpoint("s3"), documented_policy(connections_md, "aws-transfer"))
        with AWSFront(sky.endpoint("s3"), session_lifetime_s=session_lifetime_s) as front:
            yield account, front
