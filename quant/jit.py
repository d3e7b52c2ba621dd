"""numba's on-disk cache, keyed by the source of the kernel modules in quant/.

numba's cache=True checks only the file that defines the cached function; a jitted caller in quantize.py would
keep stale machine code after a change to a kernel in kblocks.py. Pointing the cache at a folder named after a hash
of all these sources makes any change start a fresh cache. Imported before any @njit(cache=True) in quant/.
An explicit NUMBA_CACHE_DIR wins. Kernel files elsewhere that call jitted functions of quant/ are in the hash too
(CALLERS_ELSEWHERE).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numba


KERNEL_MODULES = ("jit.py", "ksearch.py", "kblocks.py", "quantize.py")  # every module with @njit(cache=True)
CALLERS_ELSEWHERE = (  # jitted code that calls into the modules above
    "../localcoder/kernels/cpu_matmul.py", "../localcoder/kernels/simd.py", "../localcoder/kernels/qdot.py")


def _configure() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    from localcoder.demo import cache_root

    here = Path(__file__).parent
    sources = [here / name for name in KERNEL_MODULES + CALLERS_ELSEWHERE]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    numba.config.CACHE_DIR = str(cache_root() / "numba" / digest)


_configure()
