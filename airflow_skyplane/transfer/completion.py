"""Complete and verify each object as soon as all its chunks are written, while the transfer goes on.

Completing a multipart upload and checking an object (size, checksums) used to wait for the last
chunk of the whole transfer, then run object after object: on a store that assembles parts itself
(moto, or any store that copies the parts into the object) that is seconds per gigabyte after the
last byte. Here the controller hands every receipt the writing gateway returns to a
:class:`Completion`; once an object has every part it expects, it is completed (after checking that
the source object did not change since it was listed: all its ranges have been read) and verified in
a small pool, exactly as at the end before; what remains at the end is the last few objects.

An object that fails verification is deleted from the destination, and the error says a rerun
sends it again. :class:`Landing` is the job's side of it: it fetches the writer's receipts, feeds
them to the :class:`Completion` and completes one object at a time under the lock of the job's
uploads (a job attached in another process completes and verifies everything at the end instead).
Nothing here imports Airflow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from airflow_skyplane.compute.launcher import GatewayHandle
from airflow_skyplane.exceptions import TransferError
from airflow_skyplane.storage.base import MultipartUpload, ObjectInfo
from airflow_skyplane.transfer import control, verify
from airflow_skyplane.transfer.control import Receipt
from airflow_skyplane.transfer.summary import Unverified

#: completions and HEAD requests at once: under the 10 connections a boto3 client pools by default
THREADS = 8


class Completion:
    """Objects complete themselves as their last chunk is written.

    ``finish_object(key, receipts) -> str | None`` completes (when it was striped) and verifies one
    object: None when a checksum matched, else why none could be compared (the size matched);
    ``cleanup(key)`` removes an object that failed verification.
    """

    def __init__(
        self,
        finish_object: Callable[[str, list[Receipt]], str | None],
        cleanup: Callable[[str, TransferError], TransferError],
        threads: int = THREADS,
    ) -> None:
        self._finish_object, self._cleanup = finish_object, cleanup
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="complete")
        # reentrant: a future that ends at once runs its tally in the thread that submitted it
        self._lock = threading.RLock()
        self._expected: dict[str, int] = {}
        self._written: dict[str, dict[int, Receipt]] = {}
        #: the objects being completed now; each leaves once its outcome is tallied below, so what
        #: is held does not grow with the objects done
        self._futures: dict[str, Future[str | None]] = {}
        self._verified = 0
        self._unverified = Unverified()
        self._failure: tuple[str, TransferError] | None = None

    def expect(self, key: str, parts: int) -> None:
        """``key`` is written in ``parts`` chunks (1: a single put); it is expected until it is
        submitted to be completed."""
        self._expected[key] = parts

    def add(self, receipts: Iterable[Receipt]) -> None:
        """Chunks written (a chunk written twice counts once, the last receipt wins)."""
        ready = []
        with self._lock:
            for receipt in receipts:
                key = receipt["key"]
                if key not in self._expected:
                    continue  # completed already (a chunk written twice), or never part of the work
                parts = self._written.setdefault(key, {})
                parts[receipt["part_number"]] = receipt
                if len(parts) >= self._expected[key]:
                    ready.append(key)
            for key in ready:
                self._submit(key, list(self._written.pop(key).values()))

    def _submit(self, key: str, receipts: list[Receipt]) -> None:
        """Complete and verify ``key`` in the pool (the lock held); its outcome is tallied as it ends,
        so nothing of it is kept after (its receipts, its future)."""
        self._expected.pop(key, None)
        future = self._pool.submit(self._finish_object, key, receipts)
        self._futures[key] = future
        future.add_done_callback(lambda f: self._tally(key, f))

    def _tally(self, key: str, future: Future[str | None]) -> None:
        error = None if future.cancelled() else future.exception()
        with self._lock:
            self._futures.pop(key, None)
            if future.cancelled():
                return
            if error is not None:
                if self._failure is None:  # the first failure is the one to raise
                    failure = error if isinstance(error, TransferError) else None
                    self._failure = (key, failure or TransferError(f"{type(error).__name__}: {error}"))
            elif (why := future.result()) is None:
                self._verified += 1
            else:
                self._unverified.add(key, why)

    def in_flight(self) -> int:
        """Objects being completed and verified now."""
        with self._lock:
            return len(self._futures)

    def finish(self, keys: Iterable[str], unverified: Unverified | None = None) -> int:
        """Complete and verify every object of ``keys`` not done yet; wait for all. The number whose
        checksum was verified, the others (checked by size) noted in ``unverified`` with the reason;
        the first failure raises (the object deleted, see ``cleanup``)."""
        with self._lock:
            for key in keys:
                if key in self._expected:
                    self._submit(key, list(self._written.pop(key, {}).values()))
        self._pool.shutdown(wait=True)  # every object submitted ends, and is tallied
        with self._lock:
            if self._failure is not None:
                key, err = self._failure
                raise self._cleanup(key, err) from err
            if unverified is not None:
                unverified.merge(self._unverified)
            return self._verified

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Landing:
    """The writing gateway's receipts, and the objects they complete as they land.

    ``objects`` and ``uploads`` (relative key -> the source's object, the upload still open) are the
    job's own, filled as its manifest is written; an object's upload leaves ``uploads`` once it is
    completed, under :attr:`lock` (objects complete in a pool while the job checkpoints or closes).
    After :meth:`begin`, each object is completed and verified as soon as the receipts cover it; a
    job attached in another process does not begin, and :meth:`finish` completes and verifies every
    object at once.
    """

    def __init__(
        self, sides: verify.Sides, objects: dict[str, ObjectInfo], uploads: dict[str, MultipartUpload]
    ) -> None:
        self.sides, self.objects, self.uploads = sides, objects, uploads
        self.lock = threading.Lock()
        #: the receipts this try's writer returned (a previous try's kept ones: ``resume.carried``)
        self.receipts: list[Receipt] = []
        self._completion: Completion | None = None
        self._fetched_at = 0.0

    def begin(self) -> Completion:
        """Complete objects as they land from now on; the :class:`Completion` to tell what to expect."""
        self._completion = Completion(self.finish_object, self.discard_bad)
        return self._completion

    def fetch(self, writer: GatewayHandle | None) -> None:
        """Append the writer's receipts not seen yet; their objects complete as they can."""
        if writer is None or not writer.alive():  # a dead writer's receipts died with it
            return
        if time.monotonic() - self._fetched_at < 0.02:
            return  # fetched just now (poll, then checkpoint)
        new = control.receipts(writer, len(self.receipts))
        self._fetched_at = time.monotonic()
        self.receipts.extend(new)
        if self._completion is not None:
            self._completion.add(new)

    def finish_object(self, key: str, receipts: list[Receipt]) -> str | None:
        """Complete (when striped) and verify one object once every chunk of it is written."""
        with self.lock:
            upload = self.uploads.get(key)
        checked = verify.finish_object(self.sides, key, self.objects[key], upload, receipts)
        if upload is not None:
            with self.lock:
                self.uploads.pop(key, None)
        return checked

    def discard_bad(self, key: str, err: TransferError) -> TransferError:
        return verify.discard_bad(self.sides, key, err)

    def open_uploads(self) -> dict[str, MultipartUpload]:
        """The uploads not completed yet, as of now."""
        with self.lock:
            return dict(self.uploads)

    def finish(self, carried: list[Receipt], unverified: Unverified) -> int:
        """Complete and verify every object not done yet (``carried``: the receipts a previous try
        kept); the number whose checksum was verified. Raise TransferError on the first that fails."""
        if self._completion is not None:
            return self._completion.finish(self.objects, unverified)
        # attached in another process: everything is completed and verified here
        return verify.complete_and_verify(
            self.sides, self.objects, self.uploads, carried + self.receipts, unverified
        )

    def close(self) -> None:
        """Complete nothing more (the job aborts or records the uploads left)."""
        if self._completion is not None:
            self._completion.close()
