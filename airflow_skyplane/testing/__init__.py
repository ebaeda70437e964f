"""Test helpers for airflow-skyplane and for DAGs that use it: the emulated sky (real object-store
emulators on loopback, see :mod:`.sky`) and its pytest fixtures (:mod:`.plugin`, registered as a
pytest plugin when the package is installed); the emulated wide-area network of network namespaces
(:mod:`.netns`) and the launchers that run gateways in it (:mod:`.wan_relays`), a throwaway sshd
(:mod:`.sshd`), emulated relay VMs (:mod:`.vms`) and fakes of the cloud APIs, which the relay backends
of :mod:`airflow_skyplane.compute` are tested against."""

from airflow_skyplane.testing.sky import EmulatedSky

__all__ = ["EmulatedSky"]
