"""``airflow-skyplane``: plan overlay transfers and inspect the network model without Airflow.

    airflow-skyplane plan SRC DST [DST ...] [--grid CSV] [--objective throughput|cost] ...
    airflow-skyplane grid export [--grid CSV] --out FILE
    airflow-skyplane regions [--provider aws|gcp|azure]
    airflow-skyplane fleets list|sweep [--state-dir DIR] [--older-than-minutes N]
    airflow-skyplane fleets list|sweep --cloud aws --region aws:us-east-1 [--region ...]
    airflow-skyplane fleets teardown FLEET_ID [--state-dir DIR | --cloud aws --region ...]
    airflow-skyplane sky up [--bucket s3://a ...] [--env-file F] | sky env | sky down
    airflow-skyplane --version

Uses only argparse and the planner (which imports no Airflow), so it runs on a laptop or a relay VM
with nothing but the package's core dependencies. Every error a user can cause is printed as one line
on stderr and exits with status 2. Output cut short by its reader (``airflow-skyplane regions | head``)
ends the command quietly.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from airflow_skyplane import __version__
from airflow_skyplane.exceptions import InvalidInputError, SkyplaneError
from airflow_skyplane.planner.network import NetworkModel, export_rows
from airflow_skyplane.planner.regions import EXAMPLE_NAMES, PROVIDERS, did_you_mean
from airflow_skyplane.planner.solver import DEFAULT_CANDIDATE_RELAYS, Planner

PROG = "airflow-skyplane"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes in one line (exit 2) instead of usage plus a message."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def _model(args: argparse.Namespace) -> NetworkModel:
    spot = bool(getattr(args, "spot", False))
    if args.grid:
        return NetworkModel.from_csv(args.grid, spot=spot)
    return NetworkModel.default(spot=spot)


def _split_patterns(values: Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def _region(model: NetworkModel, name: str, what: str) -> str:
    """``name`` as the model knows it, or an error that names the argument and the nearest names."""
    try:
        return model.resolve(name)
    except InvalidInputError:
        hint = did_you_mean(name, model.regions)
        raise _UsageError(
            f"unknown region {name!r} ({what}): {hint + ' ' if hint else ''}names look like "
            f"{EXAMPLE_NAMES}; '{PROG} regions' lists them all"
        ) from None


def _cmd_plan(args: argparse.Namespace) -> int:
    model = _model(args)
    args.src = _region(model, args.src, "SRC")
    args.dst = [_region(model, d, "DST") for d in args.dst]
    planner = Planner(
        model,
        max_vms_per_region=args.max_vms_per_region,
        max_vms=args.max_vms,
        connections_per_vm=args.connections_per_vm,
        allowed_regions=_split_patterns(args.allowed_regions),
        candidate_relays=None if args.candidate_relays == 0 else args.candidate_relays,
        solver=args.solver,
        time_limit_s=args.time_limit_s,
    )
    plan = planner.plan(
        args.src,
        args.dst,
        objective=args.objective,
        min_throughput_gbps=args.min_throughput_gbps,
        size_gb=args.size_gb,
        deadline_s=args.deadline_s,
        budget_usd=args.budget_usd,
        max_cost_per_gb=args.max_cost_per_gb,
    )
    if args.png:
        try:
            plan.to_png(args.png)
        except OSError as exc:
            raise _UsageError(f"cannot write --png {args.png!r}: {exc.strerror or exc}") from None
    if args.json:
        print(plan.to_json(indent=2))
    else:
        print(plan.to_table())
    return 0


def _cmd_grid_export(args: argparse.Namespace) -> int:
    model = _model(args)
    rows = list(export_rows(model))
    try:
        with open(args.out, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise _UsageError(
            f"cannot write --out {args.out!r}: {exc.strerror or exc}; pick a writable path"
        ) from None
    print(f"wrote {len(rows)} pairs over {len(model.regions)} regions to {args.out}", file=sys.stderr)
    return 0


def _cmd_regions(args: argparse.Namespace) -> int:
    model = NetworkModel.default()
    names = [r for r in model.regions if args.provider is None or r.startswith(args.provider + ":")]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "region": r,
                        "continent": model.region(r).continent,
                        "lat": model.region(r).lat,
                        "lon": model.region(r).lon,
                        "egress_gbps_per_vm": model.egress_cap(r),
                        "ingress_gbps_per_vm": model.ingress_cap(r),
                        "vm_usd_per_hour": model.vm_price_per_hour(r),
                    }
                    for r in names
                ],
                indent=2,
            )
        )
    else:
        for r in names:
            print(f"{r:<34}{model.region(r).continent}")
    return 0


def _state_dir(args: argparse.Namespace) -> str:
    from airflow_skyplane.compute.fleets import default_state_dir

    return str(args.state_dir or os.environ.get("AIRFLOW__SKYPLANE__STATE_DIR") or default_state_dir())


def _cmd_fleets(args: argparse.Namespace) -> int:
    """Local fleets on this machine. This stops gateways and deletes records and secrets; the
    multipart uploads a dead fleet left are aborted by the Airflow side (SkyplaneCleanupOperator)."""
    import time

    from airflow_skyplane.compute import fleets

    if getattr(args, "cloud", "local") == "aws":
        return _aws_fleets(args)
    state_dir = _state_dir(args)
    if args.fleets_command == "list":
        rows: list[dict[str, Any]] = [
            {
                "fleet_id": record.fleet_id,
                "backend": record.backend,
                "age_minutes": round((time.time() - record.created_at) / 60, 1),
                "expires_in_minutes": round((record.expires_at - time.time()) / 60, 1),
                "owner": record.owner,
                "running_gateways": running,
            }
            for record, running in fleets.list_fleets(state_dir)
        ]
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no fleets recorded in {state_dir}")
        else:
            print(f"{'FLEET':<14}{'BACKEND':<9}{'AGE':>10}{'EXPIRES IN':>12}{'GATEWAYS':>10}  OWNER")
            for row in rows:
                owner = row["owner"]
                who = ".".join(str(owner.get(k)) for k in ("dag_id", "task_id") if owner.get(k)) or "-"
                print(
                    f"{row['fleet_id']:<14}{row['backend']:<9}{row['age_minutes']:>6.1f} min"
                    f"{row['expires_in_minutes']:>8.1f} min{len(row['running_gateways']):>10}  {who}"
                )
        return 0
    if args.fleets_command == "teardown":
        fleet_id = fleets.check_fleet_id(args.fleet_id)
        known = fleets.fleet_ids(state_dir)
        if fleet_id not in known:
            hint = did_you_mean(fleet_id, known)
            raise _UsageError(
                f"no fleet {fleet_id!r} is recorded in {state_dir}{': ' + hint if hint else ''} "
                f"('{PROG} fleets list' shows the fleets there; --state-dir names another folder)"
            )
        stopped = fleets.teardown_fleet(state_dir, fleet_id)
        print(f"fleet {fleet_id}: stopped {len(stopped)} gateway(s), removed its record")
        return 0
    older = args.older_than_minutes * 60 if args.older_than_minutes is not None else None
    swept = fleets.sweep(state_dir, older_than_s=older)
    print(f"swept {len(swept)} fleet(s){': ' + ', '.join(swept) if swept else ''}")
    return 0


def _aws_fleets(args: argparse.Namespace) -> int:
    """AWS fleets, found by their tags with the default boto3 credentials (no Airflow needed)."""
    import time

    import boto3

    from airflow_skyplane.compute import aws

    if not args.region:
        raise _UsageError("--cloud aws needs at least one --region, e.g. --region aws:us-east-1")
    backend = aws.AWSRelayBackend(client_factory=lambda region: boto3.client("ec2", region_name=region))
    regions = [r if r.startswith("aws:") else f"aws:{r}" for r in args.region]
    as_json = getattr(args, "json", False)
    if args.fleets_command == "teardown":
        found = aws.list_fleets(backend, regions)
        if args.fleet_id not in found:
            hint = did_you_mean(args.fleet_id, found)
            raise _UsageError(
                f"no fleet {args.fleet_id!r} has resources in {', '.join(regions)}"
                f"{': ' + hint if hint else ''} ('{PROG} fleets list --cloud aws' shows the fleets there; "
                "add the --region it runs in)"
            )
        removed = backend.teardown(args.fleet_id, regions)
        print(f"fleet {args.fleet_id}: removed {json.dumps(removed)}")
        return 0
    if args.fleets_command == "list":
        found = aws.list_fleets(backend, regions)
        if as_json:
            print(json.dumps(found, indent=2))
        elif not found:
            print(f"no fleets found in {', '.join(regions)}")
        else:
            print(f"{'FLEET':<14}{'CLOUD':<9}{'EXPIRES IN':>12}  REGIONS")
            for fleet_id, info in found.items():
                left = (info["expires_at"] - time.time()) / 60
                print(f"{fleet_id:<14}{'aws':<9}{left:>8.1f} min  {', '.join(sorted(info['regions']))}")
        return 0
    swept = aws.sweep(backend, regions)
    print(f"swept {len(swept)} fleet(s){': ' + ', '.join(swept) if swept else ''}")
    return 0


def _cmd_sky(args: argparse.Namespace) -> int:
    """The emulated sky outside pytest (see airflow_skyplane.testing.localsky): the environment goes
    to stdout (for `eval "$(airflow-skyplane sky up)"`) or to --env-file, everything else to stderr."""
    from airflow_skyplane.testing import localsky

    folder = args.dir or str(localsky.default_sky_dir())
    if args.sky_command == "up":
        record = localsky.sky_up(
            folder, services=args.service or localsky.SERVICES, buckets=args.bucket or (),
            timeout_s=args.timeout_s,
        )  # fmt: skip
        print(localsky.summary(record), file=sys.stderr)
        if args.env_file:
            localsky.write_env_file(args.env_file, record)
            print(
                f"environment written to {args.env_file}: load it with '. {args.env_file}'", file=sys.stderr
            )
        else:
            print(localsky.env_text(record), end="")
        print(f"stop it with: {PROG} sky down" + (f" --dir {args.dir}" if args.dir else ""), file=sys.stderr)
        return 0
    if args.sky_command == "env":
        found = localsky.read_record(folder)
        if not found or not localsky.running(found):
            raise _UsageError(f"no emulated sky runs from {folder}: '{PROG} sky up' starts one")
        print(localsky.env_text(found), end="")
        return 0
    stopped = localsky.sky_down(folder)
    names = ", ".join(f"{p['name']} (pid {p['pid']})" for p in stopped) or "nothing was still running"
    print(f"emulated sky in {folder}: stopped {names}; record removed")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Plan overlay transfers between cloud regions (no Airflow needed)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="plan a transfer from SRC to one or more DST regions")
    p.add_argument("src", metavar="SRC", help="source region, e.g. aws:us-east-1")
    p.add_argument("dst", metavar="DST", nargs="+", help="destination region(s); several = multicast")
    p.add_argument("--grid", metavar="CSV", help="measured throughput grid (default: the fitted model)")
    p.add_argument("--objective", choices=("throughput", "cost"), help="fastest within a budget, or cheapest")
    p.add_argument("--max-vms-per-region", type=int, default=1, metavar="N")
    p.add_argument("--max-vms", type=int, metavar="N", help="total VMs, gateways included")
    p.add_argument("--connections-per-vm", type=int, default=64, metavar="N")
    cost = p.add_mutually_exclusive_group()
    cost.add_argument("--budget-usd", type=float, metavar="X", help="total budget for --size-gb")
    cost.add_argument("--max-cost-per-gb", type=float, metavar="X", help="USD per GB cap")
    p.add_argument("--min-throughput-gbps", type=float, metavar="X")
    p.add_argument("--size-gb", type=float, metavar="G")
    p.add_argument("--deadline-s", type=float, metavar="S")
    p.add_argument(
        "--allowed-regions",
        nargs="+",
        metavar="PATTERN",
        help="glob patterns of regions relays may use, e.g. 'aws:eu-*' 'gcp:europe-*'",
    )
    p.add_argument("--spot", action="store_true", help="price VMs at spot rates")
    p.add_argument(
        "--candidate-relays",
        type=int,
        default=DEFAULT_CANDIDATE_RELAYS,
        metavar="K",
        help=f"relay regions offered to the MILP (default {DEFAULT_CANDIDATE_RELAYS}; 0 = all)",
    )
    p.add_argument("--solver", choices=("auto", "cbc", "highs"), default="auto")
    p.add_argument("--time-limit-s", type=float, metavar="S", help="solver time limit")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--png", metavar="FILE", help="also draw the overlay on a map to FILE (needs the 'plot' extra)"
    )
    p.set_defaults(func=_cmd_plan)

    g = sub.add_parser("grid", help="network grid tools")
    gsub = g.add_subparsers(dest="grid_command", required=True, parser_class=_Parser)
    ge = gsub.add_parser("export", help="write the model's Gbps and $/GB for every ordered region pair")
    ge.add_argument("--grid", metavar="CSV", help="measured grid to start from (default: the fitted model)")
    ge.add_argument("--out", metavar="FILE", required=True)
    ge.set_defaults(func=_cmd_grid_export)

    r = sub.add_parser("regions", help="list known regions")
    r.add_argument("--provider", choices=PROVIDERS)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=_cmd_regions)

    f = sub.add_parser("fleets", help="list, sweep or tear down the local relay fleets of this machine")
    fsub = f.add_subparsers(dest="fleets_command", required=True, parser_class=_Parser)
    for name, text in (("list", "list recorded fleets"), ("sweep", "tear down fleets past their expiry")):
        c = fsub.add_parser(name, help=text)
        c.add_argument(
            "--state-dir", metavar="DIR", help="fleet records (default $AIRFLOW_HOME/skyplane/fleets)"
        )
        c.add_argument("--cloud", choices=("local", "aws"), default="local", help="where the fleets run")
        c.add_argument("--region", action="append", metavar="REGION", help="with --cloud aws (repeatable)")
        c.set_defaults(func=_cmd_fleets)
    fsub.choices["list"].add_argument("--json", action="store_true")
    fsub.choices["sweep"].add_argument(
        "--older-than-minutes", type=float, metavar="N", help="also tear down fleets older than N minutes"
    )
    t = fsub.add_parser("teardown", help="tear one fleet down by its id")
    t.add_argument("fleet_id", metavar="FLEET_ID")
    t.add_argument("--state-dir", metavar="DIR")
    t.add_argument("--cloud", choices=("local", "aws"), default="local")
    t.add_argument("--region", action="append", metavar="REGION", help="with --cloud aws (repeatable)")
    t.set_defaults(func=_cmd_fleets)

    sky = sub.add_parser(
        "sky", help="the emulated sky (moto, GCS emulator, Azurite) on loopback, for trying DAGs locally"
    )
    ssub = sky.add_subparsers(dest="sky_command", required=True, parser_class=_Parser)
    up = ssub.add_parser("up", help="start the emulators, create buckets, print the environment to export")
    up.add_argument(
        "--bucket",
        action="append",
        metavar="URI",
        help="create this bucket: s3://a, gs://b, az://c (repeatable)",
    )
    up.add_argument(
        "--service", action="append", choices=("s3", "gs", "az"), help="emulate only these (default: all)"
    )
    up.add_argument("--env-file", metavar="FILE", help="write the environment to FILE instead of stdout")
    up.add_argument("--timeout-s", type=float, default=60.0, metavar="S", help="wait this long for start")
    ssub.add_parser("env", help="print the environment of the running sky again")
    ssub.add_parser("down", help="stop the emulators that 'sky up' started (by their recorded pids)")
    for c in ssub.choices.values():
        c.add_argument(
            "--dir", metavar="DIR", help="where the sky is recorded (default $AIRFLOW_HOME/skyplane/sky)"
        )
        c.set_defaults(func=_cmd_sky)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as done:  # --help and --version print and exit
            sys.stdout.flush()
            return done.code if isinstance(done.code, int) else 0
        code = int(args.func(args))
        sys.stdout.flush()  # a reader that went away fails here, inside the try, not at exit
    except (SkyplaneError, _UsageError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader closed the pipe (`| head`): stop quietly, as a command killed by SIGPIPE would.
        # stdout is pointed at /dev/null so that the interpreter's own flush at exit fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return code


if __name__ == "__main__":
    sys.exit(main())
