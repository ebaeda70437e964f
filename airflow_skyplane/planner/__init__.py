"""Route planner: where to put relay VMs and how much data to send over which hops.

Pure and fast: no Airflow, no cloud calls, no file but the grid CSV a caller names. The pieces:

* :mod:`~airflow_skyplane.planner.regions` — region catalog (coordinates, continents), per-VM caps,
  VM and egress list prices;
* :mod:`~airflow_skyplane.planner.network` — :class:`NetworkModel`: measured grids and the fitted
  default model (distance -> RTT -> Gbps);
* :mod:`~airflow_skyplane.planner.solver` — the PuLP MILP (unicast and multicast; cheapest at a
  throughput or fastest within a budget);
* :mod:`~airflow_skyplane.planner.plan` — :class:`TransferPlan` (JSON, text table, PNG).

Typical use::

    from airflow_skyplane.planner import NetworkModel, plan_transfer
    plan = plan_transfer(NetworkModel.default(), "aws:us-east-1", "gcp:europe-west4-a",
                         max_vms_per_region=2, max_cost_per_gb=0.12)
    print(plan.to_table())
"""

from airflow_skyplane.planner.network import NetworkModel, read_grid_csv
from airflow_skyplane.planner.plan import PlanEdge, TransferPlan
from airflow_skyplane.planner.regions import DEFAULT_LIMITS, REGIONS, ProviderLimits, Region
from airflow_skyplane.planner.solver import Planner, available_solvers, plan_transfer

__all__ = [
    "DEFAULT_LIMITS",
    "NetworkModel",
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
