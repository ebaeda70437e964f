"""The gateway program: one JSON document that tells a gateway what to do.

A gateway does any of three jobs, by which parts of the program are present:

* **read** (``source``): read the chunks listed in a manifest from the source store, encrypt and
  compress them, and send them to the next hops;
* **forward** (``next_hops`` without ``source``): pass received frames on, unopened;
* **write** (``destination``): check received chunks and write them to the destination store.

A gateway of a multicast tree may both write and forward. Its next hops then belong to
**branches** (``branch`` of each next hop, named by the destinations it leads to): every frame is
sent once down every branch, and within a branch to one of its hops, split by weight. A unicast
program has one branch (every ``branch`` empty). The controller (the transfer job in the
Airflow task) makes one program per gateway from the TransferPlan; the secrets it holds (store
credentials, the path of the transfer key) are never printed: :meth:`Program.redacted`.

Example::

    {"version": 1, "transfer_id": "9f0c...", "gateway_id": "aws:us-east-1/0",
     "listen": {"host": "127.0.0.1", "port": 0}, "control": {"host": "127.0.0.1", "port": 0},
     "tls": {"cert": "gw.pem", "key": "gw.key", "ca": "ca.pem"}, "cipher_key_file": "transfer.key",
     "source": {"store": {"scheme": "file", "root": "/data"}, "manifest": "chunks.jsonl"},
     "next_hops": [{"gateway_id": "aws:eu-west-1/0", "host": "10.0.0.2", "port": 7000,
                    "connections": 8, "weight": 1.0}],
     "compress": "auto", "encrypt": true, "max_inflight_mb": 512, "chunk_size_mb": 8,
     "workers": 4, "window": 4}

``max_inflight_mb`` is the byte budget of the whole gateway (every worker process together): what
it may hold at once of chunks being read, sealed, relayed, decoded or written. ``workers`` is the
number of worker processes (absent: the machine's CPU count, bounded by
:data:`MAX_WORKERS` and by the connections of each next hop); ``window`` the frames each connection
keeps in flight before it waits for an acknowledgement. The controller derives all three from the
plan (:mod:`airflow_skyplane.transfer.tuning`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import ProtocolError
from airflow_skyplane.gateway.stores import redact

VERSION = 1
#: most worker processes a gateway runs, whatever its machine's CPU count
MAX_WORKERS = 32
#: most frames one connection keeps in flight
MAX_WINDOW = 64
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


def _fail(what: str, fix: str) -> ProtocolError:
    return ProtocolError(f"gateway program: {what}: {fix}")


def _whole(value: Any) -> bool:
    """An int that is not a bool (JSON true would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return (_whole(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @classmethod
    def parse(cls, raw: Any, name: str) -> Endpoint:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("host"), str):
            raise _fail(f"{name} is {raw!r}", 'write it as {"host": "127.0.0.1", "port": 0}')
        port = raw.get("port", 0)
        if not _whole(port) or not 0 <= port <= 65535:
            raise _fail(f"{name}.port is {port!r}", "use 0 (any free port) to 65535")
        return cls(raw["host"], port)


@dataclass(frozen=True)
class NextHop:
    gateway_id: str
    host: str
    port: int
    connections: int = 8
    weight: float = 1.0
    #: the branch of a multicast tree the hop belongs to ("" in a unicast overlay)
    branch: str = ""


def branches_of(hops: tuple[NextHop, ...]) -> dict[str, list[NextHop]]:
    """The next hops grouped by branch, in the order of their first hop."""
    out: dict[str, list[NextHop]] = {}
    for hop in hops:
        out.setdefault(hop.branch, []).append(hop)
    return out


@dataclass(frozen=True)
class Program:
    transfer_id: str
    gateway_id: str
    tls: Mapping[str, str]
    listen: Endpoint | None = None
    control: Endpoint = Endpoint("127.0.0.1", 0)
    cipher_key_file: str | None = None
    source: Mapping[str, Any] | None = None
    destination: Mapping[str, Any] | None = None
    next_hops: tuple[NextHop, ...] = ()
    compress: str = "auto"
    encrypt: bool = True
    max_inflight_mb: int = 128
    chunk_size_mb: int = 16
    #: worker processes (None: the machine's CPU count, see :meth:`worker_count`)
    workers: int | None = None
    #: frames in flight per connection
    window: int = 4
    #: unix time at which the gateway stops on its own, whatever happens to its controller
    expires_at: float | None = None
    #: process id of a controller on the same machine that waits for the transfer: when it dies
    #: (a worker killed with SIGKILL runs no teardown), the gateway stops within a second or two
    watch_pid: int | None = None
    test_faults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def reads(self) -> bool:
        return self.source is not None

    @property
    def writes(self) -> bool:
        return self.destination is not None

    @property
    def forwards(self) -> bool:
        return bool(self.next_hops) and self.source is None

    def worker_count(self, cpus: int | None = None) -> int:
        """Worker processes to run: the program's ``workers``, else the machine's CPU count, at most
        :data:`MAX_WORKERS`; a gateway that sends runs no more workers than its thinnest next hop has
        connections, so that every worker has a connection to every next hop."""
        wanted = self.workers or cpus or os.cpu_count() or 1
        wanted = min(wanted, MAX_WORKERS)
        if self.next_hops:
            wanted = min(wanted, min(hop.connections for hop in self.next_hops))
        return max(1, wanted)

    def redacted(self) -> dict[str, Any]:
        shown: dict[str, Any] = redact(self.raw())
        return shown

    def raw(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": VERSION,
            "transfer_id": self.transfer_id,
            "gateway_id": self.gateway_id,
            "tls": dict(self.tls),
            "control": {"host": self.control.host, "port": self.control.port},
            "compress": self.compress,
            "encrypt": self.encrypt,
            "max_inflight_mb": self.max_inflight_mb,
            "chunk_size_mb": self.chunk_size_mb,
            "window": self.window,
            "next_hops": [
                {k: v for k, v in hop.__dict__.items() if k != "branch" or v} for hop in self.next_hops
            ],
        }
        if self.workers is not None:
            out["workers"] = self.workers
        if self.listen:
            out["listen"] = {"host": self.listen.host, "port": self.listen.port}
        for name in ("cipher_key_file", "source", "destination"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.expires_at is not None:
            out["expires_at"] = self.expires_at
        if self.watch_pid is not None:
            out["watch_pid"] = self.watch_pid
        if self.test_faults:
            out["test_faults"] = dict(self.test_faults)
        return out

    def dumps(self) -> str:
        return json.dumps(self.raw(), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> Program:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise _fail(
                f"not JSON ({err.msg} at line {err.lineno})", "pass the file the controller wrote"
            ) from None
        return cls.parse(raw)

    @classmethod
    def load(cls, path: str | Path) -> Program:
        try:
            return cls.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise _fail(f"cannot read {path} ({err.strerror})", "check the --program path") from None

    @classmethod
    def parse(cls, raw: Any) -> Program:
        if not isinstance(raw, Mapping):
            raise _fail("the document is not a JSON object", "pass the file the controller wrote")
        if raw.get("version") != VERSION:
            raise _fail(
                f"version {raw.get('version')!r} is not {VERSION}",
                "run the same airflow-skyplane version on the relays as in the task",
            )
        tid = raw.get("transfer_id")
        if not isinstance(tid, str) or not _HEX32.match(tid):
            raise _fail(f"transfer_id {tid!r} is not 32 lowercase hex digits", "use uuid4().hex")
        gid = raw.get("gateway_id")
        if not isinstance(gid, str) or not gid:
            raise _fail(f"gateway_id {gid!r} is empty", "name the gateway, e.g. 'aws:us-east-1/0'")
        tls = raw.get("tls")
        if not isinstance(tls, Mapping) or not all(
            isinstance(tls.get(k), str) for k in ("cert", "key", "ca")
        ):
            raise _fail("tls needs cert, key and ca paths", "the controller writes them with the fleet CA")
        hops = []
        raw_hops = raw.get("next_hops") or []
        if not isinstance(raw_hops, list):
            raise _fail(f"next_hops is {raw_hops!r}", "give a list of next hops")
        for n, hop in enumerate(raw_hops):
            if not isinstance(hop, Mapping):
                raise _fail(f"next_hops[{n}] is {hop!r}", "give gateway_id, host, port, connections, weight")
            endpoint = Endpoint.parse(hop, f"next_hops[{n}]")
            connections, weight = hop.get("connections", 8), hop.get("weight", 1.0)
            if not _whole(connections) or not 1 <= connections <= 256:
                raise _fail(f"next_hops[{n}].connections is {connections!r}", "use 1 to 256")
            if not _number(weight) or weight <= 0:
                raise _fail(f"next_hops[{n}].weight is {weight!r}", "use a positive share of the flow")
            branch = hop.get("branch", "")
            if not isinstance(branch, str):
                raise _fail(f"next_hops[{n}].branch is {branch!r}", "name the branch, or leave it out")
            hops.append(
                NextHop(
                    str(hop.get("gateway_id", "")), endpoint.host, endpoint.port, connections,
                    float(weight), branch,
                )
            )  # fmt: skip
        source, destination = raw.get("source"), raw.get("destination")
        if source is not None and not (
            isinstance(source, Mapping) and "store" in source and "manifest" in source
        ):
            raise _fail("source needs 'store' and 'manifest'", "the controller writes both")
        if destination is not None and not (isinstance(destination, Mapping) and "store" in destination):
            raise _fail("destination needs 'store'", "the controller writes it")
        if source is None and destination is None and not hops:
            raise _fail("no source, destination or next_hops", "a gateway must read, forward or write")
        if source is not None and not hops:
            raise _fail("a source without next_hops", "give the gateways the chunks go to")
        listen = Endpoint.parse(raw["listen"], "listen") if raw.get("listen") is not None else None
        if listen is None and source is None:
            raise _fail("a receiving gateway without 'listen'", 'add "listen": {"host": ..., "port": 0}')
        encrypt = raw.get("encrypt", True)
        if not isinstance(encrypt, bool):
            raise _fail(f"encrypt is {encrypt!r}", "use true or false")
        key_file = raw.get("cipher_key_file")
        if key_file is not None and not isinstance(key_file, str):
            raise _fail(f"cipher_key_file is {key_file!r}", "give the path of the transfer key file")
        if encrypt and (source is not None or destination is not None) and not key_file:
            raise _fail(
                "encryption is on but cipher_key_file is missing", "the controller writes the transfer key"
            )
        compress = raw.get("compress", "auto")
        if not isinstance(compress, str) or compress not in ("auto", "always", "never"):
            raise _fail(f"compress is {compress!r}", "use auto, always or never")
        inflight = raw.get("max_inflight_mb", 128)
        if not _whole(inflight) or not 8 <= inflight <= 4096:
            raise _fail(f"max_inflight_mb is {inflight!r}", "use 8 to 4096")
        chunk_mb = raw.get("chunk_size_mb", 16)
        if not _whole(chunk_mb) or not 1 <= chunk_mb <= 256:
            raise _fail(f"chunk_size_mb is {chunk_mb!r}", "use 1 to 256")
        workers = raw.get("workers")
        if workers is not None and (not _whole(workers) or not 1 <= workers <= 256):
            raise _fail(f"workers is {workers!r}", "use 1 to 256, or leave it out (one per CPU)")
        window = raw.get("window", 4)
        if not _whole(window) or not 1 <= window <= MAX_WINDOW:
            raise _fail(f"window is {window!r}", f"use 1 to {MAX_WINDOW} frames per connection")
        expires_at = raw.get("expires_at")
        if expires_at is not None and (not _number(expires_at) or not expires_at > 0):
            raise _fail(f"expires_at is {expires_at!r}", "give a unix time in seconds, or leave it out")
        watch_pid = raw.get("watch_pid")
        if watch_pid is not None and (not _whole(watch_pid) or watch_pid < 1):
            raise _fail(f"watch_pid is {watch_pid!r}", "give the controller's process id, or leave it out")
        faults = raw.get("test_faults") or {}
        if not isinstance(faults, Mapping):
            raise _fail(f"test_faults is {faults!r}", "leave it out (it is for tests)")
        try:
            json.dumps(faults, allow_nan=False)  # it travels in the program: JSON, no NaN or infinity
        except (TypeError, ValueError):
            raise _fail(f"test_faults is {faults!r}", "give JSON values only, or leave it out") from None
        control = raw.get("control", {"host": "127.0.0.1", "port": 0})
        return cls(
            transfer_id=tid,
            gateway_id=gid,
            tls=dict(tls),
            listen=listen,
            control=Endpoint.parse(control, "control"),
            cipher_key_file=key_file,
            source=source,
            destination=destination,
            next_hops=tuple(hops),
            compress=compress,
            encrypt=encrypt,
            max_inflight_mb=inflight,
            chunk_size_mb=chunk_mb,
            workers=workers,
            window=window,
            expires_at=float(expires_at) if expires_at is not None else None,
            watch_pid=watch_pid,
            test_faults=dict(faults),
        )
