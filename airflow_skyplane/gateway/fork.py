"""Where a multicast tree branches: one frame, sent once down every branch.

A gateway whose next hops belong to several branches (:func:`~.program.branches_of`) forks: each
frame it reads (at the source) or receives (at a relay, or a destination that also forwards) is held
once, in the worker's byte budget, and handed to the :class:`~.flow.Dispatcher` of every branch; within
a branch one connection of one hop sends it, as in a unicast overlay. The frame is freed when the
last branch is through with it (acknowledged, or dropped because its branch failed).

**A slow branch slows only what it must.** Each branch has a bounded buffer of its own (a
:class:`~.flow.ByteBudget` of half the worker's budget), taken when a frame is handed to it and given
back when that branch's next hop acknowledges it. The other branches run ahead of a slow one by up to
that much; past it the fork waits for the slow branch (every destination gets every byte, from one
read), and TCP pushes back upstream. No branch can take the whole budget and starve the others.

**A failed branch fails alone.** When a connection of a branch gives up (its next hop is gone, or
rejected a chunk five times: the destination's store refuses the writes), the branch is aborted: its
queue and what its connections held are dropped, and the fork goes on with the others. The gateway
reports the branch on its status (``failed_branches``); the controller fails that branch's
destinations only. When every branch has failed, the gateway fails.

Standard library only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_skyplane.gateway.flow import ByteBudget, Dispatcher, Link
from airflow_skyplane.gateway.program import NextHop


class Fork:
    """The branches of one worker of a forking gateway: their dispatchers, buffers and failures."""

    def __init__(
        self,
        branches: Mapping[str, Sequence[NextHop]],
        stop: threading.Event,
        buffer_bytes: int,
        on_drop: Callable[[Any], None],
    ) -> None:
        self.stop = stop
        self.dispatchers = {name: Dispatcher(hops, stop) for name, hops in branches.items()}
        self.buffers = {name: ByteBudget(max(1, buffer_bytes)) for name in branches}
        self.failed: dict[str, str] = {}
        self.links: dict[str, list[Link]] = {name: [] for name in branches}
        self._lock = threading.Lock()
        self._on_drop = on_drop  # a frame no branch waits for any more: free it

    def attach(self, link: Link) -> None:
        self.links[link.hop.branch].append(link)

    def live(self) -> list[str]:
        with self._lock:
            return [name for name in self.dispatchers if name not in self.failed]

    def put(self, frame: Any) -> bool:
        """Hand ``frame`` to every live branch, each once its buffer has room; False when the worker
        stops meanwhile (the frame is then dropped)."""
        branches = self.live()
        with self._lock:
            frame.waiting = set(branches)
        for name in branches:
            if not self.buffers[name].acquire(frame.size, self.stop):
                self.done(frame, name, acquired=False)
                for rest in branches[branches.index(name) + 1 :]:
                    self.done(frame, rest, acquired=False)
                return False
            if not self.dispatchers[name].put([frame]):  # the branch failed meanwhile
                self.done(frame, name)
        return True

    def done(self, frame: Any, branch: str, *, acquired: bool = True) -> bool:
        """``branch`` is through with ``frame``; True when it was the last branch that held it (the
        frame is then freed through ``on_drop`` unless acknowledged: the caller's business)."""
        with self._lock:
            if branch not in frame.waiting:
                return False
            frame.waiting.discard(branch)
            last = not frame.waiting
        if acquired:
            self.buffers[branch].release(frame.size)
        return last

    def fail(self, branch: str, message: str) -> bool:
        """Abort ``branch``; True if another branch lives on (else the gateway must fail)."""
        with self._lock:
            first = branch not in self.failed
            self.failed.setdefault(branch, message)
            alive = len(self.failed) < len(self.dispatchers)
        if first:
            for frame in self.dispatchers[branch].abort():
                if self.done(frame, branch):
                    self._on_drop(frame)
            for link in self.links[branch]:
                link.abort()  # each hands what it held to the worker's ``dropped``
        return alive

    def close(self) -> None:
        """No more frames: the branches' connections finish once they have sent what they hold."""
        for dispatcher in self.dispatchers.values():
            dispatcher.close()

    def wake_all(self) -> None:
        for dispatcher in self.dispatchers.values():
            dispatcher.wake_all()
