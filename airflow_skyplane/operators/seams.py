"""What a test can inject into a transfer operator instance, outside its public signature.

A DAG never sets these. A test sets them as attributes of the operator it built:

* ``op.test_faults``: gateway id -> faults written into that gateway's program (see
  :mod:`airflow_skyplane.gateway.daemon`: a gateway that exits after N chunks, slows down, corrupts a
  frame), to check that failures are caught, cleaned up and resumed;
* ``op.cloud_backends``: cloud -> relay backend, used instead of one made from the task's
  connections (e.g. pointed at an emulator, or refusing a region for capacity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class TestSeams:
    """The test-only inputs of one operator instance (none in a DAG)."""

    __test__ = False  # not a test class, whatever pytest's collection thinks of the name

    test_faults: Mapping[str, Mapping[str, object]] | None = None
    cloud_backends: Mapping[str, object] | None = None

    @classmethod
    def of(cls, task: object) -> TestSeams:
        return cls(getattr(task, "test_faults", None), getattr(task, "cloud_backends", None))
