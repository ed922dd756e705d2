from .distill_optim_wrapper import (AmpDistillOptimWrapper, DistillOptimWrapper,  # noqa: F401
                                    clip_grad_per_tensor_)
from .layer_decay_constructor import LayerDecayOptimWrapperConstructor  # noqa: F401
from .frozen_params import DistillOptimWrapperConstructor  # noqa: F401
