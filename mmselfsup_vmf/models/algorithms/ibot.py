"""iBOT and iBOT-vMF (the same algorithm; iBOT-vMF sets ``vmf=True`` and probability
centering in both losses)."""
from typing import Dict, List, Optional

import torch
from mmpretrain.registry import MODELS

from ...arg_checks import check_argument_names
from ..utils.schedules import teacher_temperature
from .self_distillation import SelfDistillation, temperature_schedule, weight_losses


@MODELS.register_module()
class iBOT(SelfDistillation):  # noqa: N801  (the method's own spelling)
    """iBOT (Zhou et al. 2022): DINO's CLS self-distillation plus masked patch distillation.

    Student: the global views with their block masks (the masked patch embeddings are replaced
    by the backbone's mask token) and the local views without masks. Teacher: the unmasked
    global views. The loss is

    ``lambda_cls * loss_dino (DINO's CLS loss, all student views)
    + lambda_patch * loss_patch (teacher patches of view g vs masked student view g)``;

    local crops feed only the CLS term. The masks come from ``MaskedSelfSupDataPreprocessor``
    (``data_samples[i].mask``, one (h, w) mask per global view); the backbone must return all
    tokens (``MaskedViT(out_type='raw')``).

    Args (in addition to ``SelfDistillation``'s):
        patch_loss: config of the patch loss (``iBOTPatchLoss``), with its own centre.
        teacher_patch_temp: the teacher patch temperature schedule ``dict(start, end,
            warmup_epochs, start_epoch)`` (iBOT: 0.04 -> 0.07 over the same warm-up epochs as
            the CLS temperature, held at ``start`` until ``start_epoch``; ``start_epoch``
            defaults to the data preprocessor's ``mask_start_epoch``, iBOT's
            ``pred_start_epoch``, as iBOT's ``teacher_temp2_schedule`` does).
        shared_head_teacher: the teacher's patch tokens use its CLS prototype layer
            ``last_layer`` (iBOT's ``--shared_head_teacher``, default True). The student's
            patch tokens use ``last_layer2`` when the head has one (``num_patch_prototypes``,
            iBOT's ``--shared_head False``), else ``last_layer``.
        lambda_cls, lambda_patch: iBOT's ``lambda1`` and ``lambda2`` (1.0 and 1.0).
    """

    def __init__(self,
                 backbone: dict,
                 head: dict,
                 loss: dict,
                 patch_loss: dict,
                 neck: Optional[dict] = None,
                 teacher_patch_temp: Optional[dict] = None,
                 shared_head_teacher: bool = True,
                 lambda_cls: float = 1.0,
                 lambda_patch: float = 1.0,
                 **kwargs):
        check_argument_names('model.patch_loss', patch_loss, MODELS)
        super().__init__(backbone=backbone, head=head, loss=loss, neck=neck, **kwargs)
        self.patch_loss_module = MODELS.build(patch_loss)
        self.check_vmf_dim('patch_loss_module', 'model.patch_loss')
        self.teacher_patch_temp_cfg = temperature_schedule(
            'model.teacher_patch_temp', teacher_patch_temp, dict(
                start=0.04, end=0.07, warmup_epochs=30,
                start_epoch=getattr(self.data_preprocessor, 'mask_start_epoch', 0)))
        self.shared_head_teacher = bool(shared_head_teacher)
        self.lambda_cls = float(lambda_cls)
        self.lambda_patch = float(lambda_patch)
        self._check_prototype_counts()

    def _check_prototype_counts(self) -> None:
        head = self.head
        if getattr(head, 'last_layer', None) is None:
            raise ValueError('iBOT needs a head with prototypes (DINOHead with num_prototypes)')
        cls_k = head.last_layer.weight.shape[0]
        student_k = head.last_layer2.weight.shape[0] if head.last_layer2 is not None else cls_k
        teacher_k = cls_k if self.shared_head_teacher else student_k
        patch_k = self.patch_loss_module.num_prototypes
        if student_k != patch_k or teacher_k != patch_k:
            raise ValueError(
                f'patch prototypes disagree: student head {student_k}, teacher head {teacher_k} '
                f'(shared_head_teacher={self.shared_head_teacher}), patch_loss.num_prototypes '
                f'{patch_k}; with shared_head_teacher=True num_patch_prototypes must equal '
                'num_prototypes')

    def schedule_values(self) -> Dict[str, float]:
        cfg = self.teacher_patch_temp_cfg
        delayed_epoch = max(self.epoch - cfg['start_epoch'], 0)
        return dict(super().schedule_values(),
                    teacher_patch_temp=teacher_temperature(
                        delayed_epoch, cfg['warmup_epochs'], cfg['start'], cfg['end']))

    def teacher_patch_temperature(self) -> float:
        return self.schedule_values()['teacher_patch_temp']

    def distillation_loss(self, views: List[torch.Tensor],
                          data_samples: List) -> Dict[str, torch.Tensor]:
        g = self.num_global_views
        masks = self.global_masks(data_samples)
        if masks is None:
            raise ValueError('iBOT needs the masks of the global views in data_samples[i].mask; '
                             "use data_preprocessor=dict(type='MaskedSelfSupDataPreprocessor', "
                             '...)')
        cls_vmf, patch_vmf = self.loss_module.vmf, self.patch_loss_module.vmf
        with torch.no_grad():
            t_cls, t_patch = self.embed_views(self.teacher.module, views[:g])
            if any(p is None for p in t_patch):
                raise ValueError("iBOT needs the backbone's patch tokens: use "
                                 "MaskedViT(out_type='raw')")
            t_head = self.teacher.module['head']
            t_patch_layer = not self.shared_head_teacher
            teacher_cls = t_head(torch.cat(t_cls)).chunk(g)
            teacher_patch = t_head(torch.cat(t_patch), patch=t_patch_layer).chunk(g)
            t_norms = t_head.prototype_norms() if cls_vmf else None
            t_patch_norms = t_head.prototype_norms(patch=t_patch_layer) if patch_vmf else None
        s_cls, s_patch = self.embed_views(self._student_modules(), views, masks)
        # one head call per token type: the prototype layer's weight is recomputed from
        # its weight-norm parameters at every call, which costs K x p per call
        student_cls = self.head(torch.cat(s_cls)).chunk(len(s_cls))
        student_patch = self.head(torch.cat(s_patch[:g]), patch=True).chunk(g)

        schedule = self.schedule_values()
        cls_terms = self.loss_module(
            student_cls, teacher_cls, schedule['teacher_temp'],
            student_norms=self.head.prototype_norms() if cls_vmf else None,
            teacher_norms=t_norms)
        patch_terms = self.patch_loss_module(
            student_patch, teacher_patch, masks, schedule['teacher_patch_temp'],
            student_norms=self.head.prototype_norms(patch=True) if patch_vmf else None,
            teacher_norms=t_patch_norms)
        return dict(weight_losses(cls_terms, self.lambda_cls),
                    **weight_losses(patch_terms, self.lambda_patch))
