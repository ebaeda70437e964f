"""Start moto's server with what its IAM enforcement gets wrong about S3 put right.

moto names the action of ``HeadBucket`` ``s3:HeadBucket``, which AWS does not have: AWS authorizes
``HeadBucket`` with ``s3:ListBucket`` (the S3 API reference, HeadBucket, "Permissions"). With moto's
IAM enforcement on (``INITIAL_NO_AUTH_ACTION_COUNT``), a policy written for AWS would be refused the
probe of a bucket. This launcher maps the call to ``s3:ListBucket`` and otherwise runs moto's own
``main`` unchanged. Used by :class:`airflow_skyplane.testing.sky.EmulatedSky`.
"""

from __future__ import annotations

import sys


def main() -> None:
    from moto.s3 import responses
    from moto.server import main as moto_main

    responses.ACTION_MAP["BUCKET"]["HEAD"]["DEFAULT"] = "ListBucket"
    moto_main(sys.argv[1:])


if __name__ == "__main__":
    main()
