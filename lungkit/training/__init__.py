"""Training: `tf.distribute` strategies and precision, resumable `fit`, the callbacks.

- `lungkit.training.strategy`: `get_strategy`, `set_precision`, `is_chief`.
- `lungkit.training.loop`: `train`, `fit`, `distributed_fit` (multi-worker), `ensure_built`.
- `lungkit.training.runs`: the files of a run (record, history, models, backup), the only
  code that reads and writes them; a finished run is loaded, not trained again.
- `lungkit.training.callbacks`: the callbacks of a resumable run.
"""

from lungkit.checks import PRECISIONS, STRATEGIES
from lungkit.training.callbacks import (
    FriendlyTerminateOnNaN,
    ShuffleEpoch,
    TimingCallback,
    default_callbacks,
)
from lungkit.training.loop import (
    TrainingDiverged,
    TrainingHistory,
    TrainingInterrupted,
    distributed_fit,
    ensure_built,
    fit,
    train,
)
from lungkit.training.runs import BACKUP_DIR, HISTORY_FILE, backup_epoch, read_history
from lungkit.training.strategy import get_strategy, is_chief, is_multiworker, set_precision

__all__ = [
    "BACKUP_DIR", "HISTORY_FILE", "PRECISIONS", "STRATEGIES", "FriendlyTerminateOnNaN",
    "ShuffleEpoch", "TimingCallback", "TrainingDiverged", "TrainingHistory",
    "TrainingInterrupted", "backup_epoch", "default_callbacks", "distributed_fit",
    "ensure_built", "fit", "get_strategy", "is_chief", "is_multiworker", "read_history",
    "set_precision", "train",
]
