"""The result of a finished transfer, and the summary the operator pushes to XCom."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from airflow_skyplane import measurements
from airflow_skyplane.transfer.control import GatewayStatus
from airflow_skyplane.transfer.overlay import Overlay


@dataclass
class TransferResult:
    transfer_id: str
    objects: int
    bytes: int
    wire_bytes: int
    seconds: float
    resends: int
    checksums_verified: int
    gateways: dict[str, GatewayStatus]
    #: bytes a previous try had written and this one did not send again (resumed transfers)
    resumed_bytes: int = 0
    #: objects whose recorded state no longer matched the source (sent again from scratch)
    discarded: int = 0
    #: the overlay that ran (its hops and their regions: what the measurement history records)
    overlay: Overlay | None = None

    @property
    def gbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds else 0.0

    def summary(self) -> dict[str, int | float | str | None]:
        return {
            "transfer_id": self.transfer_id,
            "objects": self.objects,
            "bytes": self.bytes,
            "wire_bytes": self.wire_bytes,
            "wire_to_raw": round(self.wire_bytes / self.bytes, 4) if self.bytes else None,
            "seconds": round(self.seconds, 3),
            "gbps": round(self.gbps, 4),
            "resends": self.resends,
            "checksums_verified": self.checksums_verified,
            "resumed_bytes": self.resumed_bytes,
            "resumed_objects_discarded": self.discarded,
        }


#: the task's summary (XCom): plans, diff counts and results, JSON, free of credentials
Summary = dict[str, object]


def summarize(
    base: Mapping[str, object], results: Sequence[TransferResult], deleted: Sequence[int] = ()
) -> Summary:
    """The XCom summary of a finished transfer: ``base`` (plans, diff counts) and the results."""
    summary: Summary = {**base, "status": "done"}
    measurements.record_finished(results)  # when AIRFLOW__SKYPLANE__MEASUREMENTS_PATH is set
    sync = base.get("sync")
    if isinstance(sync, list):
        summary["sync"] = [
            {**counts, "deleted": deleted[n] if n < len(deleted) else 0}
            for n, counts in enumerate(sync)
            if isinstance(counts, dict)
        ]
    destinations = base.get("destinations")
    per = [r.summary() for r in results]
    for entry, uri in zip(per, destinations if isinstance(destinations, list) else [], strict=True):
        entry["destination"] = uri
    summary["transfers"] = per
    totals = {
        "objects": sum(r.objects for r in results),
        "bytes": sum(r.bytes for r in results),
        "wire_bytes": sum(r.wire_bytes for r in results),
        "resends": sum(r.resends for r in results),
        "checksums_verified": sum(r.checksums_verified for r in results),
        "resumed_bytes": sum(r.resumed_bytes for r in results),
    }
    summary.update(totals)
    seconds = round(max((r.seconds for r in results), default=0.0), 3)
    summary["seconds"] = seconds
    summary["gbps"] = round(totals["bytes"] * 8 / seconds / 1e9, 4) if seconds else 0.0
    summary["wire_to_raw"] = round(totals["wire_bytes"] / totals["bytes"], 4) if totals["bytes"] else None
    return summary
