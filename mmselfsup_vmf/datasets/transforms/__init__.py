from .multicrop import MultiCrop, dino_view_pipeline  # noqa: F401
