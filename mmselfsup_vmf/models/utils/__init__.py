from .dist import (  # noqa: F401
                   all_reduce_mean,
                   differentiable_all_reduce_sum,
                   global_batch_size,
                   is_distributed,
                   world_size,
)
from .mask_preprocessor import MaskedSelfSupDataPreprocessor  # noqa: F401
from .masking import block_mask, generate_masks, ibot_mask_ratios, stratified_mask_ratios  # noqa: F401
from .multicrop_preprocessor import MaskedMultiCropDataPreprocessor, MultiCropDataPreprocessor  # noqa: F401
from .schedules import teacher_temperature  # noqa: F401
