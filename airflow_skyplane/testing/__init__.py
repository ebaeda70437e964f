"""Test helpers for airflow-skyplane and for DAGs that use it: the emulated sky (real object-store
emulators on loopback, see :mod:`.sky`) and its pytest fixtures (:mod:`.plugin`, registered as a
pytest plugin when the package is installed)."""

from airflow_skyplane.testing.sky import EmulatedSky

__all__ = ["EmulatedSky"]
