from . import atomic_file_backend, fsdp2_strategy, hooks, optimizers, schedulers  # noqa: F401
