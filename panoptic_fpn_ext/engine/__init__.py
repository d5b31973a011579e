"""Training: the plugin's DefaultTrainer and its atomic checkpointer."""
from .checkpoint import AtomicDetectionCheckpointer, atomic_write
from .trainer import PanopticFPNExtTrainer
