"""An emulated wide-area network on one Linux machine: one network namespace per region.

The tests and benchmarks use it (with the launchers of :mod:`.wan_relays`) to reproduce a
multi-region overlay on a laptop or a CI runner: every region is a network namespace; every pair of
regions is joined by its own veth pair, shaped with ``tc`` to an aggregate link rate and a cap on
each TCP flow (distance and loss cap single flows on a real wide-area path; that is why Skyplane
opens many connections per edge). The host (where the Airflow worker runs) reaches every region
over an unshaped control link.

Shaping uses only what this kind of kernel has (``netem``, ``fq``, ``sfq`` and the ``flow``
classifier may be missing): an ``htb`` parent class at the link rate, 256 child classes each
guaranteed almost nothing and allowed up to the per-flow cap, and a ``u32`` hash table keyed on the
low byte of the TCP source port that spreads connections over the children. Data must therefore flow
from the connecting side to the listening side for each connection to get its own class, which is
how the gateways work (a sender dials its next hop and pushes).

Addresses: the link between regions ``i`` and ``j`` is a /30 out of ``10.213.0.0/16`` (or
``$SKYPLANE_WAN_SUBNET``) that exists only inside the namespaces this module creates; nothing is
routed to the host's other interfaces.
Everything created is deleted by :meth:`EmulatedWAN.close` (deleting a namespace deletes its veth
ends), by the context manager, at interpreter exit, and by :func:`sweep_stale` for the namespaces of
a process that died.

Needs root, ``ip`` and ``tc`` (iproute2). Imports no Airflow.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from airflow_skyplane.exceptions import InvalidInputError, SkyplaneError

NETNS_PREFIX = "skyw"
_NETNS_DIR = "/var/run/netns"
#: the addresses of every WAN this process builds; ``SKYPLANE_WAN_SUBNET`` moves them, so that two test
#: runs on one machine (two checkouts) do not give the host-side control links the same address
_SUBNET = ipaddress.ip_network(os.environ.get("SKYPLANE_WAN_SUBNET", "10.213.0.0/16"))
_FLOW_CLASSES = 256


class EmulatedWANError(SkyplaneError):
    """The emulated WAN could not be built (no root, no iproute2, a kernel without htb or u32)."""


@dataclass(frozen=True)
class LinkSpec:
    """A shaped link between two regions: aggregate rate and per-TCP-flow cap, in Mbit/s."""

    rate_mbit: float
    flow_cap_mbit: float | None = None

    def __post_init__(self) -> None:
        if not self.rate_mbit > 0:
            raise InvalidInputError(f"link rate_mbit={self.rate_mbit} must be > 0")
        if self.flow_cap_mbit is not None and not 0 < self.flow_cap_mbit:
            raise InvalidInputError(f"link flow_cap_mbit={self.flow_cap_mbit} must be > 0 or None")


def missing_requirements() -> str | None:
    """Why an emulated WAN cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "the emulated WAN needs root (network namespaces, veth, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the emulated WAN needs `{tool}` (Debian package iproute2)"
    return None


def _run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise EmulatedWANError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class _Link:
    a: str
    b: str
    a_if: str
    b_if: str
    a_addr: str
    b_addr: str
    spec: LinkSpec | None


@dataclass
class EmulatedWAN:
    """Regions as network namespaces, joined pairwise by shaped veth links.

    ``links`` maps an unordered pair of region names to a :class:`LinkSpec`; a pair left out is
    joined by an unshaped link. Use as a context manager, or call :meth:`close`.
    """

    regions: Sequence[str]
    links: Mapping[tuple[str, str], LinkSpec] = field(default_factory=dict)
    control: bool = True
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    _namespaces: dict[str, str] = field(default_factory=dict, init=False)
    _links: dict[frozenset[str], _Link] = field(default_factory=dict, init=False)
    _control_addr: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    _started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if len(self.regions) < 2:
            raise InvalidInputError(f"an emulated WAN needs at least 2 regions, got {list(self.regions)}")
        if len(set(self.regions)) != len(self.regions):
            raise InvalidInputError(f"emulated WAN regions must be distinct, got {list(self.regions)}")
        if len(self.regions) > 16:
            raise InvalidInputError(f"an emulated WAN holds at most 16 regions, got {len(self.regions)}")
        for pair in self.links:
            for region in pair:
                if region not in self.regions:
                    raise InvalidInputError(
                        f"link {pair} names region {region!r}, which is not one of {list(self.regions)}"
                    )

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> EmulatedWAN:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> EmulatedWAN:
        why = missing_requirements()
        if why:
            raise EmulatedWANError(why)
        atexit.register(self.close)
        self._started = True
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete every namespace (and with it every veth) this WAN created. Idempotent."""
        for region in list(self._namespaces):
            ns = self._namespaces.pop(region)
            _kill_namespace_processes(ns)
            _run(["ip", "netns", "del", ns], check=False)
        if self.control:
            for region, (host_if, _) in list(self._control_addr.items()):
                _run(["ip", "link", "del", host_if], check=False)
                self._control_addr.pop(region, None)
        self._links.clear()
        atexit.unregister(self.close)

    # -- queries ---------------------------------------------------------------------------------
    def namespace(self, region: str) -> str:
        try:
            return self._namespaces[region]
        except KeyError:
            raise InvalidInputError(f"region {region!r} is not in this WAN: {list(self.regions)}") from None

    def address(self, src: str, dst: str) -> str:
        """The address at which ``dst`` is reached from ``src`` over their direct link."""
        link = self._links.get(frozenset((src, dst)))
        if link is None or src == dst:
            raise InvalidInputError(f"no link from {src!r} to {dst!r} in this WAN")
        return link.b_addr if link.b == dst else link.a_addr

    def interface(self, region: str, peer: str) -> str:
        """The name, inside ``region``'s namespace, of its end of the link to ``peer``."""
        link = self._links.get(frozenset((region, peer)))
        if link is None or region == peer:
            raise InvalidInputError(f"no link between {region!r} and {peer!r} in this WAN")
        return link.a_if if link.a == region else link.b_if

    def control_address(self, region: str) -> str:
        """The address at which the host reaches ``region`` over its unshaped control link."""
        if region not in self._control_addr:
            raise InvalidInputError(f"region {region!r} has no control link (control=False?)")
        return self._control_addr[region][1]

    def command(self, region: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside ``region``'s namespace."""
        return ["ip", "netns", "exec", self.namespace(region), *argv]

    def popen(self, region: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(region, argv), **kwargs)  # type: ignore[call-overload]

    def run(self, region: str, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(region, argv), capture_output=True, text=True, timeout=timeout)

    def reshape(self, a: str, b: str, spec: LinkSpec | None) -> None:
        """Shape the link between ``a`` and ``b`` anew, at both ends (``None``: unshaped), e.g. to run
        several network shapes on one WAN without restarting what runs in its regions."""
        link = self._links.get(frozenset((a, b)))
        if link is None or a == b:
            raise InvalidInputError(f"no link between {a!r} and {b!r} in this WAN")
        for region, dev in ((link.a, link.a_if), (link.b, link.b_if)):
            ns = self.namespace(region)
            _run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
            if spec is not None:
                _shape(ns, dev, spec)
        link.spec = spec

    # -- building --------------------------------------------------------------------------------
    def _build(self) -> None:
        subnets: Iterator[ipaddress.IPv4Network] = _SUBNET.subnets(new_prefix=30)  # type: ignore[assignment]
        pid = os.getpid()
        for index, region in enumerate(self.regions):
            ns = f"{NETNS_PREFIX}-{pid}-{self.token}-{index}"
            _run(["ip", "netns", "add", ns])
            self._namespaces[region] = ns
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        for i, j in itertools.combinations(range(len(self.regions)), 2):
            a, b = self.regions[i], self.regions[j]
            net = next(subnets)
            a_addr, b_addr = (str(h) for h in itertools.islice(net.hosts(), 2))
            link = _Link(a, b, f"r{j}", f"r{i}", a_addr, b_addr, self._spec(a, b))
            ns_a, ns_b = self._namespaces[a], self._namespaces[b]
            _run(
                [
                    "ip",
                    "link",
                    "add",
                    "tmpa" + self.token,
                    "netns",
                    ns_a,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "tmpb" + self.token,
                    "netns",
                    ns_b,
                ]
            )
            _run(["ip", "-n", ns_a, "link", "set", "tmpa" + self.token, "name", link.a_if])
            _run(["ip", "-n", ns_b, "link", "set", "tmpb" + self.token, "name", link.b_if])
            for ns, dev, addr in ((ns_a, link.a_if, a_addr), (ns_b, link.b_if, b_addr)):
                _run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
                _run(["ip", "-n", ns, "link", "set", dev, "up"])
                if link.spec is not None:
                    _shape(ns, dev, link.spec)
            self._links[frozenset((a, b))] = link
        if self.control:
            for index, region in enumerate(self.regions):
                net = next(subnets)
                host_addr, ns_addr = (str(h) for h in itertools.islice(net.hosts(), 2))
                host_if = f"skc{self.token}{index:x}"
                ns = self._namespaces[region]
                _run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", "ctl", "netns", ns])
                _run(["ip", "addr", "add", f"{host_addr}/30", "dev", host_if])
                _run(["ip", "link", "set", host_if, "up"])
                _run(["ip", "-n", ns, "addr", "add", f"{ns_addr}/30", "dev", "ctl"])
                _run(["ip", "-n", ns, "link", "set", "ctl", "up"])
                self._control_addr[region] = (host_if, ns_addr)

    def _spec(self, a: str, b: str) -> LinkSpec | None:
        return self.links.get((a, b)) or self.links.get((b, a))


def _shape(ns: str, dev: str, spec: LinkSpec) -> None:
    """htb at the link rate; with a flow cap, 256 classes chosen by a hash of the TCP source port."""
    rate = f"{spec.rate_mbit:g}mbit"
    tc = ["ip", "netns", "exec", ns, "tc"]

    def add_class(parent: str, classid: str, guaranteed: str, ceiling: str) -> None:
        _run([*tc, "class", "add", "dev", dev, "parent", parent, "classid", classid, "htb", "rate",
              guaranteed, "ceil", ceiling])  # fmt: skip

    default = "1" if spec.flow_cap_mbit is None else "ffff"
    _run([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", default])
    add_class("1:", "1:1", rate, rate)
    if spec.flow_cap_mbit is None:
        return
    cap = f"{min(spec.flow_cap_mbit, spec.rate_mbit):g}mbit"
    # Traffic that is not TCP over IPv4 (ARP, ICMP) shares one class capped like a flow.
    add_class("1:1", "1:ffff", "8kbit", cap)
    batch = []
    for bucket in range(_FLOW_CLASSES):
        batch.append(f"class add dev {dev} parent 1:1 classid 1:{0x100 + bucket:x} htb rate 8kbit ceil {cap}")
    batch.append(f"filter add dev {dev} parent 1: prio 1 handle 2: protocol ip u32 divisor 256")
    for bucket in range(_FLOW_CLASSES):
        batch.append(
            f"filter add dev {dev} parent 1: prio 1 protocol ip u32 ht 2:{bucket:x}: "
            f"match u8 0 0 flowid 1:{0x100 + bucket:x}"
        )
    # TCP over IPv4 without options: the source port is the high half of the 32-bit word at byte 20.
    batch.append(
        f"filter add dev {dev} parent 1: prio 1 protocol ip u32 ht 800:: match ip protocol 6 0xff "
        "hashkey mask 0x00ff0000 at 20 link 2:"
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "-batch", "-"],
        input="\n".join(batch) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise EmulatedWANError(f"shaping {dev} in {ns} failed: {proc.stderr.strip()[:500]}")


def _kill_namespace_processes(ns: str) -> None:
    proc = _run(["ip", "netns", "pids", ns], check=False)
    for pid in proc.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError, PermissionError):
            continue


_NAME = re.compile(rf"^{NETNS_PREFIX}-(\d+)-([0-9a-f]+)-(\d+)$")


def list_namespaces() -> list[str]:
    """Namespaces created by an emulated WAN on this machine (any process)."""
    try:
        names = os.listdir(_NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if _NAME.match(n))


def sweep_stale() -> list[str]:
    """Delete the namespaces of emulated WANs whose creating process is gone; return their names."""
    removed = []
    for name in list_namespaces():
        match = _NAME.match(name)
        assert match is not None
        owner = int(match.group(1))
        try:
            os.kill(owner, 0)
            continue  # the owner is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _kill_namespace_processes(name)
        _run(["ip", "netns", "del", name], check=False)
        removed.append(name)
    return removed
