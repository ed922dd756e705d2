from . import atomic_file_backend, hooks, optimizers  # noqa: F401
