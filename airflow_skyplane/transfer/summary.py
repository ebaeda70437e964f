"""The result of a finished transfer, and the summary the operator pushes to XCom.

The summary is small (well under 2 KB for two destinations): per destination, keyed by its URI, its
region, the relay regions of its plan and what the transfer did; the totals beside them. The plans
themselves (edges, candidate regions, solver) go to the plan file the summary names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from airflow_skyplane import measurements
from airflow_skyplane.transfer.control import GatewayStatus
from airflow_skyplane.transfer.overlay import Overlay

#: keys of objects checked by size only, kept per destination for the summary
UNVERIFIED_SHOWN = 5


@dataclass
class Unverified:
    """Objects whose checksum could not be compared with the store's (size checked only), and why."""

    count: int = 0
    #: reason -> number of objects
    reasons: dict[str, int] = field(default_factory=dict)
    #: the first few keys (relative to the destination prefix)
    keys: list[str] = field(default_factory=list)

    def add(self, key: str, reason: str) -> None:
        self.count += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        if len(self.keys) < UNVERIFIED_SHOWN:
            self.keys.append(key)

    def merge(self, other: Unverified) -> None:
        """Add what ``other`` noted."""
        self.count += other.count
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.keys.extend(other.keys[: max(0, UNVERIFIED_SHOWN - len(self.keys))])

    def as_dict(self) -> dict[str, object]:
        return {"objects": self.count, "why": dict(self.reasons), "first": list(self.keys)}


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
    #: objects checked by size only, and why
    unverified: Unverified = field(default_factory=Unverified)
    #: the overlay that ran (its hops and their regions: what the measurement history records)
    overlay: Overlay | None = None

    @property
    def gbps(self) -> float:
        return self.bytes * 8 / self.seconds / 1e9 if self.seconds else 0.0

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {
            "objects": self.objects,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "gbps": round(self.gbps, 4),
            "wire_to_raw": round(self.wire_bytes / self.bytes, 4) if self.bytes else None,
            "resends": self.resends,
            "checksums_verified": self.checksums_verified,
        }
        if self.unverified.count:
            out["size_only"] = self.unverified.as_dict()
        if self.resumed_bytes or self.discarded:
            out["resumed_bytes"] = self.resumed_bytes
            out["resumed_objects_discarded"] = self.discarded
        return out


#: the task's summary (XCom): per destination and in total, JSON, free of credentials
Summary = dict[str, object]


def summarize(
    base: Mapping[str, object],
    results: Sequence[TransferResult],
    deleted: Sequence[int] = (),
    measurements_path: str | None = None,
) -> Summary:
    """The XCom summary of a finished transfer: ``base`` (regions, plans in brief, diff counts per
    destination URI) with each destination's result, and the totals."""
    summary: Summary = {**base, "status": "done"}
    measurements.record_finished(results, measurements_path)  # when [skyplane] measurements_path is set
    given = base.get("destinations")
    destinations = dict(given) if isinstance(given, Mapping) else {}
    for n, (uri, result) in enumerate(zip(destinations, results, strict=True)):
        entry = dict(destinations[uri])
        entry.update(result.summary())
        sync = entry.get("sync")
        if isinstance(sync, Mapping):
            entry["sync"] = {**sync, "deleted": deleted[n] if n < len(deleted) else 0}
        destinations[uri] = entry
    summary["destinations"] = destinations
    total_bytes = sum(r.bytes for r in results)
    wire = sum(r.wire_bytes for r in results)
    seconds = round(max((r.seconds for r in results), default=0.0), 3)
    summary.update(
        objects=sum(r.objects for r in results),
        bytes=total_bytes,
        seconds=seconds,
        gbps=round(total_bytes * 8 / seconds / 1e9, 4) if seconds else 0.0,
        wire_to_raw=round(wire / total_bytes, 4) if total_bytes else None,
        resends=sum(r.resends for r in results),
        checksums_verified=sum(r.checksums_verified for r in results),
        resumed_bytes=sum(r.resumed_bytes for r in results),
    )
    return summary
