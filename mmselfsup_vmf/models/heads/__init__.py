from .dino_head import DINOHead  # noqa: F401
