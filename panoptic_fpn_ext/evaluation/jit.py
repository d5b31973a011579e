"""The numba options of every compiled kernel of the evaluation, in one place.

The kernels run in the evaluator's threads: they must release the GIL while they run, so that
the threads count pixels in parallel.

Compiled code is cached on disk where numba finds a writable place: ``$NUMBA_CACHE_DIR`` if set,
else the package's ``__pycache__``, else the user's cache folder (``~/.cache/numba``). Where none
is writable (a read-only install run by a user without a writable home), the kernels are compiled
in each process instead (a few seconds, once per process) and the reason is logged.
"""

import logging
from typing import Callable, TypeVar

import numba

__all__ = ["jit"]

logger = logging.getLogger(__name__)

Function = TypeVar("Function", bound=Callable)


def jit(function: Function) -> Function:
    """``function`` compiled by numba (nopython mode, at its first call), releasing the GIL while
    it runs; the machine code is cached on disk where numba can write (see the module)."""
    try:
        return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError as e:  # numba: "cannot cache function ...: no locator available ..."
        if "no locator available" not in str(e):
            raise
        logger.info(
            "No writable cache for numba (%s); %s is compiled in this process. Set "
            "NUMBA_CACHE_DIR to a writable folder to keep it.",
            e,
            function.__qualname__,
        )
        return numba.njit(nogil=True)(function)
