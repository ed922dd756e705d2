from .dino import DINO  # noqa: F401
from .ibot import iBOT  # noqa: F401
from .self_distillation import SelfDistillation  # noqa: F401
from .simdino import SimDINO, SimDINOv2  # noqa: F401
