"""Training: the plugin's DefaultTrainer, its atomic checkpointer and resumable sampler, and the
checks of the weights and checkpoints a run loads."""

from ..file_io import atomic_write
from .checkpoint import AtomicDetectionCheckpointer
from .resume import RESUME_FROM_FLAG, ResumeError, checkpoint_problem, resume_checkpoint
from .sampler import ResumableTrainingSampler
from .trainer import PanopticFPNExtTrainer
from .weights import (
    ALLOW_PARTIAL_FLAG,
    LoadedWeights,
    WeightsMismatchError,
    WeightsNotFoundError,
    build_inference_model,
    check_inference_weights,
    resolve_weights,
    watch_loaded_weights,
)
