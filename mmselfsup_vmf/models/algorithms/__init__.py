from .self_distillation import SelfDistillation  # noqa: F401
from .dino import DINO  # noqa: F401
