"""Shared test set-up.

Airflow reads ``AIRFLOW_HOME`` when it is first imported; every test run gets its own empty one here,
before any test module imports Airflow, so no test touches ``~/airflow``. The emulated-sky fixtures
(``emulated_sky``, ``sky_bucket``) come from the package's pytest plugin,
``airflow_skyplane.testing.plugin``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

_home = tempfile.mkdtemp(prefix="skyplane-test-airflow-home-")
os.environ["AIRFLOW_HOME"] = _home
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
atexit.register(shutil.rmtree, _home, ignore_errors=True)

# the Azure SDK logs every request and response at INFO; failures show without them
logging.getLogger("azure").setLevel(logging.WARNING)
