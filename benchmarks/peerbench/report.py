"""The targets met or missed, the table of ``docs/benchmarks.md``, the chart and the JSON."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .testbed import FAR, Run, Testbed
from .workloads import MiB


def find(runs: list[Run], w: str, contender: str, dest: str) -> Run | None:
    for r in runs:
        if r.workload == w and r.contender == contender and r.destination == dest and r.ok:
            return r
    return None


def ratio_to_ours(runs: list[Run], r: Run) -> float | None:
    ours = find(runs, r.workload, "ours", r.destination)
    if ours is None or not r.ok or not r.gbytes_per_s:
        return None
    return ours.gbytes_per_s / r.gbytes_per_s


def targets(runs: list[Run], plans: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def ratio(w: str, peer: str, dest: str) -> float | None:
        other = find(runs, w, peer, dest)
        return None if other is None else ratio_to_ours(runs, other)

    def add(name: str, value: float | None, ok: Callable[[float], bool], want: str) -> None:
        out.append({"target": name, "want": want, "measured": None if value is None else round(value, 3),
                    "met": None if value is None else bool(ok(value))})  # fmt: skip

    def at_least(x: float) -> Callable[[float], bool]:
        return lambda v: v >= x

    for w, x in (("a", 10.0), ("b", 5.0), ("c", 5.0)):
        add(f"ours / S3ToGCSOperator on ({w})", ratio(w, "S3ToGCSOperator", "far-gs"), at_least(x), f">= {x}")
    for w in ("a", "b"):
        add(f"ours / rclone-tuned on ({w}), overlay helps", ratio(w, "rclone-tuned", "far-s3"),
            lambda v: v >= 1.5, ">= 1.5")  # fmt: skip
    for w in ("a", "b", "c"):
        add(f"ours / rclone-tuned on ({w}), direct is best", ratio(w, "rclone-tuned", "near-s3"),
            lambda v: v >= 0.9, ">= 0.9")  # fmt: skip
    predicted = plans[FAR].throughput_gbps / plans[FAR].direct_throughput_gbps
    for w in ("a", "b", "c"):
        ours, direct = find(runs, w, "ours", "far-s3"), find(runs, w, "ours-direct", "far-s3")
        value = None
        if ours and direct:  # the data plane's own seconds, on the same bytes
            value = direct.extra["dataplane_s"] / ours.extra["dataplane_s"]
        add(f"overlay / forced direct on ({w}) vs predicted {predicted:.2f}x",
            None if value is None else value / predicted, lambda v: abs(v - 1) <= 0.2,
            "measured / predicted within 1 +- 0.2")  # fmt: skip
    return out


def chart(runs: list[Run], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({(r.contender, r.destination) for r in runs}, key=lambda cd: (cd[1], cd[0]))
    ran = [w for w in ("a", "b", "c") if any(r.workload == w for r in runs)]  # --workloads may pick some
    fig, axes = plt.subplots(1, len(ran), figsize=(max(8, 5 * len(ran)), 5), sharey=False, squeeze=False)
    for ax, w in zip(axes[0], ran, strict=True):
        labels, values, colours = [], [], []
        for contender, dest in names:
            r = find(runs, w, contender, dest)
            labels.append(f"{contender}\n-> {dest}")
            values.append(r.gbytes_per_s * 1000 if r else 0.0)
            colours.append("tab:blue" if contender.startswith("ours") else "tab:grey")
        ax.barh(labels, values, color=colours)
        ax.set_title(f"workload ({w})")
        ax.set_xlabel("MB/s")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(runs: list[Run]) -> str:
    lines = ["| workload | contender | destination | fraction | objects | MiB | seconds | MB/s | ours / it |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        ratio = ratio_to_ours(runs, r)
        last = [line.strip() for line in (r.error or "").splitlines() if line.strip()][-1:] or [""]
        seconds = f"{r.measured_s:.1f}" if r.ok else "failed: " + last[0].replace("|", "/")[:90]
        lines.append(
            f"| ({r.workload}) | {r.contender} | {r.destination} | {r.fraction:g} | {r.objects} | "
            f"{r.bytes / MiB:,.1f} | {seconds} | {r.gbytes_per_s * 1000:.1f} | "
            + (f"{ratio:.2f}x |" if ratio is not None else "- |")
        )
    return "\n".join(lines) + "\n"


def result(args: Any, bed: Testbed, runs: list[Run], total_s: float, load: list[float]) -> dict[str, Any]:
    """The JSON the benchmark prints last."""
    return {
        "benchmark": "peers",
        "scale": args.scale,
        "run_budget_s": args.run_budget_s,
        "machine": {"cpus": os.cpu_count(), "load_1m_at_start": load[0], "load_1m_at_end": load[1]},
        "links_mbit": {
            f"{a} <-> {b}": {"rate": round(r, 2), "flow_cap": round(bed.cap(a, b), 2)}
            for (a, b), r in bed.rates.items()
        },  # fmt: skip
        "plans": {
            dst: {
                "relays": sorted(p.relays),
                "throughput_mbit": round(p.throughput_gbps * 1000, 2),
                "direct_mbit": round(p.direct_throughput_gbps * 1000, 2),
                "predicted_speedup": round(p.throughput_gbps / p.direct_throughput_gbps, 3),
            }
            for dst, p in bed.plans.items()
        },  # fmt: skip
        "emulator_ceilings_loopback": bed.ceiling,
        "runs": [
            {
                **{k: v for k, v in r.__dict__.items() if k != "extra"},
                "wall_s": round(r.wall_s, 3),
                "measured_s": round(r.measured_s, 3),
                "gbytes_per_s": round(r.gbytes_per_s, 5),
                "ratio_ours_to_it": None if (v := ratio_to_ours(runs, r)) is None else round(v, 3),
                **r.extra,
            }
            for r in runs
        ],  # fmt: skip
        "targets": targets(runs, bed.plans) if bed.plans else [],
        "total_s": round(total_s, 1),
    }
