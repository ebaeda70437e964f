"""The ``skyplane`` connection: the package's own settings for transfers.

A ``skyplane`` connection holds no cloud credentials (those stay in the usual ``aws``,
``google_cloud_platform`` and ``wasb`` connections); its extra holds the defaults a platform team
wants for every transfer: where relays run, how many, the wire settings and the fleet time-to-live.
Values resolve in this order, first found wins:

1. the operator's own arguments (applied by the operator, not here);
2. the extra of the ``skyplane`` connection named by ``skyplane_conn_id``;
3. the ``[skyplane]`` section of the Airflow configuration;
4. the built-in defaults of :class:`SkyplaneSettings`.

The default connection id ``skyplane_default`` may be absent: its absence means "use the
configuration and the defaults". Any other id must exist.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from airflow.sdk import BaseHook

from airflow_skyplane.compute.azure import AZURE_MANAGEMENT_ENDPOINT
from airflow_skyplane.exceptions import ConnectionNotFoundError, InvalidInputError, SkyplaneError
from airflow_skyplane.storage.grants import GCP_STS_ENDPOINT, RELAY_CREDENTIAL_MODES
from airflow_skyplane.transfer.options import COMPRESSION_MODES

RELAY_BACKENDS = ("local", "aws", "gcp", "azure", "auto")
OBJECTIVES = ("throughput", "cost")
HOST_KEY_SOURCES = ("console", "first_use")


@dataclass(frozen=True)
class SkyplaneSettings:
    """Validated transfer defaults. Every field can be set in the connection extra by its name."""

    relay_backend: str = "local"
    objective: str = "throughput"
    max_relays_per_region: int = 1
    max_relays: int | None = None
    allowed_regions: tuple[str, ...] = ()
    #: TCP connections per overlay edge (the operator's ``connections_per_hop`` overrides it)
    connections_per_relay: int = 8
    chunk_size_mb: int = 32
    #: True or "auto" (lz4 where it pays), "always", or False or "never"
    compression: bool | str = True
    encryption: bool = True
    fleet_ttl_minutes: int = 360
    grid_path: str | None = None
    #: a folder where finished transfers record what each hop carried and plans read it (off when unset)
    measurements_path: str | None = None
    #: where the local relay backend keeps its fleet records (default ``$AIRFLOW_HOME/skyplane/fleets``)
    state_dir: str | None = None
    #: where a resumable transfer checkpoints itself, at the root of its destination bucket
    state_prefix: str = ".skyplane-state/"
    #: seconds (at most) between checkpoints of a resumable transfer; also after max(4, n/16) chunks written
    state_checkpoint_s: int = 10
    use_spot: bool = False
    aws_instance_type: str = "m5.8xlarge"
    gcp_machine_type: str = "n2-standard-16"
    azure_vm_size: str = "Standard_D32_v5"
    relay_image: Mapping[str, str] = field(default_factory=dict)
    #: cloud relays: the worker's public address as a CIDR (SSH to the relays is admitted from there)
    worker_cidr: str | None = None
    #: how the worker and the gateways reach relays: "public" addresses, or "private" ones (the
    #: worker shares a network with them: a peered VPC, a VPN)
    relay_address: str = "public"
    ssh_port: int = 22
    #: the user SSH logs in as on relays (default: "ubuntu" on AWS, "skyplane" on GCP and Azure)
    ssh_username: str | None = None
    #: the interpreter that runs the gateway on a relay (its light dependencies are installed with
    #: pip when it lacks them)
    relay_python: str = "python3"
    #: AWS region ("aws:us-east-1") -> subnet to launch relays in (default: the region's default VPC)
    aws_subnets: Mapping[str, str] = field(default_factory=dict)
    azure_resource_group: str | None = None
    #: the Resource Manager endpoint Azure relays are rented through (a sovereign cloud's, an Azure
    #: Stack Hub's); its token scope is ``<endpoint>/.default``
    azure_management_endpoint: str = AZURE_MANAGEMENT_ENDPOINT
    #: the Entra ID authority a service principal of the ``azure`` connection logs in at (default:
    #: azure-identity's, ``AZURE_AUTHORITY_HOST`` or the public cloud's); one named here is trusted
    #: as named, without Microsoft's instance discovery
    azure_authority_host: str | None = None
    #: a PEM file of the CAs that sign those two endpoints (default: the system's)
    azure_ca_bundle: str | None = None
    #: the gateways' store credentials: "scoped" (minted for the transfer from the task's connection:
    #: an STS session, a downscoped GCS token, a container SAS) or "connection" (the connection's own)
    relay_credentials: str = "scoped"
    #: the token exchange endpoint that downscopes the relays' GCS tokens
    gcp_sts_endpoint: str = GCP_STS_ENDPOINT
    #: how the worker knows a relay VM's SSH host key: "console" (read from the cloud's console
    #: output of the VM before the first connection) or "first_use" (trusted at the first connection)
    relay_host_keys: str = "console"

    _INT_LIMITS: ClassVar[dict[str, tuple[int, int]]] = {
        "max_relays_per_region": (1, 64),
        "max_relays": (1, 1024),
        "connections_per_relay": (1, 256),
        "chunk_size_mb": (1, 256),
        "fleet_ttl_minutes": (5, 7 * 24 * 60),
        "ssh_port": (1, 65535),
        "state_checkpoint_s": (1, 3600),
    }

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, origin: str) -> SkyplaneSettings:
        """Build settings from ``data``, rejecting unknown keys and bad values; ``origin`` names the
        place the values came from (a connection id, a config section) for the error messages."""
        known = set(cls.field_names())
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidInputError(
                f"{origin}: unknown setting(s) {', '.join(unknown)}; "
                f"the settings are: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {}
        for name, raw in data.items():
            values[name] = cls._coerce(name, raw, origin=origin)
        return cls(**values)

    @classmethod
    def _coerce(cls, name: str, raw: Any, *, origin: str) -> Any:
        if raw is None and name in (
            "max_relays",
            "grid_path",
            "measurements_path",
            "state_dir",
            "worker_cidr",
            "azure_resource_group",
            "azure_authority_host",
            "azure_ca_bundle",
            "ssh_username",
        ):
            return None
        if name == "compression" and raw in COMPRESSION_MODES:
            return raw
        if name in ("compression", "encryption", "use_spot"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            modes = " or one of auto, always, never" if name == "compression" else ""
            raise InvalidInputError(f"{origin}: {name}={raw!r} is not a boolean; use true or false{modes}")
        if name in cls._INT_LIMITS:
            low, high = cls._INT_LIMITS[name]
            try:
                value = int(raw)
            except (TypeError, ValueError):
                raise InvalidInputError(
                    f"{origin}: {name}={raw!r} is not a whole number; give one from {low} to {high}"
                ) from None
            if isinstance(raw, float) and raw != value:
                raise InvalidInputError(f"{origin}: {name}={raw!r} must be a whole number")
            if not low <= value <= high:
                raise InvalidInputError(f"{origin}: {name}={value} is out of range; give {low} to {high}")
            return value
        if name == "state_prefix":
            from airflow_skyplane.transfer.resume import check_state_prefix

            return check_state_prefix(raw, origin=f"{origin}: state_prefix")
        if name == "relay_backend":
            if raw not in RELAY_BACKENDS:
                raise InvalidInputError(
                    f"{origin}: relay_backend={raw!r} is unknown; use one of {', '.join(RELAY_BACKENDS)}"
                )
            return raw
        if name == "objective":
            if raw not in OBJECTIVES:
                raise InvalidInputError(
                    f"{origin}: objective={raw!r} is unknown; use one of {', '.join(OBJECTIVES)}"
                )
            return raw
        if name == "allowed_regions":
            items = [raw] if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(p, str) and p for p in items):
                raise InvalidInputError(
                    f"{origin}: allowed_regions={raw!r} must be a list of region patterns "
                    'such as ["aws:eu-*", "gcp:europe-*"]'
                )
            return tuple(items)
        if name == "worker_cidr":
            try:
                if not isinstance(raw, str) or "/" not in raw:
                    raise ValueError(raw)
                ipaddress.ip_network(raw, strict=False)
            except ValueError:
                raise InvalidInputError(
                    f"{origin}: worker_cidr={raw!r} is not an address range: give the worker's public "
                    "address as a CIDR, e.g. '203.0.113.7/32'"
                ) from None
            return raw
        if name == "relay_credentials":
            if raw not in RELAY_CREDENTIAL_MODES:
                raise InvalidInputError(
                    f"{origin}: relay_credentials={raw!r} is unknown; use 'scoped' (credentials minted for "
                    "the transfer) or 'connection' (the connection's own)"
                )
            return raw
        if name == "relay_host_keys":
            if raw not in HOST_KEY_SOURCES:
                raise InvalidInputError(
                    f"{origin}: relay_host_keys={raw!r} is unknown; use 'console' (keys read from the "
                    "cloud's console output) or 'first_use' (trusted at the first connection)"
                )
            return raw
        if name == "gcp_sts_endpoint":
            if not isinstance(raw, str) or not raw.startswith(("https://", "http://")):
                raise InvalidInputError(
                    f"{origin}: gcp_sts_endpoint={raw!r} is not a URL; give the token exchange endpoint, "
                    f"e.g. {GCP_STS_ENDPOINT!r}"
                )
            return raw
        if name in ("azure_management_endpoint", "azure_authority_host"):
            if not isinstance(raw, str) or not raw.startswith("https://"):
                raise InvalidInputError(
                    f"{origin}: {name}={raw!r} is not an https URL; give the endpoint's URL, e.g. "
                    f"{AZURE_MANAGEMENT_ENDPOINT!r} or 'https://login.microsoftonline.us'"
                )
            return raw.rstrip("/")
        if name == "relay_address":
            if raw not in ("public", "private"):
                raise InvalidInputError(
                    f"{origin}: relay_address={raw!r} is unknown; use 'public' or 'private'"
                )
            return raw
        if name == "aws_subnets":
            if not isinstance(raw, Mapping) or not all(
                isinstance(k, str) and k.startswith("aws:") and isinstance(v, str) and v
                for k, v in raw.items()
            ):
                raise InvalidInputError(
                    f"{origin}: aws_subnets must map AWS regions to subnet ids, "
                    'e.g. {"aws:us-east-1": "subnet-0abc..."}'
                )
            return dict(raw)
        if name == "relay_image":
            if not isinstance(raw, Mapping) or not all(isinstance(v, str) for v in raw.values()):
                raise InvalidInputError(
                    f"{origin}: relay_image must map a provider to an image, "
                    'e.g. {"aws": "ami-...", "gcp": "projects/.../images/..."}'
                )
            return dict(raw)
        if not isinstance(raw, str) or not raw:
            raise InvalidInputError(f"{origin}: {name}={raw!r} must be a non-empty string")
        return raw

    def check(self) -> None:
        """What a transfer would find wrong in these settings before it starts, beyond each value's type
        and range (checked on reading): the grid file loads, every allowed-region pattern matches a
        region, and cloud relays have what they need. Contacts nothing."""
        from airflow_skyplane.planner.network import NetworkModel
        from airflow_skyplane.planner.regions import REGIONS, match_regions

        if self.allowed_regions:
            match_regions(list(self.allowed_regions), sorted(REGIONS))
        if self.grid_path:
            NetworkModel.from_csv(self.grid_path)
        if self.relay_backend != "local" and not self.worker_cidr:
            raise InvalidInputError(
                f"relay_backend={self.relay_backend!r} rents relay VMs, whose SSH is admitted only from the "
                "worker: set worker_cidr (the worker's public address, e.g. '203.0.113.7/32')"
            )
        if self.relay_backend == "azure" and not self.azure_resource_group:
            raise InvalidInputError(
                "relay_backend='azure' creates relays in a resource group: set azure_resource_group"
            )

    def merged(self, overrides: Mapping[str, Any], *, origin: str) -> SkyplaneSettings:
        """These settings with ``overrides`` applied (validated like :meth:`from_mapping`)."""
        update = SkyplaneSettings.from_mapping(overrides, origin=origin)
        return dataclasses.replace(self, **{k: getattr(update, k) for k in overrides})

    def fleets_dir(self) -> str:
        from airflow_skyplane.compute.fleets import default_state_dir

        return self.state_dir or str(default_state_dir())

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.field_names()}
        data["allowed_regions"] = list(self.allowed_regions)
        data["relay_image"] = dict(self.relay_image)
        data["aws_subnets"] = dict(self.aws_subnets)
        return data


class SkyplaneHook(BaseHook):
    """Reads the ``skyplane`` connection and the ``[skyplane]`` configuration into settings."""

    conn_name_attr = "skyplane_conn_id"
    default_conn_name = "skyplane_default"
    conn_type = "skyplane"
    hook_name = "Skyplane"

    def __init__(self, skyplane_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.skyplane_conn_id = skyplane_conn_id

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return {
            "hidden-fields": ["host", "schema", "login", "password", "port"],
            "relabeling": {"extra": "Transfer defaults (JSON)"},
            "placeholders": {
                "extra": json.dumps(
                    {"relay_backend": "aws", "max_relays_per_region": 2, "allowed_regions": ["aws:eu-*"]}
                )
            },
        }

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's connection test (the UI's Test button, ``airflow connections test``): reads the
        connection's extra over the ``[skyplane]`` configuration as a transfer would, and checks the
        result (:meth:`SkyplaneSettings.check`). Returns ``(ok, message)``; contacts no cloud."""
        try:
            settings = self.get_settings()
            settings.check()
        except SkyplaneError as err:
            return False, str(err)
        extra = self._connection_extra()
        config = _config_section()
        return True, (
            f"skyplane settings are valid: relay_backend={settings.relay_backend}, objective="
            f"{settings.objective}, chunk_size_mb={settings.chunk_size_mb}, connections_per_relay="
            f"{settings.connections_per_relay}; {len(extra)} from connection {self.skyplane_conn_id!r}, "
            f"{len(config)} from [skyplane] config, the rest defaults"
        )

    def get_settings(self) -> SkyplaneSettings:
        settings = SkyplaneSettings.from_mapping(_config_section(), origin="Airflow config [skyplane]")
        extra = self._connection_extra()
        if extra:
            settings = settings.merged(extra, origin=f"connection {self.skyplane_conn_id!r} extra")
        return settings

    def _connection_extra(self) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            conn = self.get_connection(self.skyplane_conn_id)
        except AirflowNotFoundException:
            if self.skyplane_conn_id == self.default_conn_name:
                return {}
            raise ConnectionNotFoundError(
                f"Airflow connection {self.skyplane_conn_id!r} (type skyplane) does not exist; create it "
                f"with `airflow connections add {self.skyplane_conn_id} --conn-type skyplane "
                "--conn-extra '{...}'` or set AIRFLOW_CONN_"
                f"{self.skyplane_conn_id.upper()}, or leave skyplane_conn_id at its default"
            ) from None
        try:
            extra = conn.extra_dejson
        except Exception:  # noqa: BLE001 - Airflow raises various errors for malformed extras
            extra = None
        if conn.extra and not extra:
            raise InvalidInputError(
                f"connection {self.skyplane_conn_id!r}: its extra is not a JSON object; "
                'write it as {"relay_backend": "local", ...}'
            )
        return dict(extra or {})


def _config_section() -> dict[str, Any]:
    """The ``[skyplane]`` options the user set in airflow.cfg or AIRFLOW__SKYPLANE__* variables."""
    from airflow.sdk import conf

    # getsection also sees AIRFLOW__SKYPLANE__* variables when airflow.cfg has no [skyplane] section
    known = set(SkyplaneSettings.field_names())
    values: dict[str, Any] = {}
    for key, value in (conf.getsection("skyplane") or {}).items():
        if key not in known:
            continue  # a newer or older package's option: ignore rather than fail every task
        if key in ("allowed_regions", "relay_image", "aws_subnets"):
            try:
                values[key] = json.loads(str(value))
            except json.JSONDecodeError:
                raise InvalidInputError(
                    f"Airflow config [skyplane] {key}={value!r} is not JSON; "
                    'write e.g. ["aws:eu-*"] or {"aws": "ami-..."}'
                ) from None
        else:
            values[key] = value
    return values
