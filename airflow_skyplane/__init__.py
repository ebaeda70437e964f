"""airflow-skyplane: bulk object-store transfers over planned overlay routes, as an Airflow provider.

Importing this package imports nothing from Airflow, so the relay gateway
(``python -m airflow_skyplane.gateway``) and the ``airflow-skyplane`` CLI run without it.
"""

__version__ = "0.1.0"
