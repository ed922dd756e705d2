"""FSDP2 all-gathers and all-reduces per training step, counted in 2 gloo processes.

The recipes' backbone (``MaskedViT``) takes both crop sizes in one call and runs each block
once on both, so every student unit is called once per step. Kept gathered after the forward
(``student_reshard_after_forward=False``, the default, DINOv2's ``SHARD_GRAD_OP``) a student
unit is gathered once per step; resharded after the forward, once more for its backward;
each teacher unit once (one forward, no backward). With one backbone call per crop size
(mmpretrain's ``VisionTransformer``) the counts are higher: FSDP2 reshards a block after the
backward of its first call, so the other call's backward gathers it again. Per-tensor
clipping sums the shards' squared norms of all gradient tensors in one all-reduce."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_fsdp2 import (
    BATCH,
    _free_port,
    batches,
    build_model,
    init_gloo_rank,
    method_cfg,
    train_step,
)


def _count_calls(counts, key, cls_or_module, name):
    original = getattr(cls_or_module, name)

    def counted(*args, **kwargs):
        counts[key] += 1
        return original(*args, **kwargs)

    setattr(cls_or_module, name, counted)


def _worker(rank, world, port, out_dir):
    init_gloo_rank(rank, world, port, 'fsdp2_ag')
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives

    from mmselfsup_vmf.engine.fsdp2_strategy import FSDP2Strategy
    from mmselfsup_vmf.engine.optimizers import distill_optim_wrapper
    counts = dict(all_gather=0, clip_all_reduce=0)
    _count_calls(counts, 'all_gather', _fsdp_collectives.DefaultAllGather, '__call__')
    # all-reduces issued while the gradients are clipped
    clipping = []
    all_reduce, clip = dist.all_reduce, distill_optim_wrapper.clip_grad_per_tensor_

    def counted_all_reduce(*args, **kwargs):
        counts['clip_all_reduce'] += bool(clipping)
        return all_reduce(*args, **kwargs)

    def flagged_clip(*args, **kwargs):
        clipping.append(True)
        try:
            return clip(*args, **kwargs)
        finally:
            clipping.pop()

    dist.all_reduce = counted_all_reduce
    distill_optim_wrapper.clip_grad_per_tensor_ = flagged_clip
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    out = {}
    try:
        for keep, backbone in ((False, 'MaskedViT'), (True, 'MaskedViT'),
                               (False, 'VisionTransformer')):
            cfg = method_cfg('dino', out_dir)  # per-tensor clipping
            if backbone == 'MaskedViT':  # the recipes' backbone: both sizes in one call
                cfg.model.backbone.update(type='MaskedViT', with_mask_token=False)
            strategy = FSDP2Strategy(
                work_dir=out_dir, student_reshard_after_forward=keep, env_kwargs=dict(
                    launcher='pytorch', randomness=dict(seed=0),
                    dist_cfg=dict(backend='gloo')))
            model, wrapper = strategy.prepare(build_model(cfg), optim_wrapper=cfg.optim_wrapper)
            views, masks = batches('dino')[0]
            train_step(model, wrapper, views, masks, rows, 0)  # lazy init outside the count
            counts.update(all_gather=0, clip_all_reduce=0)
            train_step(model, wrapper, views, masks, rows, 1)
            teacher = model.teacher.module
            units = [m for m in model.modules() if fully_shard_state(m) is not None]
            out[keep, backbone] = dict(counts, student_units=sum(
                1 for m in units if m is not model and not _inside(m, teacher)),
                teacher_units=sum(1 for m in units if _inside(m, teacher)),
                grads=sum(1 for p in model.parameters() if p.requires_grad))
        if rank == 0:
            torch.save(out, os.path.join(out_dir, 'counts.pt'))
    finally:
        dist.destroy_process_group()


def fully_shard_state(module):
    from torch.distributed.fsdp import FSDPModule
    return module if isinstance(module, FSDPModule) else None


def _inside(module, tree):
    return any(module is m for m in tree.modules())


@pytest.mark.slow
def test_student_blocks_are_gathered_once_per_step_and_clipping_reduces_once():
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, nprocs=2, join=True, args=(2, _free_port(), out_dir))
        counts = torch.load(os.path.join(out_dir, 'counts.pt'))
    kept, resharded = counts[False, 'MaskedViT'], counts[True, 'MaskedViT']
    per_size = counts[False, 'VisionTransformer']
    print('all-gathers per step: student kept gathered', kept['all_gather'],
          '| resharded after each forward', resharded['all_gather'],
          '| kept, one backbone call per crop size', per_size['all_gather'])
    student, teacher = kept['student_units'], kept['teacher_units']
    assert (student, teacher) == (4, 4), kept  # 2 blocks, the backbone's rest, the head
    # each unit once: the student's in its forward (kept for the backward), the teacher's
    assert kept['all_gather'] == teacher + student, kept
    # resharded: the student's units once more for their backward
    assert resharded['all_gather'] == teacher + 2 * student, resharded
    # one call per crop size: the blocks are gathered again for the other call's backward
    assert per_size['all_gather'] > kept['all_gather'], per_size
    assert kept['clip_all_reduce'] == resharded['clip_all_reduce'] == 1, counts
