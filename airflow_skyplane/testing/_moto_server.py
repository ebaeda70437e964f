"""Start moto's server with what its IAM enforcement gets wrong about S3 put right.

moto names the action of ``HeadBucket`` ``s3:HeadBucket``, which AWS does not have: AWS authorizes
``HeadBucket`` with ``s3:ListBucket`` (the S3 API reference, HeadBucket, "Permissions"). With moto's
IAM enforcement on (``INITIAL_NO_AUTH_ACTION_COUNT``), a policy written for AWS would be refused the
probe of a bucket. This launcher maps the call to ``s3:ListBucket``.

moto's ``GetConsoleOutput`` answers the same made-up kernel log for every instance. Its instances
are records; the emulated VMs (:mod:`airflow_skyplane.testing.vms`) that play them write what their
boot prints (the SSH host keys, as cloud-init prints them) to ``$SKYPLANE_MOTO_CONSOLE_DIR/<instance
id>``, and this launcher answers that file's text, or no output before the VM has booted, as EC2 does.
Otherwise moto's own ``main`` runs unchanged. Used by :class:`airflow_skyplane.testing.sky.EmulatedSky`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

CONSOLE_DIR_VARIABLE = "SKYPLANE_MOTO_CONSOLE_DIR"


def _console_output(self: Any) -> Any:
    """``GetConsoleOutput`` from what the emulated VM printed (nothing before it booted)."""
    from moto.core.responses import ActionResult
    from moto.core.utils import utcnow
    from moto.ec2.utils import Base64EncodedString

    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    folder = os.environ.get(CONSOLE_DIR_VARIABLE)
    text = ""
    if folder:
        with contextlib.suppress(OSError):
            text = (Path(folder) / instance.id).read_text()
    result: dict[str, Any] = {"InstanceId": instance.id, "Timestamp": utcnow()}
    if text:
        result["Output"] = Base64EncodedString.from_raw_string(text)
    return ActionResult(result)


def main() -> None:
    from moto.ec2.responses.general import General
    from moto.s3 import responses
    from moto.server import main as moto_main

    responses.ACTION_MAP["BUCKET"]["HEAD"]["DEFAULT"] = "ListBucket"
    General.get_console_output = _console_output  # type: ignore[method-assign]
    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
