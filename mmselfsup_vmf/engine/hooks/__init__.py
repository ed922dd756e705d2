from .checkpoint_check import CheckpointMatchHook  # noqa: F401
from .divergence_guard import DivergenceGuardHook  # noqa: F401
from .fault_tolerant_checkpoint import FaultTolerantCheckpointHook  # noqa: F401
from .freeze_last_layer import FreezeLastLayerHook  # noqa: F401
from .knn_hook import KNNHook  # noqa: F401
from .logged_runtime_info import LoggedRuntimeInfoHook  # noqa: F401
from .prototype_monitor import PrototypeMonitorHook  # noqa: F401
from .random_state import RandomStateHook  # noqa: F401
from .stop_on_signal import StopOnSignalHook, TrainingInterrupted  # noqa: F401
from .train_progress import TrainProgressHook  # noqa: F401
from .unreadable_samples import UnreadableSampleHook  # noqa: F401
