"""Route planner: where to put relay VMs and how much data to send over which hops.

Pure and fast: no Airflow, no cloud calls, no file but the grid CSV a caller names. The pieces:

* :mod:`~airflow_skyplane.planner.regions` — region catalog (coordinates, continents), per-VM caps,
  VM and egress list prices;
* :mod:`~airflow_skyplane.planner.model` — the fitted default model (RTT bands per provider pair,
  region factors) and its uncertainty by pair type;
* :mod:`~airflow_skyplane.planner.network` — :class:`NetworkModel`: measured grids, measurement
  history (:class:`Observation`) and the default model; :mod:`~airflow_skyplane.planner.grid` reads
  and writes grid files;
* :mod:`~airflow_skyplane.planner.milp` — the PuLP MILP (unicast and multicast);
* :mod:`~airflow_skyplane.planner.solver` — :class:`Planner`: cheapest at a throughput, or fastest
  within a budget and then the cheapest within a tolerance of it, relay hops at conservative rates;
* :mod:`~airflow_skyplane.planner.plan` — :class:`TransferPlan` (JSON, text table, PNG).

Typical use::

    from airflow_skyplane.planner import NetworkModel, plan_transfer
    plan = plan_transfer(NetworkModel.default(), "aws:us-east-1", "gcp:europe-west4-a",
                         max_vms_per_region=2, max_cost_per_gb=0.12)
    print(plan.to_table())
"""

from airflow_skyplane.planner.network import NetworkModel, Observation, read_grid_csv
from airflow_skyplane.planner.plan import PlanEdge, TransferPlan
from airflow_skyplane.planner.regions import DEFAULT_LIMITS, REGIONS, ProviderLimits, Region
from airflow_skyplane.planner.solver import Planner, available_solvers, plan_transfer

__all__ = [
    "DEFAULT_LIMITS",
    "NetworkModel",
    "Observation",
    "PlanEdge",
    "Planner",
    "ProviderLimits",
    "REGIONS",
    "Region",
    "TransferPlan",
    "available_solvers",
    "plan_transfer",
    "read_grid_csv",
]
