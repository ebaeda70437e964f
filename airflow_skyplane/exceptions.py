"""The package's own exception types.

Every error a user can cause (a bad URI, a missing connection, an infeasible plan, a malformed grid or
gateway program) is raised as one of these, with a message that names the input and says what would
fix it. They do not derive from Airflow's exceptions so that the gateway and the CLI, which run
without Airflow, can raise and catch them too; the operator maps them onto Airflow's failure modes.
"""

from __future__ import annotations


class SkyplaneError(Exception):
    """Base class of every error raised by airflow-skyplane."""


# -- configuration and inputs -------------------------------------------------------------------
class InvalidInputError(SkyplaneError, ValueError):
    """A parameter, URI, grid or program is malformed; the message names it and the fix."""


class InvalidURIError(InvalidInputError):
    """A storage URI cannot be parsed or uses an unknown scheme."""


class ConnectionNotFoundError(SkyplaneError):
    """An Airflow connection id the transfer needs does not exist."""


# -- storage ------------------------------------------------------------------------------------
class StorageError(SkyplaneError):
    """An object store call failed for a reason other than those below."""


class BucketNotFoundError(StorageError):
    """The bucket or container named by a URI does not exist (or is not visible to the credentials)."""


class ObjectNotFoundError(StorageError, KeyError):
    """An object key does not exist in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "object not found"


class CredentialsError(StorageError):
    """The store refused the credentials of the connection (missing, wrong, or lacking permission)."""


# -- planning -----------------------------------------------------------------------------------
class PlannerError(SkyplaneError):
    """The planner cannot produce a plan."""


class InfeasiblePlanError(PlannerError):
    """No plan satisfies the constraints; the message names the binding limit and how to relax it.

    ``limits`` names the binding limits as data, by the planner's keyword arguments
    (``max_vms_per_region``, ``max_vms``, ``min_throughput_gbps``, ``deadline_s``, ``budget_usd``,
    ``max_cost_per_gb``, ``allowed_regions``), so that a caller with other names for them (the
    operator's parameters) can name them in its own words.
    """

    def __init__(self, message: str, *, limits: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.limits = limits


class GridError(InvalidInputError):
    """A throughput or price grid is malformed (bad CSV, negative throughput, unknown region)."""


# -- data plane ---------------------------------------------------------------------------------
class ProtocolError(SkyplaneError):
    """A wire frame or gateway program is malformed, truncated or does not belong to this transfer."""


class AuthenticationError(ProtocolError):
    """A peer failed authentication; it is dropped before any chunk is accepted."""


class TransferError(SkyplaneError):
    """A transfer failed (a gateway died, a chunk could not be delivered, verification failed)."""
