"""``python -m airflow_skyplane.gateway --program FILE``: run one gateway (see :mod:`.daemon`)."""

import sys

from airflow_skyplane.gateway.daemon import main

sys.exit(main())
