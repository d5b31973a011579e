"""The numba options of every compiled kernel of the evaluation, in one place.

The kernels run in the evaluator's threads: they must release the GIL while they run, so that
the threads count pixels in parallel.
"""

from typing import Callable, TypeVar

import numba

__all__ = ["jit"]

Function = TypeVar("Function", bound=Callable)


def jit(function: Function) -> Function:
    """``function`` compiled by numba (nopython mode), releasing the GIL while it runs; the
    machine code is cached on disk next to the module."""
    return numba.njit(nogil=True, cache=True)(function)
