"""A training sampler whose order survives ``--resume``.

Detectron2's ``TrainingSampler`` draws a fresh random seed per run (unless given one) and always
starts from the beginning of its stream, so a resumed run sees a different data order than the run
it continues. This one saves its seed in the checkpoint and, once told the iteration it resumes at,
skips the samples the earlier run already consumed.
"""

import itertools
from typing import Dict, Iterator

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """``TrainingSampler`` + ``state_dict``/``load_state_dict`` (the seed) + ``skip``.

    The global index stream is ``shuffle(range(size)) + shuffle(range(size)) + ...``; each rank
    takes every ``world_size``-th index of it, as in Detectron2. ``skip(n)`` drops the first ``n``
    indices of the global stream (``n = start_iter * SOLVER.IMS_PER_BATCH``). The continuation is
    exact when the data-loader worker count is unchanged and the resume iteration is a multiple of
    it (each worker then has produced the same number of batches).
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self._skip = 0

    def skip(self, num_samples: int) -> None:
        """Start the global stream after ``num_samples`` indices (set before iteration starts)."""
        if num_samples < 0:
            raise ValueError(f"ResumableTrainingSampler.skip expects >= 0, got {num_samples}")
        self._skip = num_samples

    def __iter__(self) -> Iterator[int]:
        start = self._skip + self._rank
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self._seed}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self._seed = int(state["seed"])
