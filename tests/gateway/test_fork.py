"""The fork of a multicast gateway: a frame held once for every branch, bounded buffers per branch,
a failed branch dropped alone."""

from __future__ import annotations

import threading

from airflow_skyplane.gateway.fork import Fork
from airflow_skyplane.gateway.program import NextHop

SIZE = 1000


class Frame:
    def __init__(self, n: int) -> None:
        self.n, self.size, self.attempt = n, SIZE, 0
        self.waiting: set[str] = set()


def _fork(dropped: list[Frame]) -> tuple[Fork, threading.Event]:
    stop = threading.Event()
    hops = {
        "d1": [NextHop("d1", "127.0.0.1", 1, branch="d1")],
        "d2": [NextHop("d2", "127.0.0.1", 2, branch="d2")],
    }
    return Fork(hops, stop, 3 * SIZE, dropped.append), stop


def test_a_slow_branch_holds_at_most_its_buffer_and_then_holds_the_fork() -> None:
    fork, stop = _fork([])
    frames = [Frame(n) for n in range(5)]
    for frame in frames[:3]:
        assert fork.put(frame)
    # d1 keeps up: it takes and acknowledges everything; d2 takes nothing
    d1 = fork.dispatchers["d1"]
    for frame in frames[:3]:
        taken = d1.take(NextHop("d1", "127.0.0.1", 1, branch="d1"))
        assert taken is frame and not fork.done(frame, "d1")  # d2 still holds it
    fourth = threading.Thread(target=fork.put, args=(frames[3],))
    fourth.start()
    fourth.join(0.5)
    assert fourth.is_alive()  # d2's buffer is full: the fork waits for it, however fast d1 is
    assert fork.dispatchers["d2"].take(NextHop("d2", "127.0.0.1", 2, branch="d2")) is frames[0]
    assert fork.done(frames[0], "d2")  # d2 acknowledges its first frame: the last branch that held it
    fourth.join(2)
    assert not fourth.is_alive()
    assert len(fork.dispatchers["d2"]) == 3 and len(fork.dispatchers["d1"]) == 1
    stop.set()


def test_a_failed_branch_is_dropped_alone() -> None:
    dropped: list[Frame] = []
    fork, stop = _fork(dropped)
    frames = [Frame(n) for n in range(3)]
    for frame in frames:
        fork.put(frame)
    for frame in frames:  # d1 has sent and been acknowledged every frame
        fork.dispatchers["d1"].take(NextHop("d1", "127.0.0.1", 1, branch="d1"))
        fork.done(frame, "d1")
    assert fork.fail("d2", "its store refused the writes")  # d1 lives on
    assert dropped == frames  # the frames only d2 still held are freed
    assert fork.live() == ["d1"] and fork.failed == {"d2": "its store refused the writes"}
    later = Frame(9)
    assert fork.put(later) and later.waiting == {"d1"}  # what comes next goes to d1 only
    assert not fork.fail("d1", "gone")  # the last branch: the gateway must fail
    stop.set()
