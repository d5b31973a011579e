"""Training: the plugin's DefaultTrainer, its atomic checkpointer and resumable sampler."""

from ..file_io import atomic_write
from .checkpoint import AtomicDetectionCheckpointer
from .sampler import ResumableTrainingSampler
from .trainer import PanopticFPNExtTrainer
from .weights import WeightsNotFoundError, resolve_weights
