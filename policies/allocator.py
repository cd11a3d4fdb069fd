"""CPU memory-allocator settings for training (glibc ``mallopt``).

An update on CPU allocates and frees the same large activation tensors every step (CQL's
critic sees 30 sampled actions per state: several ``[2, 7680, 256]`` tensors, 4-16 MB
each). With glibc's defaults such blocks are either ``mmap``-ed and unmapped each time, or
returned to the OS by heap trimming, so every step pays page faults to zero fresh memory:
measured on the project's 2-core CPU, CQL spends ~40% of its update there (42 -> 24 ms per
update in bf16, 84 -> 69 ms in float32; bench/README.md). Keeping freed blocks in the heap
(no per-tensor ``mmap`` below 32 MiB, no trimming below 1 GiB of free heap) removes that,
at the price of the process holding on to its peak heap, as PyTorch's CUDA allocator does
on a GPU.

This is process-wide: call it once at the start of a training process (``o2o pretrain``
does, unless ``trainer.cpu_allocator=default``). It is a no-op off glibc (macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# glibc <malloc.h> parameter numbers.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit (larger values are refused)
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: str | None = None


def tune_cpu_allocator(mode: str = "tuned") -> str:
    """Apply ``mode`` (``tuned`` or ``default``) and say what was done (for the run's log)."""
    global _applied
    if mode not in ("tuned", "default"):
        raise ValueError(f"trainer.cpu_allocator must be 'tuned' or 'default', got {mode!r}")
    if mode == "default":
        return "glibc defaults" if _applied is None else f"already {_applied} (process-wide, cannot be undone)"
    if _applied is not None:
        return _applied
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"unchanged (not glibc: {platform.system()} {platform.libc_ver()[0] or '?'})"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = (
        f"glibc mallopt: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
        if ok
        else "unchanged (mallopt refused the settings)"
    )
    return _applied
