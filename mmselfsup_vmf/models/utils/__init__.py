from .schedules import teacher_temperature  # noqa: F401
from .dist import (all_reduce_mean, differentiable_all_reduce_sum,  # noqa: F401
                   global_batch_size, is_distributed, world_size)
from .masking import (block_mask, generate_masks, ibot_mask_ratios,  # noqa: F401
                      stratified_mask_ratios)
from .mask_preprocessor import MaskedSelfSupDataPreprocessor  # noqa: F401
