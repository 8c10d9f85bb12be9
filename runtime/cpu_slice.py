"""Longer CPU slices for worker processes, where Linux offers them (EEVDF custom slices, 6.12+).

Workers often outnumber cores (each actor owns a process: 8 actors on 2
cores), and then all of them stay runnable. The kernel's default slice (1.4 ms
on the 2-core box) switches workers every call or so of 1 ms, and each switch
leaves the next process's caches cold: the runtime's own steps between two
calls (unpickling, pickling, writing results) then cost several times what
they cost warm. Asking for a longer slice (`SLICE_S`) for the workers makes
them take turns less often, and a worker runs several calls in a row, so its
held results go to the node in fewer, larger writes (`outbox.py`). The node's
dispatcher and the driver keep the default, shorter slice, so the kernel still
runs them first when they wake (a shorter slice is an earlier deadline).
Measured with bench/runtime_micro.py's 8 actors x 1 ms calls on 2 busy cores:
preemptions of workers per call 1.1-1.3 -> 0.4-0.6.

The price is fairness granularity among workers: while they outnumber the
cores, a runnable worker waits up to `SLICE_S` per worker ahead of it rather
than 1.4 ms. Elsewhere (another OS or architecture, a kernel without the
field, a worker started under another policy) nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct
import sys

logger = logging.getLogger(__name__)

SLICE_S = 0.01
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}  # syscall numbers
# struct sched_attr (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice, priority, runtime, deadline, period,
# util_min, util_max; a fair-class task reads `runtime` as the slice it asks for.
_ATTR = struct.Struct("=IIQiIQQQII")


def ask_for_long_slices(slice_s: float = SLICE_S) -> bool:
    """Ask the kernel for `slice_s` slices for the calling thread (a hint); True if the call was accepted.

    Threads it starts afterwards inherit the slice.
    """
    number = _SCHED_SETATTR.get(platform.machine())
    if not sys.platform.startswith("linux") or number is None or os.sched_getscheduler(0) != os.SCHED_OTHER:
        return False
    attr = _ATTR.pack(_ATTR.size, os.SCHED_OTHER, 0, os.getpriority(os.PRIO_PROCESS, 0), 0, int(slice_s * 1e9),
                      0, 0, 0, 0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, 0, ctypes.create_string_buffer(attr, len(attr)), 0) != 0:
        logger.debug("sched_setattr refused a %s s slice: errno %d", slice_s, ctypes.get_errno())
        return False
    return True
