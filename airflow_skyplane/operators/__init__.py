"""Operators: :class:`~airflow_skyplane.operators.transfer.SkyplaneTransferOperator`."""
