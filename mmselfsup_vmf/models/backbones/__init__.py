from .vit import MaskedViT  # noqa: F401
