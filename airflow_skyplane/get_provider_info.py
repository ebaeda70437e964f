"""Provider metadata read by Airflow's ProvidersManager through the ``apache_airflow_provider`` entry point.

It must import nothing heavy: Airflow calls it while discovering providers.
"""

from __future__ import annotations

from typing import Any

from airflow_skyplane import __version__


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-skyplane",
        "name": "Skyplane",
        "description": (
            "Fast, cheap bulk transfers between S3, GCS and Azure Blob over planned overlay routes."
        ),
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Skyplane",
                "external-doc-url": "https://github.com/skyplane-project/skyplane",
                "how-to-guide": [],
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Skyplane",
                "python-modules": ["airflow_skyplane.hooks.skyplane"],
            },
        ],
        "operators": [
            {
                "integration-name": "Skyplane",
                "python-modules": [
                    "airflow_skyplane.operators.transfer",
                    "airflow_skyplane.operators.cleanup",
                ],
            },
        ],
        "sensors": [
            {"integration-name": "Skyplane", "python-modules": ["airflow_skyplane.sensors.transfer"]},
        ],
        "triggers": [
            {"integration-name": "Skyplane", "python-modules": ["airflow_skyplane.triggers.transfer"]},
        ],
        "connection-types": [
            {
                "connection-type": "skyplane",
                "hook-class-name": "airflow_skyplane.hooks.skyplane.SkyplaneHook",
                "hook-name": "Skyplane",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "login", "password", "port"],
                    "relabeling": {"extra": "Transfer defaults (JSON)"},
                    "placeholders": {
                        "extra": '{"relay_backend": "aws", "max_relays_per_region": 2, '
                        '"allowed_regions": ["aws:eu-*"]}'
                    },
                },
            }
        ],
        "config": {
            "skyplane": {
                "description": (
                    "Defaults for airflow-skyplane transfers; a `skyplane` connection overrides them."
                ),
                "options": {
                    "relay_backend": {
                        "description": "Where relays run: local, aws, gcp, azure or auto.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "aws",
                        "default": "local",
                    },
                    "worker_cidr": {
                        "description": (
                            "Cloud relays: the worker's public address as a CIDR; SSH to the relays "
                            "is admitted from there only."
                        ),
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "203.0.113.7/32",
                        "default": None,
                    },
                    "max_relays_per_region": {
                        "description": "Upper bound on relay VMs the planner may place in one region.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "4",
                        "default": "1",
                    },
                    "chunk_size_mb": {
                        "description": "Chunk size on the wire, in MiB.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "32",
                        "default": "32",
                    },
                    "state_dir": {
                        "description": "Where the local relay backend keeps its fleet records.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "/var/lib/airflow/skyplane/fleets",
                        "default": None,
                    },
                    "fleet_ttl_minutes": {
                        "description": "Relays older than this are swept and self-destruct.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "360",
                        "default": "360",
                    },
                    "state_prefix": {
                        "description": "Folder at the root of each destination bucket where resumable "
                        "transfers checkpoint their state for a retry (hidden from listings).",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": ".skyplane-state/",
                        "default": ".skyplane-state/",
                    },
                    "state_checkpoint_s": {
                        "description": "Most seconds between two checkpoints of a resumable transfer "
                        "(it also checkpoints after max(4, n/16) chunks written, n those recorded).",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "10",
                        "default": "10",
                    },
                },
            }
        },
    }
