"""`tensorwire serve` restarts itself once so that glibc's malloc asks for huge pages.

ZeroMQ receives every large message into a fresh malloc'd buffer, and glibc maps each one
anew, so the kernel faults it in one 4 KiB page at a time: 25,600 faults per 100 MB, which
made a 100 MB round trip over tcp about twice as slow on the 2-vCPU VM (BENCHMARKS.md). The
tunable `glibc.malloc.hugetlb=1` (glibc 2.35+) has malloc mark its mappings for transparent
huge pages: 2 MiB per fault. glibc reads tunables only at process start, hence the exec
(same pid, same arguments, before anything is bound). TENSORWIRE_HUGE_PAGES=0 turns it off.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "TENSORWIRE_HUGE_PAGES"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def wanted(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether this process should restart with the tunable: Linux, glibc 2.35+,
    transparent huge pages not disabled, not opted out, not set already."""
    if not sys.platform.startswith("linux") or environ.get(OPT_OUT, "1") == "0":
        return False
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", ""):
        return False
    libc, version = platform.libc_ver()
    if libc != "glibc" or _parts(version) < (2, 35):
        return False
    try:
        return "[never]" not in THP_SETTING.read_text()
    except OSError:
        return False


def restart_with_huge_pages() -> None:
    """Exec this same command line again with the tunable set; returns when not `wanted`."""
    if not wanted() or not sys.executable or not sys.orig_argv:
        return  # an embedded interpreter cannot be started again
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, TUNABLE) if t))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def _parts(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return (0,)
