from .centering import LogitCenter, ProbabilityCenter  # noqa: F401
from .coding_rate import coding_rate  # noqa: F401
from .dino_loss import DINOLoss, PrototypeDistillation, multi_view_cross_entropy, prototype_logits  # noqa: F401
from .ibot_loss import iBOTPatchLoss, masked_patch_cross_entropy  # noqa: F401
from .simdino_loss import (  # noqa: F401
                        SimDINOLoss,
                        alignment_cosine,
                        default_gamma,
                        masked_patch_cosine_loss,
                        masked_patch_cosine_loss_gathered,
                        patch_mask_weights,
                        simdino_loss_terms,
)
from .vmf import vmf_log_normalizer, vmf_mean_resultant_length  # noqa: F401
