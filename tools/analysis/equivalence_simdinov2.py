"""The official SimDINOv2 side of ``compare_with_official.py``: their step, on a CPU, no FSDP.

Nothing of the official code is copied: ``simdinov2`` (RobinWu218/SimDINO, a DINOv2 code base)
is imported from the user's checkout at run time; it needs ``timm``, ``omegaconf`` and
``iopath``. Their ``main`` wraps the model in FSDP on CUDA and ``do_train`` reads ImageNet, so
the model is their ``SimSSLMetaArch`` built from their own config files (default config +
``simdino_config.yaml`` + ``train/vitb16.yaml``, shrunk), without
``prepare_for_distributed_training``, and each iteration does what ``do_train``'s loop body
does: their schedulers (``build_schedulers``), ``apply_optim_scheduler``, the MCR coefficient
and eps schedules, ``forward_backward``, clipping, ``optimizer.step()`` (their
``build_optimizer``: timm's AdamW), ``update_teacher``. What FSDP did is done without it:

- ``clip_grad_norm_`` of each FSDP-wrapped student submodule (backbone, head): torch's
  ``clip_grad_norm_`` over that submodule's parameters (the same law: one norm per submodule,
  coefficient max_norm / (norm + 1e-6) clamped at 1);
- ``update_teacher`` lerps the parameters of each FSDP unit: here one unit per submodule
  (the element-wise arithmetic does not depend on how the parameters are grouped);
- the FSDP stream hand-over (``fsdp_synchronize_streams``) is skipped.

FSDP's ``clip_grad_norm_`` takes the norms in float32; torch's, here, in the gradients' dtype.

Their collate (``collate_data_and_cast``) builds the batch from our crops, with our masks
instead of its ``MaskingGenerator`` draws and without its shuffle of the mask order. Their
``nested`` block needs xFormers; without it the per-crop block (``memeff``, plain attention)
does the same maths. Two steps of theirs run in float32 whatever the model's dtype: the
position-embedding interpolation of the local crops (``.float()``) and the collate's patch
weights 1 / |M_i| (an integer count divided into 1); in float64 runs both are done in float64
unless ``float32_parts`` (``--official-float32-parts``) keeps them as they are.
"""
import contextlib
import os
import re
import sys
import types

import torch
from equivalence_official import (
    _flat,
    checked_name_map,
    cpu_only,
    import_with_dependencies,
    init_one_process_group,
    official_name,
    record_at_step,
)

# this project's names -> theirs, beyond the DINO ViT rules (chunk i holds block i: one block
# per FSDP chunk; LayerScale; the shared head is their ``dino_head``)
V2_OWN_RULES = [
    (r'^backbone\.layers\.(\d+)\.attn\.gamma1\.weight$', r'backbone.blocks.\1.\1.ls1.gamma'),
    (r'^backbone\.layers\.(\d+)\.ffn\.gamma2\.weight$', r'backbone.blocks.\1.\1.ls2.gamma'),
    (r'^backbone\.mask_token$', 'backbone.mask_token'),
]
V2_AFTER_DINO_RULES = [(r'^backbone\.blocks\.(\d+)\.', r'backbone.blocks.\1.\1.'),
                       (r'^head\.', 'dino_head.')]


def v2_name(name: str) -> str:
    """Our parameter name -> SimDINOv2's: its own rules, else the DINO ViT rules adapted."""
    for pattern, repl in V2_OWN_RULES:
        if re.search(pattern, name):
            return re.sub(pattern, repl, name)
    name = official_name(name)
    for pattern, repl in V2_AFTER_DINO_RULES:
        name = re.sub(pattern, repl, name)
    return name


def import_simdinov2(path: str):
    """``simdinov2.train.train`` from ``<SimDINO checkout>/simdinov2``."""
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, 'train', 'ssl_meta_arch_sim.py')):
        raise SystemExit(f'{path}/train/ssl_meta_arch_sim.py not found: pass the simdinov2 '
                         'folder of a RobinWu218/SimDINO checkout')
    for name in [m for m in sys.modules if m.split('.')[0] == 'simdinov2']:
        sys.modules.pop(name)
    sys.path.insert(0, os.path.dirname(path))
    try:
        return import_with_dependencies('simdinov2.train.train', 'simdinov2',
                                        'timm, omegaconf, iopath')
    finally:
        sys.path.pop(0)


def official_config(path: str, t: dict):
    """Their ViT-B/16 SimDINOv2 config, shrunk like ours (the values that are not shrunk
    stay theirs: the comparison checks our recipe against them)."""
    from omegaconf import OmegaConf
    from simdinov2.configs import load_config
    cfg = OmegaConf.merge(OmegaConf.create(load_config('ssl_default_config')),
                          OmegaConf.load(os.path.join(path, 'configs', 'simdino_config.yaml')),
                          OmegaConf.load(os.path.join(path, 'configs', 'train', 'vitb16.yaml')))
    s = cfg.student
    s.arch, s.patch_size, s.block = 'vit_equivalence_tiny', t['patch'], 'memeff'
    s.block_chunks, s.drop_path_rate = t['num_layers'], 0.0  # drop-path: other random draws
    cfg.crops.global_crops_size, cfg.crops.local_crops_size = t['global_size'], t['local_size']
    cfg.crops.local_crops_number = t['num_local']
    cfg.dino.head_hidden_dim, cfg.dino.head_bottleneck_dim = t['hidden'], t['bottleneck']
    cfg.compile, cfg.compute_precision.grad_scaler = False, False  # no AMP in the comparison
    cfg.optim.epochs, cfg.optim.warmup_epochs = t['epochs'], t['warmup_epochs']
    cfg.train.OFFICIAL_EPOCH_LENGTH = t['epoch_iters']
    # their scaling rule (apply_scaling_rules_to_cfg, sqrt) at the recipe's batch of 1024
    cfg.optim.lr = cfg.optim.base_lr
    return cfg


def register_tiny_vit(vits, t):
    """Their ``DinoVisionTransformer`` at the tiny size, as their ``vit_small`` builds it."""
    def vit_equivalence_tiny(patch_size=16, num_register_tokens=0, block='nested', **kwargs):
        return vits.DinoVisionTransformer(
            patch_size=patch_size, embed_dim=t['embed_dims'], depth=t['num_layers'],
            num_heads=t['num_heads'], mlp_ratio=t['mlp_ratio'],
            block_fn=vits.get_block_fn(block), num_register_tokens=num_register_tokens,
            **kwargs)
    vits.vit_equivalence_tiny = vit_equivalence_tiny


@contextlib.contextmanager
def float64_pos_embed(vits, enabled: bool):
    """Their ``interpolate_pos_encoding`` calls ``pos_embed.float()``: inside it (only), let
    ``.float()`` keep a float64 tensor as it is."""
    vit, saved_float = vits.DinoVisionTransformer, torch.Tensor.float
    saved = vit.interpolate_pos_encoding

    def keep_float64(self, *a, **k):
        torch.Tensor.float = lambda t, *fa, **fk: (
            t if t.dtype == torch.float64 else saved_float(t, *fa, **fk))
        try:
            return saved(self, *a, **k)
        finally:
            torch.Tensor.float = saved_float
    if enabled:
        vit.interpolate_pos_encoding = keep_float64
    try:
        yield
    finally:
        vit.interpolate_pos_encoding = saved


def official_batch(collate_mod, cfg, inputs, masks, dtype):
    """Their collate on our crops, with our masks in our order."""
    g, m = len(masks), inputs[0].shape[0]
    samples = [(dict(global_crops=[v[i] for v in inputs[:g]],
                     local_crops=[v[i] for v in inputs[g:]]), ()) for i in range(m)]
    ours = iter([mask.flatten() for mask in torch.cat(list(masks))])
    saved = collate_mod.random
    collate_mod.random = types.SimpleNamespace(uniform=saved.uniform, shuffle=lambda x: None)
    try:
        return collate_mod.collate_data_and_cast(
            samples, mask_ratio_tuple=cfg.ibot.mask_ratio_min_max,
            mask_probability=cfg.ibot.mask_sample_probability, dtype=dtype,
            n_tokens=masks[0][0].numel(), mask_generator=lambda n: next(ours).numpy())
    finally:
        collate_mod.random = saved


def run_simdinov2(path: str, ours: dict, tiny: dict, float64: bool = True, adamw=None,
                  float32_parts: bool = False):
    """Their step on our initial weights, crops and masks; a trace in ``run_ours``' format."""
    train = import_simdinov2(path)
    arch = sys.modules['simdinov2.train.ssl_meta_arch_sim']
    collate_mod = sys.modules['simdinov2.data.collate']
    vits = sys.modules['simdinov2.models.vision_transformer']
    register_tiny_vit(vits, tiny)
    init_one_process_group()
    dtype = torch.float64 if float64 else torch.float32
    cfg = official_config(path, tiny)
    model = arch.SimSSLMetaArch(cfg).to(dtype)
    name_map = checked_name_map(ours['initial'], model.student, rename=v2_name)
    state = model.student.state_dict()
    for n, m in name_map.items():
        state[m] = ours['initial'][n].to(dtype).reshape(state[m].shape)
    model.student.load_state_dict(state)
    for k in model.student:  # prepare_for_distributed_training's copy, without FSDP
        model.teacher[k].load_state_dict(model.student[k].state_dict())
    model.need_to_synchronize_fsdp_streams = False  # FSDP streams: none here
    # update_teacher lerps the parameters of each FSDP unit: one unit per submodule here
    arch.get_fsdp_modules = lambda m: [types.SimpleNamespace(params=list(m.parameters()))]

    optimizer = train.build_optimizer(cfg, model)
    if adamw:  # the noise floor: another AdamW implementation
        for group in optimizer.param_groups:
            group.update(foreach=False, **adamw)
    (lr_s, wd_s, mom_s, temp_s, last_lr_s, coeff_s, eps_s, ibot_w_s,
     clip_s) = train.build_schedulers(cfg)
    names = {id(p): n for n, p in model.student.named_parameters()}
    rows = []
    record_at_step(optimizer, names, rows)

    model.train()
    with cpu_only(), float64_pos_embed(vits, float64 and not float32_parts):
        for it in range(len(ours['inputs'])):  # do_train's loop body
            data = official_batch(collate_mod, cfg, ours['inputs'][it], ours['masks'][it], dtype)
            if float64 and not float32_parts:  # their 1 / |M_i| is float32 (int / float)
                masks = data['collated_masks']
                data['masks_weight'] = (1 / masks.sum(-1).clamp(min=1).to(dtype)).unsqueeze(
                    -1).expand_as(masks)[masks]
            mom, teacher_temp = mom_s[it], temp_s[it]
            train.apply_optim_scheduler(optimizer, lr_s[it], wd_s[it], last_lr_s[it])
            model.dino_loss.coeff, model.dino_loss.eps = coeff_s[it], eps_s[it]
            if cfg.ibot.loss_weight > 0:
                cfg.ibot.loss_weight = float(ibot_w_s[it])
            rows.append(dict(lr={}, wd={}, grad={}, momentum=float(mom)))
            optimizer.zero_grad(set_to_none=True)
            loss = model.forward_backward(data, teacher_temp=teacher_temp)
            rows[-1]['loss'] = dict(
                loss=loss['total_loss'].item(),
                loss_comp=-model.dino_loss.coeff * loss['dino_mcr_comp_loss'].item(),
                loss_expa=-loss['dino_mcr_expa_loss'].item(),
                loss_patch=model.ibot_loss_weight * loss['ibot_comp_loss'].item())
            if (clip := clip_s[it]) > 0:
                for v in model.student.values():  # FSDP's clip_grad_norm_ per submodule
                    torch.nn.utils.clip_grad_norm_(list(v.parameters()), clip)
                optimizer.step()
            model.update_teacher(mom)
    trace = dict(rows=rows, student=_flat(model.student.named_parameters()),
                 teacher=_flat(model.teacher.named_parameters()))
    return trace, name_map
