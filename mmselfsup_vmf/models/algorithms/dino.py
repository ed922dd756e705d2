"""DINO and DINO-vMF (the same algorithm; DINO-vMF is ``DINOLoss(vmf=True, ...)``)."""
from typing import Dict, List

import torch
from mmpretrain.registry import MODELS

from .self_distillation import SelfDistillation


@MODELS.register_module()
class DINO(SelfDistillation):
    """DINO (Caron et al. 2021) with the DINO-vMF switch in its loss.

    Student: every view -> backbone CLS -> DINOHead scores; teacher: the global views.
    The loss module returns ``loss_dino`` (the multi-view cross-entropy) and the
    teacher-distribution statistics (``teacher_entropy``, ``teacher_unique_argmax``).
    """

    def distillation_loss(self, views: List[torch.Tensor],
                          data_samples: List) -> Dict[str, torch.Tensor]:
        g = self.num_global_views
        with torch.no_grad():
            t_cls, _ = self.embed_views(self.teacher.module, views[:g])
            t_head = self.teacher.module['head']
            # one head call on all crops, as DINO's MultiCropWrapper does (the weight-normalised
            # (K, p) prototype matrix is then built once per step, not once per view)
            teacher_scores = list(t_head(torch.cat(t_cls)).chunk(len(t_cls)))
            teacher_norms = t_head.prototype_norms()
        s_cls, _ = self.embed_views(self._student_modules(), views)
        student_scores = list(self.head(torch.cat(s_cls)).chunk(len(s_cls)))
        return self.loss_module(student_scores, teacher_scores,
                                self.schedule_values()['teacher_temp'],
                                student_norms=self.head.prototype_norms(),
                                teacher_norms=teacher_norms)
