from .distill_optim_wrapper import (AmpDistillOptimWrapper, DistillOptimWrapper,  # noqa: F401
                                    clip_grad_per_tensor_)
