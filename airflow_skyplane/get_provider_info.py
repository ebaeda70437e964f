"""Provider metadata read by Airflow's ProvidersManager through the ``apache_airflow_provider`` entry point.

It must import nothing heavy: Airflow calls it while discovering providers.

The ``[skyplane]`` options are declared here with their descriptions, types and defaults, so that
``airflow config list --defaults`` and the UI show them; they are the fields of
:class:`airflow_skyplane.hooks.skyplane.SkyplaneSettings` (a test keeps the two, and every setting
the code reads, in step). Airflow takes the provider's documentation URL from the package's
``Documentation`` project URL (pyproject.toml), the same :data:`DOCS_URL`.
"""

from __future__ import annotations

from typing import Any

from airflow_skyplane import __version__

DOCS_URL = "https://github.com/airflow-skyplane/airflow-skyplane/tree/main/docs"
SETTINGS_URL = DOCS_URL + "/connections.md#the-skyplane-connection"

# name: (type, default, example, description); defaults as Airflow writes them in airflow.cfg, lists
# and maps as JSON. No default may hold a brace: Airflow fills defaults in with str.format (an empty
# map is therefore declared as no default).
_OPTIONS: dict[str, tuple[str, str | None, str, str]] = {
    "relay_backend": ("string", "local", "aws", "Where relays run: local (gateway processes on the "
        "worker), or VMs rented for each transfer: aws, gcp, azure (that cloud only), auto (each region's "
        "own cloud)."),
    "objective": ("string", "throughput", "cost", "throughput: the fastest plan within the cost limit; "
        "cost: the cheapest plan that meets the throughput target."),
    "max_relays_per_region": ("integer", "1", "4", "Relay VMs the planner may place in one region (1-64)."),
    "max_relays": ("integer", None, "16", "Relay VMs in total, gateways at the source and destinations "
        "included (1-1024); none: no limit but the per-region one."),
    "allowed_regions": ("string", "[]", '["aws:eu-*", "gcp:europe-*"]', "JSON list of region patterns "
        "relays may use (data residency); empty: every known region."),
    "connections_per_relay": ("integer", "8", "32", "TCP connections per overlay edge: the cap of a "
        "planned edge's connections, and what a direct transfer opens (1-256)."),
    "chunk_size_mb": ("integer", "32", "64", "Chunk size on the wire, in MiB (1-256)."),
    "compression": ("string", "True", "always", "lz4 per chunk: true or auto (skipped where a sample "
        "shows it does not pay), always, or false or never."),
    "encryption": ("boolean", "True", "False", "AES-GCM encryption of every chunk, end to end."),
    "fleet_ttl_minutes": ("integer", "360", "120", "Relays older than this are swept, and stop "
        "themselves (5-10080)."),
    "measurements_path": ("string", None, "/var/lib/airflow/skyplane/measurements", "A folder where "
        "finished transfers record the rate each overlay hop carried and the next plans rest on it; "
        "none: no history is kept."),
    "grid_path": ("string", None, "/etc/skyplane/grid.csv", "A measured throughput grid (CSV) to plan "
        "with; none: the built-in network model."),
    "state_dir": ("string", None, "/var/lib/airflow/skyplane/fleets", "Where the local relay backend "
        "records its fleets; none: $AIRFLOW_HOME/skyplane/fleets."),
    "state_prefix": ("string", ".skyplane-state/", ".skyplane-state/", "Folder at the root of each "
        "destination bucket where resumable transfers checkpoint their state for a retry (hidden from "
        "listings, never synced or deleted)."),
    "state_checkpoint_s": ("integer", "10", "30", "Most seconds between two checkpoints of a resumable "
        "transfer; it also checkpoints after max(4, n/16) chunks written, n those recorded (1-3600)."),
    "use_spot": ("boolean", "False", "True", "Spot or preemptible relay VMs, with on-demand fallback."),
    "aws_instance_type": ("string", "m5.8xlarge", "m5.4xlarge", "EC2 instance type of AWS relays."),
    "gcp_machine_type": ("string", "n2-standard-16", "n2-standard-8", "Machine type of GCP relays."),
    "azure_vm_size": ("string", "Standard_D32_v5", "Standard_D16_v5", "VM size of Azure relays."),
    "relay_image": ("string", None, '{"aws": "ami-0abc", "gcp": "projects/p/global/images/i"}', "JSON map "
        "of provider to a prepared relay image; none: each cloud's stock Ubuntu image."),
    "worker_cidr": ("string", None, "203.0.113.7/32", "Cloud relays: the worker's public address as a "
        "CIDR; SSH to the relays is admitted from there only. Required for cloud relays."),
    "relay_address": ("string", "public", "private", "How the worker and the gateways reach relays: "
        "public addresses, or private ones when the worker shares a network with them (peering, VPN)."),
    "ssh_port": ("integer", "22", "2222", "SSH port of the relays (1-65535)."),
    "ssh_username": ("string", None, "ubuntu", "The user SSH logs in as on relays; none: ubuntu on AWS, "
        "skyplane on GCP and Azure."),
    "relay_python": ("string", "python3", "/opt/venv/bin/python", "The interpreter that runs the gateway "
        "on a relay; its light dependencies are installed with pip when it lacks them."),
    "aws_subnets": ("string", None, '{"aws:us-east-1": "subnet-0abc"}', "JSON map of AWS region to the "
        "subnet relays are launched in; none: each region's default VPC."),
    "azure_resource_group": ("string", None, "skyplane-relays", "The resource group Azure relays are "
        "created in. Required for Azure relays."),
    "azure_management_endpoint": ("string", "https://management.azure.com", "https://management.usgovcloudapi.net",
        "The Resource Manager endpoint Azure relays are rented through (a sovereign cloud's, an Azure "
        "Stack Hub's)."),
    "azure_authority_host": ("string", None, "https://login.microsoftonline.us", "The Entra ID authority "
        "the azure connection's service principal logs in at; none: azure-identity's default "
        "(AZURE_AUTHORITY_HOST, else the public cloud's). One named here is trusted without instance "
        "discovery."),
    "azure_ca_bundle": ("string", None, "/etc/ssl/certs/corp-ca.pem", "A PEM file of the CAs that sign "
        "the management endpoint and the authority; none: the system's CAs."),
    "relay_credentials": ("string", "scoped", "connection", "The gateways' store credentials: scoped "
        "(minted for each transfer from the task's connection, limited to its buckets and prefixes, "
        "expiring with the fleet or renewed: an STS session, a downscoped GCS token, a container SAS) or "
        "connection (the connection's own credentials)."),
    "gcp_sts_endpoint": ("string", "https://sts.googleapis.com/v1/token", "https://sts.googleapis.com/v1/token",
        "The token exchange endpoint that downscopes the relays' GCS access tokens to the transfer's "
        "prefixes (a Private Service Connect endpoint, for one)."),
    "relay_host_keys": ("string", "console", "first_use", "How the worker knows a relay VM's SSH host "
        "key: console (read from the cloud's console output of the VM before the first connection; "
        "the VM is refused if it does not show it in time) or first_use (trusted at the first "
        "connection, logged as such)."),
}  # fmt: skip


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
                "external-doc-url": DOCS_URL,
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
                    "Defaults for airflow-skyplane transfers; the extra of a `skyplane` connection "
                    f"overrides them, the operator's arguments override both. See {SETTINGS_URL}"
                ),
                "options": {
                    name: {
                        "description": text,
                        "version_added": "0.1.0",
                        "type": kind,
                        "example": example,
                        "default": default,
                    }
                    for name, (kind, default, example, text) in _OPTIONS.items()
                },
            }
        },
    }
