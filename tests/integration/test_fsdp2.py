"""FSDP2Strategy: 2 gloo processes with half of the batch each train like 1 unsharded process
on the whole batch (float64), and a checkpoint saved under FSDP is a plain mmengine checkpoint
that resumes exactly.

Methods: DINO (the centre's all-reduce, per-tensor clipping, the prototype layer's weight
norm) and SimDINOv2 (the coding rate's all-reduce, masked patch tokens, per-module clipping,
layer-wise lr decay). Student and teacher weights, losses and the centre are compared after
each of a few steps with the EMA on its cosine schedule."""
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine import dist as mm_dist
from mmengine.registry import DefaultScope
from mmengine.runner.checkpoint import _load_checkpoint
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from tiny_dino_cfg import tiny_dino_cfg, tiny_method_cfg

METHODS = ('dino', 'simdinov2')
RESUMED = ('simdinov2',)  # resuming is method-independent; one keeps the test short
BATCH, STEPS, MAX_ITERS = 4, 3, 10
# AdamW divides by sqrt(v) + eps: a gradient entry near eps turns the float64 rounding of a
# different summation order (reduce-scatter vs one batch) into ~1e-9 of weight, far below a
# step (lr ~ 1e-3)
WEIGHT_TOL = dict(rtol=1e-6, atol=1e-7)
# DINO's centre is all-reduced in float32 (centering.global_mean): its rounding reaches the
# next losses at ~1e-9 relative
LOSS_TOL = dict(rtol=1e-7, atol=1e-9)


def method_cfg(method, work_dir):
    if method == 'dino':
        cfg = tiny_dino_cfg(work_dir, drop_path=0.0)  # drop-path draws differ per rank
    else:
        cfg = tiny_method_cfg(method, work_dir)
        # the coding rate of the global batch (all-reduced ZᵀZ); the official default
        # reduce_cov=False takes each rank's own rate, which depends on the split by design
        cfg.model.loss.reduce_cov = True
        cfg.model.masked_rows = 'all'  # the test's masks do not follow the preprocessor's law
        # the recipe's clipping (backbone and head norms apart, over the shards), with a
        # max_norm far below the gradient norms so that both are clipped
        cfg.optim_wrapper.clip_grad = dict(type='per_module', max_norm=1e-3)
    return cfg


def build_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model).double()
    model.init_weights()
    return model


def batches(method):
    """Per step: views (2 x 32 px + 2 x 16 px for DINO, 28/14 px for SimDINOv2) and the
    (B, 2, 4, 4) masks of the global crops, fixed seed."""
    big, small = (32, 16) if method == 'dino' else (28, 14)
    gen = torch.Generator().manual_seed(1)
    return [([torch.randn(BATCH, 3, big, big, generator=gen, dtype=torch.float64)
              for _ in range(2)] +
             [torch.randn(BATCH, 3, small, small, generator=gen, dtype=torch.float64)
              for _ in range(2)],
             torch.rand(BATCH, 2, 4, 4, generator=gen) < 0.4)
            for _ in range(STEPS)]


def train_step(model, optim_wrapper, views, masks, rows, step):
    """mmengine's BaseModel.train_step after the data preprocessor (bypassed: its random
    masks would differ between 1 and 2 processes)."""
    samples = []
    for i in range(BATCH)[rows]:
        sample = DataSample()
        sample.set_field(masks[i], 'mask', field_type='metainfo')
        samples.append(sample)
    model.set_train_progress(0, step, MAX_ITERS)
    with optim_wrapper.optim_context(model):
        losses = model(inputs=[v[rows] for v in views], data_samples=samples, mode='loss')
    loss, _ = model.parse_losses(losses)
    optim_wrapper.update_params(loss)
    return loss.detach()


def cloned(state_dict_fn):
    """A copy of the state dict: its buffers alias the live ones on a CPU."""
    return lambda: {k: v.clone() for k, v in state_dict_fn().items()}


def run_steps(method, model, optim_wrapper, rows, state_dict_fn, steps):
    out = dict(losses=[], weights=[], centres=[])
    for step, (views, masks) in enumerate(batches(method)[:steps]):
        out['losses'].append(train_step(model, optim_wrapper, views, masks, rows, step))
        out['weights'].append(cloned(state_dict_fn)())
        centre = getattr(model.loss_module, 'center', None)
        out['centres'].append(None if centre is None else centre.center.clone())
    return out


def _free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _strategy(work_dir):
    from mmselfsup_vmf.engine.fsdp2_strategy import FSDP2Strategy
    return FSDP2Strategy(work_dir=work_dir, env_kwargs=dict(
        launcher='pytorch', randomness=dict(seed=0), dist_cfg=dict(backend='gloo')))


def init_gloo_rank(rank, world, port, scope):
    """One thread, mmengine's environment variables, a gloo group, mmpretrain's scope."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank,
                            world_size=world)
    DefaultScope.get_instance(f'{scope}_{rank}', scope_name='mmpretrain')


def _worker(rank, world, port, out_dir):
    init_gloo_rank(rank, world, port, 'fsdp2')
    rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    try:
        out = {}
        for method in METHODS:
            cfg = method_cfg(method, out_dir)
            strategy = _strategy(out_dir)
            model, optim_wrapper = strategy.prepare(build_model(cfg),
                                                    optim_wrapper=cfg.optim_wrapper)
            out[method] = run_steps(method, model, optim_wrapper, rows,
                                    strategy.model_state_dict, STEPS - 1)
            ckpt = os.path.join(out_dir, f'{method}.pth')
            # the runner's callback runs the before_save_checkpoint hooks; some gather
            # from every rank (RandomStateHook), so every rank must run it
            strategy.save_checkpoint(
                ckpt, extra_ckpt=dict(meta=dict(iter=STEPS - 1)),
                callback=lambda c: c.update(ranks=mm_dist.all_gather_object(rank)))
            if method not in RESUMED:
                continue
            # a fresh model and strategy resume the checkpoint and take the last step
            resumed = _strategy(out_dir)
            model2, optim_wrapper2 = resumed.prepare(build_model(cfg, seed=1),
                                                     optim_wrapper=cfg.optim_wrapper)
            resumed.resume(ckpt)
            views, masks = batches(method)[-1]
            out[method]['resumed_loss'] = train_step(model2, optim_wrapper2, views, masks,
                                                     rows, STEPS - 1)
            out[method]['resumed_weights'] = resumed.model_state_dict()
        if rank == 0:
            torch.save(out, os.path.join(out_dir, 'rank0.pt'))
        else:
            torch.save({m: out[m]['losses'] + [out[m].get('resumed_loss')] for m in METHODS},
                       os.path.join(out_dir, 'rank1.pt'))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope='module')
def fsdp_results():
    """One spawn for both methods (the children's imports dominate the cost)."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, nprocs=2, join=True, args=(2, _free_port(), out_dir))
        rank0 = torch.load(os.path.join(out_dir, 'rank0.pt'))
        rank1 = torch.load(os.path.join(out_dir, 'rank1.pt'))
        ckpts = {m: _load_checkpoint(os.path.join(out_dir, f'{m}.pth'), map_location='cpu')
                 for m in METHODS}
        yield rank0, rank1, ckpts


def reference(method, work_dir):
    """The same steps on 1 process, unsharded, on the whole batch."""
    DefaultScope.get_instance(f'fsdp2_ref_{method}', scope_name='mmpretrain')
    from mmengine.optim import build_optim_wrapper
    cfg = method_cfg(method, work_dir)
    model = build_model(cfg)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, run_steps(method, model, optim_wrapper, slice(0, BATCH),
                            model.state_dict, STEPS)


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_two_fsdp_ranks_equal_one_process(method, fsdp_results, tmp_path):
    rank0, rank1, ckpts = fsdp_results
    sharded, losses1 = rank0[method], rank1[method]
    model, ref = reference(method, tmp_path)
    for step in range(STEPS - 1):
        # each rank's loss is over its half; the mean over ranks is the whole batch's loss
        torch.testing.assert_close((sharded['losses'][step] + losses1[step]) / 2,
                                   ref['losses'][step], **LOSS_TOL)
        weights = sharded['weights'][step]
        assert weights.keys() == ref['weights'][step].keys()
        for key, value in ref['weights'][step].items():
            torch.testing.assert_close(weights[key], value, **WEIGHT_TOL,
                                       msg=lambda m, k=key: f'{k}: {m}')
        if ref['centres'][step] is not None:
            # the centre's batch mean is all-reduced in float32 (centering.global_mean)
            torch.testing.assert_close(sharded['centres'][step], ref['centres'][step],
                                       rtol=1e-5, atol=1e-8)
    # the teacher really moved (EMA, not a copy) and differs from the student
    last = ref['weights'][STEPS - 2]
    assert not torch.equal(last['teacher.module.head.mlp.0.weight'], last['head.mlp.0.weight'])
    # the checkpoint is a plain one: the unsharded model loads it strictly, integer-keyed
    # AdamW state as torch writes it
    ckpt = ckpts[method]
    model.load_state_dict(ckpt['state_dict'], strict=True)
    assert all(isinstance(k, int) for k in ckpt['optimizer']['state'])
    assert ckpt['ranks'] == [0, 1]
    if method not in RESUMED:
        return
    # resumed on fresh shards, the last step equals the uninterrupted 1-process step
    torch.testing.assert_close((sharded['resumed_loss'] + losses1[-1]) / 2, ref['losses'][-1],
                               **LOSS_TOL)
    for key, value in ref['weights'][-1].items():
        torch.testing.assert_close(sharded['resumed_weights'][key], value, **WEIGHT_TOL,
                                   msg=lambda m, k=key: f'{k}: {m}')


def test_without_fsdp2_api_the_strategy_names_the_torch_it_needs(monkeypatch):
    """torch < 2.6 has no public fully_shard: the package still imports, the strategy says why
    it cannot be built (simulated by removing the API from the module)."""
    from mmselfsup_vmf.engine import fsdp2_strategy
    monkeypatch.setattr(fsdp2_strategy, 'fully_shard', None)
    with pytest.raises(ImportError, match=r'needs torch >= 2\.6 .* this is torch '):
        fsdp2_strategy.FSDP2Strategy()
