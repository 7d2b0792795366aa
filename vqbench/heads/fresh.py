"""Fresh CPU tensors whose first touch costs less.

A fresh N x V output (hundreds of MB) costs more in page faults than in the arithmetic that fills
it: with the default allocator each 4 KiB page faults once on its first write. Advising the allocation
onto transparent huge pages (madvise MADV_HUGEPAGE) before anything touches it makes the first write
fault once per 2 MiB (512 times fewer faults, and the kernel clears each huge page in one pass). The
memory still comes from torch's allocator (the profiler's memory events, and so the measured peak
memory, see it); only the kernel's page size changes. torch's THP_MEM_ALLOC_ENABLE=1 does the same for
every large CPU allocation; this applies it to the outputs that need it, whatever the allocator
setting. Where the platform has no THP (or no madvise), the tensor is a
plain torch.empty.
"""

from __future__ import annotations

import ctypes
import mmap

import torch

HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def _load_madvise():
    if _MADV_HUGEPAGE is None:
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


def advise_huge_pages(t: torch.Tensor) -> bool:
    """Advise the whole 2 MiB pages inside t's memory (a CPU tensor) onto transparent huge pages; True when
    the advice was given. Pages already touched keep their size until the kernel collapses them."""
    if _madvise is None or t.device.type != "cpu":
        return False
    start = t.data_ptr()
    end = start + t.untyped_storage().nbytes() - t.storage_offset() * t.element_size()
    first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
    return last > first and _madvise(first, last - first, _MADV_HUGEPAGE) == 0


def fresh_empty(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty(shape) whose pages, on CPU, are advised onto huge pages before their first touch."""
    t = torch.empty(shape, dtype=dtype, device=device)
    advise_huge_pages(t)
    return t


def fresh_zeros(shape, *, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.zeros(shape), first touched on huge pages (see fresh_empty)."""
    return fresh_empty(shape, dtype=dtype, device=device).zero_()
