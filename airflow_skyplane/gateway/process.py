"""What a gateway worker process asks of the operating system before it works: to die with the
gateway's main process, and to keep chunk-sized buffers in its heap (glibc's ``mallopt``)."""

from __future__ import annotations

import ctypes
import ctypes.util
import signal


def die_with_parent() -> None:
    """Ask Linux to kill this worker when the gateway's main process dies (SIGKILL included)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def reuse_chunk_buffers() -> None:
    """Ask glibc to keep chunk-sized buffers in a few heaps and reuse them, rather than map and unmap
    each one.

    Every frame passes through several buffers of its size (received, decrypted, decompressed, sent
    to the store). Served by ``mmap`` (glibc's default above 128 KiB, until it adapts), each is
    faulted in, zeroed by the kernel page by page and unmapped again: measured on a writing gateway,
    a third of its CPU. Kept in the heap (frames up to 32 MiB, glibc's largest threshold; not trimmed
    back to the system) they are reused; two arenas stop the RSS from growing with the thread count
    (each thread would otherwise get an arena of its own, holding its own chunk buffers). The RSS then
    stays near the worker's byte budget. Not glibc (or no ctypes): nothing to do.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD, its largest value on 64-bit
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free memory stays for the next frames
    except (OSError, AttributeError):
        pass
