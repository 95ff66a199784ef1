"""Secrets in memory: what this process can find out and ask for, on Linux.

A decrypted model or a data key sits in ordinary process memory. Three ways it leaves: a core dump
(written on a crash, to a file or to systemd-coredump), swap (the kernel pages it out to disk), and
anyone who can read the process (ptrace, /proc/PID/mem: root, or the same user without Yama). What a
process can do about the first two:

- `madvise(MADV_DONTDUMP)` leaves a mapping out of core dumps (the `dd` flag in /proc/self/smaps);
  `weights` marks every decrypted-weights buffer so. `RLIMIT_CORE = 0` stops core dumps altogether.
- `mlock` keeps pages out of swap (the `lo` flag), up to RLIMIT_MEMLOCK, often 8 MiB for a user: a
  data key fits, a model's weights do not. Encrypted swap (or none) covers the rest.

What Python cannot do: choose where a `bytes` lives, lock it, or wipe it. `bytes` are immutable and are
copied freely (slicing, hashing, the cipher's own key schedule inside OpenSSL), and freed memory is not
zeroed. Only a buffer the program allocated itself (an anonymous mmap, a bytearray) can be marked and
overwritten, and even then copies elsewhere may survive.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any


def mapping_flags(address: int) -> set[str]:
    """The kernel's VmFlags of the mapping that holds `address` in this process (e.g. {"rd", "wr", "dd"}).

    Linux only (it reads /proc/self/smaps); LookupError if no mapping holds the address.
    """
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        raise OSError("mapping flags need Linux's /proc/self/smaps")
    inside = False
    for line in smaps.read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if "-" in head and not head.endswith(":"):  # a mapping's first line: "start-end perms ..."
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return set(line.split()[1:])
    raise LookupError(f"no mapping of this process holds address {address:#x}")


def memory_exposure() -> dict[str, Any]:
    """Where this process's memory can end up, as the kernel and its limits say now."""

    def limit(value: int) -> str | int:
        return "unlimited" if value == resource.RLIM_INFINITY else value

    swaps = Path("/proc/swaps")
    pattern = Path("/proc/sys/kernel/core_pattern")
    return {
        "core dump size limit (RLIMIT_CORE, soft)": limit(resource.getrlimit(resource.RLIMIT_CORE)[0]),
        "core_pattern": pattern.read_text().strip() if pattern.exists() else None,
        "swap areas": len(swaps.read_text().splitlines()) - 1 if swaps.exists() else None,
        "mlock limit, bytes (RLIMIT_MEMLOCK, soft)": limit(resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]),
    }
