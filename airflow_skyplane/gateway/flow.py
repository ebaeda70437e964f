"""Flow control of a gateway worker: the byte budget, the dispatcher and windowed connections.

* :class:`ByteBudget` bounds the bytes of chunks a worker holds at once (its share of the program's
  ``max_inflight_mb``); each byte held is counted once, when it is allocated, and given back when
  it is freed (sent, written, or acknowledged by the next hop).
* :class:`Dispatcher` hands work (chunk requests to read, or received frames to relay) to the
  connections of the next hops **on demand**: a connection takes the next item only when its window
  has room, so a path slower than planned takes less and does not hold the tail. Among the hops that
  have a connection waiting, the one furthest below its planned share (the plan's edge flow) goes
  first, so paths that keep up carry the planned split.
* :class:`Link` is one data connection to a next hop (:mod:`.hop`) with a **window**: up to
  ``window`` frames are sent before the first is acknowledged, and a second thread reads the ACKs
  and NACKs as they come back. A NACK puts the frame back at the head of the link's queue (the hop
  that holds an intact copy sends it again), up to :data:`MAX_ATTEMPTS` sends; an ACK releases the
  frame.

In a multicast tree a gateway that forks has one dispatcher (and one set of links) per branch; a
branch that fails is aborted (:meth:`Dispatcher.abort`, :meth:`Link.abort`): what it held is handed
back to the owner (``dropped``) and the other branches go on.

What is sent and how is the owner's business (:class:`~airflow_skyplane.gateway.worker.Worker`): it
provides ``connect``, ``transmit``, ``acked``, ``nacked``, ``link_failed`` and ``dropped``. Standard
library only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from airflow_skyplane.exceptions import ProtocolError
from airflow_skyplane.gateway import protocol as proto
from airflow_skyplane.gateway.program import NextHop

MAX_ATTEMPTS = 5
#: a link still putting one frame on the wire after this long is bound by the network
SATURATED_AFTER_S = 1.0
#: what :meth:`Dispatcher.take` returns when the caller's ``interrupt`` asked it to come back
RETRY = object()


class ByteBudget:
    """A counting semaphore in bytes: ``acquire(n)`` blocks while more than the budget is held."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, stop: threading.Event | None = None) -> bool:
        """Take ``n`` bytes; False if ``stop`` was set while waiting (nothing taken)."""
        n = min(n, self.limit)  # a frame larger than the budget still passes, alone
        with self._cond:
            while self.held and self.held + n > self.limit:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.5)
            self.held += n
            self.peak = max(self.peak, self.held)
            return True

    def release(self, n: int) -> None:
        n = min(n, self.limit)
        with self._cond:
            self.held -= n
            self._cond.notify_all()


class Item(Protocol):
    """Something a link sends: a chunk request (reading gateway) or a received frame (relay)."""

    size: int  # bytes it weighs in the split between hops
    attempt: int  # sends of it that were rejected


class Dispatcher:
    """Work for the connections of a worker's next hops, taken on demand and split by weight.

    A connection of hop ``h`` asks for work when its window has room. It gets the next item unless
    another hop is further below its share of the bytes (the plan's weights) *and* has capacity
    left: a connection that is not saturated, i.e. neither busy putting a frame on the wire nor at
    its window. So while every path keeps up, the split follows the plan; a path whose connections
    are all saturated (slower than planned) is passed over and carries less, and it never holds
    back the others, nor the tail of the transfer.
    """

    def __init__(
        self,
        hops: Sequence[NextHop],
        stop: threading.Event,
        *,
        low_water: int = 0,
        refill: Callable[[], None] | None = None,
    ) -> None:
        self._cond = threading.Condition()
        self._items: deque[Any] = deque()
        self._closed = False
        self._stop = stop
        self._hops = list(hops)
        self._weight = {hop: hop.weight for hop in hops}
        self._assigned = dict.fromkeys(hops, 0.0)
        self._links: dict[NextHop, list[Link]] = {hop: [] for hop in hops}
        self._low_water = low_water
        self._refill = refill
        self._passed_over = 0  # connections waiting while another hop has its turn
        self.aborted = False

    def attach(self, link: Link) -> None:
        self._links[link.hop].append(link)

    def put(self, items: Iterable[Any]) -> bool:
        """Queue ``items``; False (nothing queued) once the dispatcher was aborted."""
        with self._cond:
            if self.aborted:
                return False
            before = len(self._items)
            self._items.extend(items)
            self._cond.notify(len(self._items) - before + self._passed_over)
            return True

    def close(self) -> None:
        """No more work will come: connections that find none left finish."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> list[Any]:
        """The branch this dispatcher feeds failed: no more work for its connections; the items
        still queued are returned (for the owner to release)."""
        with self._cond:
            self.aborted = True
            items, self._items = list(self._items), deque()
            self._cond.notify_all()
        return items

    def __len__(self) -> int:
        return len(self._items)

    def wake(self) -> None:
        """Something changed that may give a connection passed over its turn (a link freed up)."""
        if self._passed_over:
            with self._cond:
                self._cond.notify_all()

    def wake_all(self) -> None:
        """Every waiting connection looks again (the worker stops, or a frame must be sent again)."""
        with self._cond:
            self._cond.notify_all()

    def take(self, hop: NextHop, interrupt: Callable[[], bool] = lambda: False) -> Any:
        """The next item for a connection of ``hop`` that has room in its window; None when there is
        no more work (or the worker stops); :data:`RETRY` when ``interrupt()`` became true."""
        if self._refill is not None and not self._closed and len(self._items) < self._low_water:
            self._refill()  # asks for more without waiting for it
        with self._cond:
            while True:
                if self._stop.is_set() or self.aborted:
                    return None
                if self._items:
                    if self._turn(hop, self._items[0].size):
                        item = self._items.popleft()
                        self._assigned[hop] += item.size
                        if self._passed_over:
                            self._cond.notify_all()  # the turn moved on
                        return item
                    self._passed_over += 1  # another hop's turn: wait for it to take it
                    try:
                        self._cond.wait(0.5)
                    finally:
                        self._passed_over -= 1
                    continue
                if self._closed:
                    return None
                if interrupt():
                    return RETRY
                self._cond.wait(0.5)

    def _turn(self, hop: NextHop, size: int) -> bool:
        mine = (self._assigned[hop] + size) / self._weight[hop]
        for other in self._hops:
            if other is hop or (self._assigned[other] + size) / self._weight[other] >= mine - 1e-9:
                continue
            if any(not link.saturated() for link in self._links[other]):
                return False  # ``other`` is behind its share and can take it
        return True


class LinkOwner(Protocol):
    stop: threading.Event

    def connect(self, hop: NextHop) -> Any: ...
    def close_frame(self) -> bytes: ...
    def transmit(self, link: Link, item: Any) -> None: ...
    def acked(self, link: Link, item: Any) -> None: ...
    def nacked(self, link: Link, item: Any, reason: str) -> None: ...
    def link_failed(self, link: Link, message: str) -> None: ...
    def dropped(self, link: Link, item: Any) -> None: ...


class Link:
    """One connection to a next hop with up to ``window`` frames in flight."""

    def __init__(
        self, owner: LinkOwner, hop: NextHop, index: int, window: int, dispatcher: Dispatcher
    ) -> None:
        self.owner, self.hop, self.index = owner, hop, index
        self.window = max(1, window)
        self.dispatcher = dispatcher
        self.sock: Any = None
        self.name = f"{hop.gateway_id}#{index}"
        self._cond = threading.Condition()
        self._inflight: dict[int, Any] = {}
        self._resend: deque[Any] = deque()
        self._pending = 0  # items taken and being sent, not yet registered
        self._closing = False
        self._sending_since: float | None = None  # when the frame being put on the wire started
        self.aborted = False
        dispatcher.attach(self)
        self.thread = threading.Thread(target=self._run, name=f"link-{self.name}", daemon=True)
        self._acks = threading.Thread(target=self._read_acks, name=f"acks-{self.name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _stopped(self) -> bool:
        return self.owner.stop.is_set() or self.aborted

    def abort(self) -> None:
        """Give up this connection (its branch failed): the sender ends, and what it held is handed
        to the owner's ``dropped``."""
        with self._cond:
            self.aborted = True
            self._cond.notify_all()
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)  # SHUT_RDWR: a send or read blocked on a dead peer returns

    def _drop_held(self) -> None:
        with self._cond:
            held = [*self._inflight.values(), *self._resend]
            self._inflight.clear()
            self._resend.clear()
        for item in held:
            self.owner.dropped(self, item)

    # -- sending ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.sock = self.owner.connect(self.hop)
            self._acks.start()
            while True:
                item = self._next()
                if item is None:
                    break
                self.owner.transmit(self, item)
            if not self._stopped():
                with self._cond:
                    self._closing = True
                proto.write_frame(self.sock, proto.CLOSE, self.owner.close_frame())
                self._acks.join(30)
        except Exception as err:  # noqa: BLE001 - reported, then the gateway (or branch) stops
            if not self._stopped():
                self.owner.link_failed(self, f"sender to {self.hop.gateway_id}: {type(err).__name__}: {err}")
        finally:
            if self.sock is not None:
                with contextlib.suppress(OSError):
                    self.sock.close()
            if self.aborted:
                self._drop_held()

    def _has_resend(self) -> bool:
        return bool(self._resend)

    def _next(self) -> Any:
        """The next item to send: a frame to send again first, else new work when the window has room;
        None once there is no work left and every frame sent is acknowledged."""
        stopped = self._stopped
        while not stopped():
            with self._cond:
                while (
                    not stopped() and not self._resend and len(self._inflight) + self._pending >= self.window
                ):
                    self._cond.wait(0.5)
                if stopped():
                    return None
                if self._resend:
                    self._pending += 1
                    return self._resend.popleft()
            item = self.dispatcher.take(self.hop, self._has_resend)
            if item is RETRY:
                continue
            if item is not None:
                with self._cond:
                    self._pending += 1
                return item
            with self._cond:  # no new work: wait for the frames in flight (a NACK brings one back)
                while not stopped() and (self._inflight or self._pending) and not self._resend:
                    self._cond.wait(0.5)
                if not self._resend:
                    return None
        return None

    def saturated(self) -> bool:
        """Bound by the network: at its window, or putting a frame on the wire for longer than
        :data:`SATURATED_AFTER_S` (the socket's buffer is full: the link, not this process, is the
        limit). A link busy reading or sealing its next frame is not: it comes back for more."""
        since = self._sending_since
        if since is not None and time.monotonic() - since > SATURATED_AFTER_S:
            return True
        return len(self._inflight) + self._pending >= self.window

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Around the writes of a frame."""
        self._sending_since = time.monotonic()
        try:
            yield
        finally:
            self._sending_since = None
            self.dispatcher.wake()

    def register(self, ack_id: int, item: Any) -> None:
        """``item`` is on the wire under ``ack_id``; call before its last byte is sent."""
        with self._cond:
            if ack_id in self._inflight:
                raise ProtocolError(f"two frames in flight on one connection under chunk id {ack_id}")
            self._inflight[ack_id] = item
            self._pending -= 1

    def abandon(self) -> None:
        """The item taken was not sent (nothing to send after all)."""
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    # -- acknowledgements --------------------------------------------------------------------------
    def _read_acks(self) -> None:
        try:
            while not self._stopped():
                answer = proto.read_frame(self.sock).control()
                if isinstance(answer, proto.Ack):
                    for chunk_id in answer.chunk_ids:
                        self.owner.acked(self, self._pop(chunk_id))
                elif isinstance(answer, proto.Nack):
                    # out of flight and into the resend queue at once: a sender that saw neither would
                    # take its last frame for answered and close the link without sending it again
                    item = self._pop(answer.chunk_id, resend=True)
                    if item.attempt >= MAX_ATTEMPTS:
                        with self._cond:
                            self._inflight[answer.chunk_id] = item  # held until the branch is dropped
                        self.owner.link_failed(
                            self, f"a chunk was rejected {MAX_ATTEMPTS} times downstream: {answer.reason}"
                        )
                        return
                    self.owner.nacked(self, item, answer.reason)
                    self.dispatcher.wake_all()
                elif isinstance(answer, proto.ErrorReport):
                    raise ProtocolError(f"next hop gave up: {answer.message}")
                else:
                    raise ProtocolError(f"next hop answered {type(answer).__name__} instead of ACK or NACK")
        except (OSError, ProtocolError, ValueError) as err:
            with self._cond:
                closing = self._closing and not self._inflight
            if not closing and not self._stopped():
                self.owner.link_failed(self, f"sender to {self.hop.gateway_id}: {err}")

    def _pop(self, chunk_id: int, *, resend: bool = False) -> Any:
        """The frame answered under ``chunk_id``; with ``resend`` (a NACK), queued to be sent again
        (one attempt more) in the same step, unless it has had its attempts."""
        with self._cond:
            item = self._inflight.pop(chunk_id, None)
            if resend and item is not None:
                item.attempt += 1
                if item.attempt < MAX_ATTEMPTS:
                    self._resend.append(item)
            self._cond.notify_all()
        self.dispatcher.wake()
        if item is None:
            raise ProtocolError(
                f"next hop answered for chunk {chunk_id}, which is not in flight on this connection"
            )
        return item
