"""Training: the plugin's DefaultTrainer, its atomic checkpointer and resumable sampler."""

from .checkpoint import AtomicDetectionCheckpointer, atomic_write
from .sampler import ResumableTrainingSampler
from .trainer import PanopticFPNExtTrainer
