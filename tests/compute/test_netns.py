"""The emulated WAN: namespaces per region, shaped veth links, and nothing left behind."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from airflow_skyplane.exceptions import InvalidInputError
from airflow_skyplane.testing.netns import (
    EmulatedWAN,
    EmulatedWANError,
    LinkSpec,
    list_namespaces,
    sweep_stale,
)

pytestmark = pytest.mark.root
needs_wan = pytest.mark.requires("netns")
needs_iperf3 = pytest.mark.requires("iperf3")


def _host_veths() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if "skc" in line}


def _iperf_mbit(wan: EmulatedWAN, src: str, dst: str, streams: int, port: int) -> float:
    server = wan.popen(dst, ["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while f":{port} " not in wan.run(dst, ["ss", "-ltnH"]).stdout:
            assert time.monotonic() < deadline, "iperf3 server did not start listening"
            time.sleep(0.1)
        out = wan.run(
            src, ["iperf3", "-c", wan.address(src, dst), "-p", str(port), "-t", "3", "-P", str(streams), "-J"]
        )
        assert out.returncode == 0, out.stdout[-500:]
        # The receiver's figure: what crossed the shaped link, not what the sender queued.
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        server.wait(timeout=10)


def test_bad_topologies_are_refused_before_anything_is_created() -> None:
    with pytest.raises(InvalidInputError, match="at least 2 regions"):
        EmulatedWAN(["a"])
    with pytest.raises(InvalidInputError, match="must be distinct"):
        EmulatedWAN(["a", "a"])
    with pytest.raises(InvalidInputError, match="names region 'z'"):
        EmulatedWAN(["a", "b"], links={("a", "z"): LinkSpec(10)})
    with pytest.raises(InvalidInputError, match="rate_mbit=0 must be > 0"):
        LinkSpec(0)


@needs_wan
@needs_iperf3
def test_links_are_shaped_to_rate_and_per_flow_cap() -> None:
    before_ns, before_if = set(list_namespaces()), _host_veths()
    links = {("a", "b"): LinkSpec(100, 25), ("a", "c"): LinkSpec(400, 400), ("b", "c"): LinkSpec(400, 400)}
    with EmulatedWAN(["a", "b", "c"], links=links) as wan:
        assert len(set(list_namespaces()) - before_ns) == 3
        one = _iperf_mbit(wan, "a", "b", 1, 5301)
        many = _iperf_mbit(wan, "a", "b", 16, 5302)
        # One flow is held to its cap; many flows fill the link, never more.
        assert one < 35, one
        assert 60 < many < 110, many
        # The control link reaches every region from the host.
        listener = wan.popen(
            "c",
            [
                sys.executable,
                "-c",
                "import socket; s = socket.create_server(('0.0.0.0', 5303)); "
                "c, _ = s.accept(); c.sendall(b'hello from c'); c.close()",
            ],
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection((wan.control_address("c"), 5303), timeout=2) as conn:
                        assert conn.recv(64) == b"hello from c"
                        break
                except ConnectionRefusedError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        finally:
            listener.wait(timeout=10)
    assert set(list_namespaces()) == before_ns
    assert _host_veths() == before_if


@needs_wan
def test_failure_while_building_leaves_nothing() -> None:
    before = set(list_namespaces())
    wan = EmulatedWAN(["a", "b"], links={("a", "b"): LinkSpec(100, 25)})
    # A host interface named like the WAN's second control link makes the build fail half-way,
    # after both namespaces, the shaped link and the first control link exist.
    wan.token = "ee"
    subprocess.run(["ip", "link", "add", "skcee1", "type", "veth", "peer", "name", "skcee1p"], check=True)
    try:
        with pytest.raises(EmulatedWANError, match="skcee1"):
            wan.start()
    finally:
        subprocess.run(["ip", "link", "del", "skcee1"], check=False)
    assert set(list_namespaces()) == before
    assert not any(name.startswith("skcee0") for name in _host_veths())


@needs_wan
def test_sweep_removes_namespaces_of_a_dead_process() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from airflow_skyplane.testing.netns import EmulatedWAN
        wan = EmulatedWAN(["x", "y"]).start()
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    before = set(list_namespaces())
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        created = set(list_namespaces()) - before
        assert len(created) == 2
        assert not set(sweep_stale()) & created  # the owner is alive: its namespaces are kept
        assert created <= set(list_namespaces())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    removed = set(sweep_stale())
    assert created <= removed
    assert not (set(list_namespaces()) & created)
