from .distill_optim_wrapper import (  # noqa: F401
                                    AmpDistillOptimWrapper,
                                    DistillOptimWrapper,
                                    clip_grad_per_tensor_,
)
from .frozen_params import DistillOptimWrapperConstructor  # noqa: F401
from .layer_decay_constructor import LayerDecayOptimWrapperConstructor  # noqa: F401
