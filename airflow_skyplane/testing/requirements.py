"""What the test suite needs from the machine, and why a test skips without it.

A test names what it needs with the pytest plugin's ``requires`` marker
(``@pytest.mark.requires("netns", "sshd")``) or its :func:`~airflow_skyplane.testing.plugin.require`;
without it the test is skipped with the reason given here, through one exception
(:class:`~airflow_skyplane.testing.plugin.MissingRequirement`), so that a run can tell a skip for a
missing tool from any other. This project's ``tests/conftest.py`` turns such skips into failures
under ``CI=true``.

==============  ==========================================  ========================================
name            needed by                                   how to get it
==============  ==========================================  ========================================
``netns``       the emulated-WAN tests                      root, and Debian's iproute2 (``ip``, ``tc``)
``sshd``        relays bootstrapped over SSH                Debian's openssh-server; without root,
                                                            an account that is not locked
``nft``         link faults on the emulated WAN             Debian's nftables
``iperf3``      the link-shaping test                       Debian's iperf3
``tcpdump``     the wire capture of the security suite      Debian's tcpdump
``azurite``     the Azure Blob tests, the demo              ``make install`` (npm: Debian's nodejs, npm)
==============  ==========================================  ========================================

``matplotlib`` (the plan drawings) and ``google_crc32c`` (the CRC32C combination test) are Python
packages that ``make install`` installs. ``rclone`` is needed by ``benchmarks/peers.py`` only;
``make install`` installs its Debian package with the others.

Run as a script, with any Python 3 (this file uses the standard library only, so it runs before
``.venv`` exists; ``-I`` keeps this folder's modules off ``sys.path``)::

    python3 -I airflow_skyplane/testing/requirements.py packages  # missing Debian packages, one a line
    .venv/bin/python -m airflow_skyplane.testing.requirements notice  # one line: what will skip, why
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

#: Debian packages the tests and benchmarks use, each with the commands that show it is installed
#: (looked up on ``PATH`` and in the sbin folders, which a user's ``PATH`` may lack). Checking the
#: commands, not dpkg's records, accepts the same tools installed another way (Node.js from
#: NodeSource ships npm inside its own nodejs package).
DEBIAN_PACKAGES: dict[str, tuple[str, ...]] = {
    "openssh-server": ("sshd",),
    "iproute2": ("ip", "tc"),
    "iperf3": ("iperf3",),
    "rclone": ("rclone",),
    "nftables": ("nft",),
    "tcpdump": ("tcpdump",),
    "nodejs": ("node",),
    "npm": ("npm",),
}
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_command(name: str) -> str | None:
    """The path of a command on ``PATH`` or in the sbin folders, or None."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN])
    return shutil.which(name, path=path)


def missing_packages() -> list[str]:
    """The Debian packages of :data:`DEBIAN_PACKAGES` whose commands are not all found here."""
    return [pkg for pkg, commands in DEBIAN_PACKAGES.items() if not all(map(find_command, commands))]


def _command(name: str, package: str) -> Callable[[], str | None]:
    def check() -> str | None:  # on PATH, as the tests run it
        return None if shutil.which(name) else f"needs `{name}` on PATH (Debian package {package})"

    return check


def _netns() -> str | None:
    from airflow_skyplane.testing.netns import missing_requirements

    return missing_requirements()


@functools.cache
def _sshd() -> str | None:
    from airflow_skyplane.testing.sshd import find_sshd

    if not find_sshd():
        return "needs `sshd` (Debian package openssh-server)"
    return None if os.geteuid() == 0 else _login_refused()


def _login_refused() -> str | None:
    """Without root, a local sshd can log in only the user running it, and refuses a locked account
    (``nobody``'s, a service account's): try it once, as the tests would."""
    from airflow_skyplane.compute.ssh import HostKeyPins, RelaySSH, SSHKeyPair
    from airflow_skyplane.exceptions import SkyplaneError
    from airflow_skyplane.testing.sshd import LocalSSHD

    key = SSHKeyPair.generate("skyplane-requirements-probe")
    sshd = LocalSSHD(key.public_openssh)
    try:
        with sshd, RelaySSH("127.0.0.1", port=sshd.port, username=sshd.username, key=key,
                            pins=HostKeyPins(), connect_deadline_s=10):  # fmt: skip
            return None
    except SkyplaneError as err:
        return (
            f"a local sshd without root did not log in user {sshd.username!r} ({type(err).__name__}; "
            "sshd refuses locked accounts, such as nobody's): run as root, or as a user whose account "
            "is not locked"
        )


def _azurite() -> str | None:
    from airflow_skyplane.testing.sky import find_azurite

    if find_azurite():
        return None
    return (
        "needs Azurite: `make install` installs it with npm (Debian packages nodejs and npm), or set "
        "SKYPLANE_AZURITE_BIN to an azurite-blob executable"
    )


def _module(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        found = importlib.util.find_spec(name) is not None
        return None if found else f"needs the Python package {name} (`make install` installs it)"

    return check


@dataclass(frozen=True)
class Requirement:
    name: str
    tests: str  # which tests need it, for the notice
    check: Callable[[], str | None]  # why it is missing here, or None


REQUIREMENTS: dict[str, Requirement] = {
    r.name: r
    for r in (
        Requirement("netns", "the emulated-WAN tests", _netns),
        Requirement("sshd", "relays over SSH", _sshd),
        Requirement("nft", "link faults", _command("nft", "nftables")),
        Requirement("iperf3", "the link-shaping test", _command("iperf3", "iperf3")),
        Requirement("tcpdump", "the wire capture", _command("tcpdump", "tcpdump")),
        Requirement("azurite", "the Azure Blob tests", _azurite),
        Requirement("matplotlib", "the plan drawings", _module("matplotlib")),
        Requirement("google_crc32c", "the CRC32C combination test", _module("google_crc32c")),
    )
}


def missing(*names: str) -> str | None:
    """Why the first of ``names`` that this machine lacks is missing, or None when it has them all."""
    unknown = [n for n in names if n not in REQUIREMENTS]
    if unknown:
        raise ValueError(f"unknown requirement(s) {unknown}: choose from {sorted(REQUIREMENTS)}")
    for name in names:
        why = REQUIREMENTS[name].check()
        if why:
            return why
    return None


def under_ci() -> bool:
    """True when ``CI`` is ``true`` (or ``1``): there a missing requirement fails the run."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def notice() -> str:
    """One line naming the groups of tests that will skip here and why; empty when none will."""
    gaps = [(r.tests, why) for r in REQUIREMENTS.values() if (why := r.check())]
    if not gaps:
        return ""
    if under_ci():
        outcome = "fail (CI=true)"
    elif os.geteuid() != 0:
        outcome = "skip (run as root to install and use what they need)"
    else:
        outcome = "skip"
    listed = "; ".join(f"{tests}: {why}" for tests, why in gaps)
    return f"make test: {len(gaps)} group(s) of tests will {outcome}: {listed}"


def main(argv: list[str]) -> int:
    if argv == ["packages"]:
        print("\n".join(missing_packages()))
        return 0
    if argv == ["notice"]:
        line = notice()
        if line:
            print(line)
        return 0
    print(f"usage: {sys.argv[0]} packages | notice", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
