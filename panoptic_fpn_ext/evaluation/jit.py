"""The numba options of every compiled kernel of the plugin (the evaluation's and the combiner's),
in one place.

The kernels run in the evaluator's and the combiner's threads: the long ones release the GIL while
they run, so that the threads work in parallel.

Compiled code is cached on disk where numba finds a writable place: ``$NUMBA_CACHE_DIR`` if set,
else the package's ``__pycache__``, else the user's cache folder (``~/.cache/numba``). Where none
is writable (a read-only install run by a user without a writable home), the kernels are compiled
in each process instead (a few seconds, once per process) and the reason is logged.
"""

import logging
from typing import Callable, Optional, TypeVar

import numba

__all__ = ["jit"]

logger = logging.getLogger(__name__)

Function = TypeVar("Function", bound=Callable)


def jit(function: Optional[Function] = None, *, release_gil: bool = True):
    """``function`` compiled by numba (nopython mode, at its first call); the machine code is
    cached on disk where numba can write (see the module).

    Use as ``@jit``, or ``@jit(release_gil=False)`` for a kernel of a few microseconds: a call
    that releases the GIL hands it to another thread that waits for it, and then waits for that
    thread's Python to release it again, which costs more than such a kernel saves.
    """
    if function is None:
        return lambda f: jit(f, release_gil=release_gil)
    try:
        return numba.njit(nogil=release_gil, cache=True)(function)
    except RuntimeError as e:  # numba: "cannot cache function ...: no locator available ..."
        if "no locator available" not in str(e):
            raise
        logger.info(
            "No writable cache for numba (%s); %s is compiled in this process. Set "
            "NUMBA_CACHE_DIR to a writable folder to keep it.",
            e,
            function.__qualname__,
        )
        return numba.njit(nogil=release_gil)(function)
