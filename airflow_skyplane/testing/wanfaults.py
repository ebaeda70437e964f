"""Faults on the links of an emulated WAN, with nftables inside the regions' namespaces.

This kernel may have no ``netem`` qdisc, so loss and cuts are packet filters: a table
``inet skyfault`` in each end's namespace drops what arrives on the link's interface, every packet
(a cut) or a random share of them (``numgen random mod 100 < N``). :func:`heal` deletes the tables;
deleting the namespace (:meth:`EmulatedWAN.close`) deletes them too, so nothing outlives the WAN.

Needs root and ``nft`` (Debian package nftables). Imports no Airflow.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from airflow_skyplane.exceptions import InvalidInputError

TABLE = "skyfault"


def missing_requirements() -> str | None:
    """Why link faults cannot be injected here, or None when they can."""
    from airflow_skyplane.testing.netns import missing_requirements as wan_missing

    why = wan_missing()
    if why:
        return why
    if shutil.which("nft") is None:
        return "link faults need `nft` (Debian package nftables)"
    return None


def _nft(wan: Any, region: str, script: str) -> None:
    proc = subprocess.run(
        wan.command(region, ["nft", "-f", "-"]), input=script, capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nft in {region}: {proc.stderr.strip()}")


def _drop(wan: Any, a: str, b: str, percent: int) -> None:
    if not 0 < percent <= 100:
        raise InvalidInputError(f"loss percent={percent} must be in 1..100")
    heal(wan, a, b)
    for region, peer in ((a, b), (b, a)):
        dev = wan.interface(region, peer)
        rule = (
            f'iifname "{dev}" drop'
            if percent == 100
            else f'iifname "{dev}" numgen random mod 100 < {percent} drop'
        )
        _nft(
            wan,
            region,
            f"table inet {TABLE} {{\n chain input {{ type filter hook input priority -10; policy accept;\n"
            f"  {rule}\n }}\n}}\n",
        )


def cut(wan: Any, a: str, b: str) -> None:
    """Drop every packet between regions ``a`` and ``b`` (both directions) until :func:`heal`."""
    _drop(wan, a, b, 100)


def lossy(wan: Any, a: str, b: str, percent: int) -> None:
    """Drop ``percent`` % of the packets arriving at each end of the link ``a``-``b``."""
    _drop(wan, a, b, percent)


def heal(wan: Any, a: str, b: str) -> None:
    """Remove the faults :func:`cut` or :func:`lossy` put on the link (idempotent)."""
    for region in (a, b):
        subprocess.run(
            wan.command(region, ["nft", "delete", "table", "inet", TABLE]), capture_output=True, timeout=30
        )


def dropped(wan: Any, region: str) -> bool:
    """True when ``region``'s namespace has a fault table (for tests checking the fault is there)."""
    proc = subprocess.run(
        wan.command(region, ["nft", "list", "table", "inet", TABLE]), capture_output=True, timeout=30
    )
    return proc.returncode == 0
