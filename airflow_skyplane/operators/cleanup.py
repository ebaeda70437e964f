"""``SkyplaneCleanupOperator``: sweep the relay fleets that dead workers left behind.

Every transfer tears its fleet down itself (``finally``, ``on_kill``, ``on_failure_callback``); a
worker killed with SIGKILL or a lost machine can still leave one. Schedule this operator (say hourly)
on the machines that run transfers: it tears down every recorded fleet past its expiry (the
``fleet_ttl_minutes`` setting at start), or older than ``older_than_minutes``, stopping its gateways,
aborting its unfinished multipart uploads and deleting its records and secrets. It returns the ids
of the fleets it swept.
"""

from __future__ import annotations

import time
from typing import Any

from airflow.sdk import BaseOperator

from airflow_skyplane.exceptions import InvalidInputError


class SkyplaneCleanupOperator(BaseOperator):
    """Tear down expired fleets.

    :param older_than_minutes: also sweep fleets started more than this long ago, expired or not.
    :param skyplane_conn_id: the ``skyplane`` connection (where fleet records are kept).
    :param aws_regions: also sweep expired AWS relay fleets (found by tag) in these regions
        (``aws:us-east-1``...), through ``EC2Hook`` and ``aws_conn_id``.
    :param gcp: also sweep expired GCP relay fleets (found by label) of the ``gcp_conn_id`` project.
    :param gcp_compute_endpoint: the Compute Engine API endpoint, when not Google's own.
    :param azure_resource_group: also sweep expired Azure relay fleets (found by tag) in this resource
        group, with the ``azure_conn_id`` credential, at the ``skyplane`` connection's
        ``azure_management_endpoint`` (and its ``azure_authority_host`` and ``azure_ca_bundle``).
    """

    ui_color = "#f0e4d7"

    def __init__(
        self,
        *,
        older_than_minutes: float | None = None,
        skyplane_conn_id: str = "skyplane_default",
        aws_regions: list[str] | None = None,
        aws_conn_id: str | None = "aws_default",
        gcp: bool = False,
        gcp_conn_id: str = "google_cloud_default",
        gcp_compute_endpoint: str | None = None,
        azure_resource_group: str | None = None,
        azure_conn_id: str = "azure_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if older_than_minutes is not None and not older_than_minutes > 0:
            raise InvalidInputError(f"older_than_minutes={older_than_minutes!r} must be a positive number")
        self.older_than_minutes = older_than_minutes
        self.skyplane_conn_id = skyplane_conn_id
        self.aws_regions = list(aws_regions or [])
        self.aws_conn_id = aws_conn_id
        self.gcp, self.gcp_conn_id, self.gcp_compute_endpoint = gcp, gcp_conn_id, gcp_compute_endpoint
        self.azure_resource_group, self.azure_conn_id = azure_resource_group, azure_conn_id

    def execute(self, context: Any) -> list[str]:
        from airflow_skyplane.compute import fleets
        from airflow_skyplane.hooks.skyplane import SkyplaneHook
        from airflow_skyplane.transfer.fleet import teardown

        settings = SkyplaneHook(self.skyplane_conn_id).get_settings()
        state_dir = settings.fleets_dir()
        now = time.time()
        swept = []
        for record, running in list(fleets.list_fleets(state_dir)):
            too_old = (
                self.older_than_minutes is not None
                and now - record.created_at >= self.older_than_minutes * 60
            )
            if now >= record.expires_at or too_old:
                teardown(record.fleet_id, state_dir)
                self.log.info(
                    "swept fleet %s (%s, started %.0f min ago, %d gateway(s) were running)",
                    record.fleet_id, record.owner, (now - record.created_at) / 60, len(running),
                )  # fmt: skip
                swept.append(record.fleet_id)
        self.log.info("%d fleet(s) swept in %s", len(swept), state_dir)
        if self.aws_regions:
            from airflow_skyplane.compute import aws

            swept_aws = aws.sweep(aws.AWSRelayBackend(aws_conn_id=self.aws_conn_id), self.aws_regions)
            for fleet_id, regions in swept_aws.items():
                self.log.info("swept AWS fleet %s in %s", fleet_id, ", ".join(regions))
            swept += list(swept_aws)
        if self.gcp:
            from airflow_skyplane.compute import gcp

            backend = gcp.GCPRelayBackend(
                gcp_conn_id=self.gcp_conn_id, compute_endpoint=self.gcp_compute_endpoint
            )
            for fleet_id in gcp.sweep(backend):
                self.log.info("swept GCP fleet %s", fleet_id)
                swept.append(fleet_id)
        if self.azure_resource_group:
            from airflow_skyplane.compute import azure

            backend_az = azure.AzureRelayBackend(
                resource_group=self.azure_resource_group, azure_conn_id=self.azure_conn_id,
                base_url=settings.azure_management_endpoint, authority=settings.azure_authority_host,
                connection_verify=settings.azure_ca_bundle or True,
            )  # fmt: skip
            for fleet_id in azure.sweep(backend_az):
                self.log.info("swept Azure fleet %s", fleet_id)
                swept.append(fleet_id)
        return swept
