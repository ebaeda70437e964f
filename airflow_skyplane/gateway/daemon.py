"""The gateway daemon: ``python -m airflow_skyplane.gateway --program FILE``.

One gateway per relay VM (or per region of the emulated WAN). Its program (:mod:`.program`) says
whether it reads, forwards or writes. The gateway is a small **main process** and ``workers``
**worker processes** (:mod:`.worker`; by default one per CPU), because the threads of one Python
process share one interpreter lock and a relay VM has many cores.

The main process imports neither the store SDKs nor the cryptography, so it is listening and
serving its status a fraction of a second after it starts, while its workers import and open their
stores; the controller starts the next gateway meanwhile. It:

* binds the gateway's one listening port and hands each accepted connection to a worker, round
  robin, as a file descriptor over a Unix socket (the worker does the TLS handshake);
* gives each worker its share of every next hop's connections, and of the byte budget
  (``max_inflight_mb``);
* on a reading gateway, hands out the chunk requests of the manifest to the workers as they ask
  for more, largest first within a look-ahead of :data:`LOOKAHEAD` requests, so that the last
  round of a transfer is made of small chunks and the connections finish together;
* holds the gateway's one set of counters, its receipts in the order they were written, and its
  errors, from what the workers report, and serves them on the status endpoint
  (:mod:`.status`) on its control address;
* stops its workers on ``POST /stop``, SIGTERM, the fleet's expiry or the controller's death; when a
  worker dies, the gateway dies with it (same exit code or signal), as a killed relay does, so the
  controller names the gateway that failed. Workers die with the main process (``PR_SET_PDEATHSIG``
  on Linux, and the end of their Unix socket everywhere).

The daemon imports no Airflow.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from airflow_skyplane.exceptions import SkyplaneError
from airflow_skyplane.gateway.program import Program
from airflow_skyplane.gateway.status import Counters, serve
from airflow_skyplane.processes import alive

#: chunk requests the main process reads ahead of the workers, to hand out the largest first
LOOKAHEAD = 512
_STOP_GRACE_S = 10.0


class _Feed:
    """The manifest's chunk requests, handed out largest object first within a look-ahead window.

    The parts of one object stay together, in order, and go to one worker (which can then read the
    object with one request, see ``storeside.WholeObjects``); the last round of a transfer is made of
    the smallest objects, so that the connections finish together.
    """

    def __init__(self, path: str, lookahead: int) -> None:
        self._lines = self._read(path)
        self._heap: list[tuple[int, int, list[dict[str, Any]]]] = []
        self._lookahead = max(1, lookahead)
        self._order = 0
        self._queued = 0
        self.total_chunks = 0
        self.exhausted = False

    @staticmethod
    def _read(path: str) -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def _pull(self) -> bool:
        """Read the next request of the manifest (with the other parts of its object) into the
        look-ahead; False at its end."""
        entry = next(self._lines, None)
        if entry is None:
            return False
        group = [entry]
        if entry.get("part_number") == 1:  # the other parts follow it in the manifest
            group += [e for e in itertools.islice(self._lines, entry.get("parts", 1) - 1)]
        for e in group:
            self.total_chunks += len(e["chunks"]) if "chunks" in e else 1
        batch = entry.get("chunks")
        size = sum(c["length"] for c in batch) if batch else entry["object_size"]
        self._order += 1
        heapq.heappush(self._heap, (-size, self._order, group))
        self._queued += len(group)
        return True

    def take(self, n: int) -> list[dict[str, Any]]:
        """At least ``n`` requests (all the parts of an object), largest objects first."""
        while self._queued < self._lookahead + n and self._pull():
            pass
        taken: list[dict[str, Any]] = []
        while self._heap and len(taken) < n:
            group = heapq.heappop(self._heap)[2]
            taken += group
            self._queued -= len(group)
        if not self._heap and not self._pull():
            self.exhausted = True
        return taken


class _WorkerProcess:
    def __init__(
        self, index: int, proc: subprocess.Popen[bytes], conn: Connection, sockets: socket.socket
    ) -> None:
        self.index, self.proc, self.conn, self.sockets = index, proc, conn, sockets
        self.pid = proc.pid
        self.ready = False
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.conn.send(message)


class Gateway:
    def __init__(
        self, program: Program, ready_file: str | None = None, program_path: str | None = None
    ) -> None:
        self.program = program
        self.ready_file = ready_file
        self.program_path = program_path
        self.counters = Counters(program.gateway_id)
        # stop_event: stop working (a failure, or a stop request); stop_requested: the controller (or
        # SIGTERM) asked the process to exit. Until then a failed gateway keeps serving its status,
        # so the controller reads why it failed rather than a closed connection.
        self.stop_event = threading.Event()
        self.stop_requested = threading.Event()
        self.reading_done = threading.Event()
        self.n_workers = program.worker_count()
        self.workers: list[_WorkerProcess] = []
        self._finished = 0
        self._lock = threading.Lock()
        self._feed = _Feed(program.source["manifest"], LOOKAHEAD) if program.source else None
        # the program's budget, at most half of what this machine has available
        self.budget_bytes = program.max_inflight_mb * 1024 * 1024
        available = _available_memory()
        if available:
            self.budget_bytes = min(self.budget_bytes, available // 2)

    # -- workers ---------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _WorkerProcess:
        ours, theirs = socket.socketpair()
        fd_ours, fd_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "airflow_skyplane.gateway", "--worker-of", str(os.getpid()),
                "--ipc-fd", str(theirs.fileno()), "--sockets-fd", str(fd_theirs.fileno())]  # fmt: skip
        if self.program_path:
            argv += ["--program", self.program_path]  # not read: names the gateway in the process list
        proc = subprocess.Popen(
            argv, pass_fds=(theirs.fileno(), fd_theirs.fileno()), stdin=subprocess.DEVNULL
        )
        theirs.close()
        fd_theirs.close()
        worker = _WorkerProcess(index, proc, Connection(ours.detach()), fd_ours)
        budget = self.budget_bytes // self.n_workers
        worker.send(
            {
                "t": "setup",
                "program": self.program.raw(),
                "index": index,
                "workers": self.n_workers,
                "budget": budget,
            }
        )
        return worker

    def _listen_to(self, worker: _WorkerProcess) -> None:
        """Apply what a worker reports; when it is gone, see whether the gateway must die with it."""
        counters = self.counters
        try:
            while True:
                message = worker.conn.recv()
                kind = message["t"]
                if kind == "add":
                    counters.apply(message["v"])
                    counters.worker(worker.pid, peak_rss_mb=message["peak_rss_mb"], cpu_s=message["cpu_s"])
                    if "last_write_at" in message:
                        counters.times(last_write_at=message["last_write_at"])
                elif kind == "receipts":
                    for receipt, chunk_id in message["r"]:
                        counters.receipt(receipt, chunk_id)
                elif kind == "want":
                    self._give_work(worker, message["n"])
                elif kind == "error":
                    counters.error(message["m"])
                    self._halt()
                elif kind == "warn":
                    counters.warn(message["m"])
                elif kind == "branch_failed":
                    counters.branch_failed(message["b"], message["m"])
                elif kind == "times":
                    counters.times(first_read_at=message.get("first_read_at"))
                elif kind == "finished":
                    with self._lock:
                        self._finished += 1
                        if self._finished == len(self.workers):
                            self.reading_done.set()
                elif kind == "ready":
                    worker.ready = True
        except (EOFError, OSError):
            pass
        code = worker.proc.wait()
        if not self.stop_requested.is_set():
            self._die_with(worker, code)

    def _die_with(self, worker: _WorkerProcess, code: int) -> None:
        """A worker died on its own: the gateway dies the same way, as a killed relay does."""
        print(
            f"gateway: worker {worker.index} (pid {worker.pid}) exited with code {code}; "
            "the gateway stops with it",
            file=sys.stderr,
            flush=True,
        )
        for other in self.workers:
            if other is not worker and other.proc.poll() is None:
                other.proc.kill()
        sys.stdout.flush()
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
            time.sleep(1)
        os._exit(code or 1)

    def _give_work(self, worker: _WorkerProcess, n: int) -> None:
        assert self._feed is not None
        with self._lock:
            try:
                items = self._feed.take(n)
            except (OSError, ValueError, KeyError) as err:
                self.counters.error(f"reading the manifest: {err}")
                self._halt()
                return
            end = self._feed.exhausted
            if end:
                self.counters.total_chunks = self._feed.total_chunks
        worker.send({"t": "work", "items": items, "end": end})

    def _halt(self) -> None:
        """Stop working (a failure): every worker stops sending and receiving; the status stays up."""
        self.stop_event.set()
        for worker in self.workers:
            try:
                worker.send({"t": "halt"})
            except OSError:
                continue

    def _accept_loop(self, server: socket.socket) -> None:
        for n in range(1 << 62):
            try:
                raw, _ = server.accept()
            except OSError:
                return
            worker = self.workers[n % len(self.workers)]
            try:
                socket.send_fds(worker.sockets, [b"c"], [raw.fileno()])
            except OSError:
                pass
            finally:
                raw.close()

    # -- life cycle ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_event.set()
        self.stop_requested.set()

    def _expire(self) -> None:
        """The fleet's time is up: stop, as a relay VM powers itself off at its expiry."""
        self.counters.error("the fleet expired (expires_at in the program): the gateway stopped itself")
        print("gateway: the fleet expired; stopping", file=sys.stderr, flush=True)
        self.request_stop()

    def _watch_controller(self, pid: int) -> None:
        """Stop when the controller that waits for this transfer is gone (killed without teardown)."""
        while not self.stop_requested.wait(1.0):
            if not alive(pid):
                self.counters.error(f"the controller (pid {pid}) is gone: the gateway stopped itself")
                print(f"gateway: controller {pid} is gone; stopping", file=sys.stderr, flush=True)
                self.request_stop()
                return

    def run(self) -> int:
        server = None
        if self.program.listen is not None:
            server = socket.create_server((self.program.listen.host, self.program.listen.port), backlog=512)
        # workers first, before this process starts any thread of its own
        self.workers = [self._spawn(i) for i in range(self.n_workers)]
        if self.program.watch_pid is not None:
            threading.Thread(
                target=self._watch_controller, args=(self.program.watch_pid,), name="watchdog", daemon=True
            ).start()
        if self.program.expires_at is not None:
            timer = threading.Timer(max(0.0, self.program.expires_at - time.time()), self._expire)
            timer.daemon = True
            timer.start()
        for worker in self.workers:
            threading.Thread(
                target=self._listen_to, args=(worker,), name=f"worker-{worker.index}", daemon=True
            ).start()
        status = serve(self.counters, self.program.control.host, self.program.control.port, self.request_stop)
        if server is not None:
            threading.Thread(target=self._accept_loop, args=(server,), name="accept", daemon=True).start()
        if self.ready_file:
            info = {
                "gateway_id": self.program.gateway_id,
                "pid": os.getpid(),
                "workers": [w.pid for w in self.workers],
                "listen_port": server.getsockname()[1] if server else None,
                "control_port": status.server_address[1],
            }
            tmp = self.ready_file + ".tmp"
            Path(tmp).write_text(json.dumps(info))
            os.replace(tmp, self.ready_file)
        code = 0
        if self.program.reads:
            while not self.reading_done.wait(0.2) and not self.stop_event.is_set():
                pass
            code = 1 if self.counters.errors else 0
            self.counters.finish()
            self.stop_requested.wait(timeout=float(os.environ.get("SKYPLANE_GATEWAY_LINGER_S", "3600")))
        else:
            self.stop_requested.wait()
        self._stop_workers()
        if server is not None:
            server.close()
        status.shutdown()
        return code

    def _stop_workers(self) -> None:
        for worker in self.workers:
            try:
                worker.send({"t": "stop"})
            except OSError:
                continue
        deadline = time.monotonic() + _STOP_GRACE_S
        for worker in self.workers:
            try:
                worker.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()


def _available_memory() -> int | None:
    """Bytes of memory this machine has available (Linux), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_skyplane.gateway", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--program", help="the gateway program (JSON); '-' or absent reads it from stdin")
    parser.add_argument("--ready-file", help="where to write the bound ports once listening")
    # internal: a worker process of a gateway (see worker.py)
    parser.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ipc-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sockets-fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker_of is not None:
        import logging

        from airflow_skyplane.gateway import worker

        logging.basicConfig(level=logging.WARNING)  # the SDKs log every request at INFO
        return worker.main(args.ipc_fd, args.sockets_fd, args.worker_of)
    try:
        program = (
            Program.load(args.program)
            if args.program and args.program != "-"
            else Program.loads(sys.stdin.read())
        )
        gateway = Gateway(program, args.ready_file, args.program if args.program != "-" else None)
    except (SkyplaneError, OSError) as err:
        print(f"gateway: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: gateway.request_stop())
    print(json.dumps({"event": "start", "program": program.redacted()}), flush=True)
    code = gateway.run()
    print(json.dumps({"event": "exit", "status": gateway.counters.snapshot()}), flush=True)
    return code
