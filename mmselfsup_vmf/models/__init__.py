from . import algorithms, backbones, heads, losses, utils  # noqa: F401
