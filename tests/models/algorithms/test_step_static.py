"""A training step of every method waits for nothing on the host and keeps its shapes.

* Host reads: every ``aten._local_scalar_dense`` (``.item()``, ``int(t)``), data-dependent
  op (``nonzero``, ``unique``, boolean indexing) and tensor made from Python data
  (``lift_fresh``: a blocking host-to-device copy on an accelerator) is counted in the
  forward, the loss, the backward, the clipping and the optimiser step of each method's
  demo model, with the value checks configured as on an accelerator. The data preprocessor
  is counted apart: given the loader's masks it reads nothing either. Not counted: reads of
  the optimiser's ``step`` counters (torch keeps them on the host) and reads after the
  optimiser step is queued (the logged norm).
* Compilation: with ``model.compile`` and a backend that counts dynamo's graphs, ten steps
  whose masks cover a different number of patches each compile no graph after the first.
"""
import copy
import os.path as osp
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mmselfsup_vmf.models.losses import numerics

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                            'engine'))
from test_amp_fp16_cpu import METHODS, batch, build_model, build_wrapper, demo_cfg  # noqa: E402

MASKED = ('ibot', 'ibot_vmf', 'simdinov2')


class CountHostReads(TorchDispatchMode):
    def __init__(self, host_tensors=()):
        super().__init__()
        self.host_ids = {id(t) for t in host_tensors}
        self.reads, self.closed = [], False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        bool_index = name.startswith('aten::index') and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for i in a)
        read = (bool_index or func is torch.ops.aten._local_scalar_dense.default
                or any(op in name for op in ('unique', 'nonzero', 'masked_select',
                                             'lift_fresh')))
        if read and not self.closed and not (args and id(args[0]) in self.host_ids):
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


def optimiser_step_counters(optimizer):
    return [s['step'] for s in optimizer.state.values()
            if isinstance(s.get('step'), torch.Tensor)]


def counted_step(model, wrapper, data):
    """mmengine's BaseModel.train_step after the data preprocessor, under the counter."""
    data = model.data_preprocessor(data, True)
    counter = CountHostReads(optimiser_step_counters(wrapper.optimizer))
    handle = wrapper.optimizer.register_step_post_hook(
        lambda *args: setattr(counter, 'closed', True))
    with counter:
        with wrapper.optim_context(model):
            losses = model._run_forward(data, mode='loss')
        loss, _ = model.parse_losses(losses)
        wrapper.update_params(loss)
    handle.remove()
    assert counter.closed, 'the optimiser did not step'
    return counter.reads


@pytest.mark.parametrize('precision', ['fp32', 'bf16'])
@pytest.mark.parametrize('method', METHODS)
def test_a_train_step_reads_nothing_on_the_host(method, precision, monkeypatch):
    monkeypatch.setattr(numerics, 'HOST_CHECK_DEVICES', set())
    cfg = demo_cfg(method)
    model = build_model(cfg)
    wrapper = build_wrapper(cfg, model, **({} if precision == 'fp32' else
                                           dict(dtype='bfloat16')))
    model.train_step(copy.deepcopy(batch()), wrapper)  # the optimiser state exists now
    model.set_train_progress(epoch=1, iteration=1, max_iters=100)
    assert counted_step(model, wrapper, copy.deepcopy(batch(seed=1))) == []
    # the EMA step counter stays the device buffer's value
    assert int(model.teacher.steps) == model.teacher.host_steps() == 2


@pytest.mark.parametrize('method', MASKED)
def test_the_data_preprocessor_reads_nothing_when_the_masks_come_from_the_loader(method):
    """The masks ``masked_collate`` drew (bool, in the batch) are copied and attached, as
    they are, with no host read."""
    import numpy as np

    from mmselfsup_vmf.models.utils.masking import global_view_masks
    model = build_model(demo_cfg(method))
    pre = model.data_preprocessor
    data = batch()
    masks = global_view_masks(8, (4, 4), 2, pre.mask_mode, np.random.default_rng(0),
                              **pre.mask_cfg)
    data.update(masks=torch.from_numpy(masks), mask_law=pre.law)
    counter = CountHostReads()
    with counter:
        out = pre(data, True)
    assert counter.reads == []
    assert torch.equal(torch.stack([s.mask for s in out['data_samples']]),
                       torch.from_numpy(masks))


def test_the_counter_sees_each_kind_of_host_read():
    x = torch.ones(3)
    with CountHostReads() as counter:
        x.sum().item(), x[x > 0], torch.nonzero(x), x.new_tensor(2.0)
    assert len(counter.reads) == 4, counter.reads


class CountingBackend:
    """A torch.compile backend that runs dynamo's graph as is and counts the graphs (on the
    class: the model config is deep-copied when the model is built)."""

    graphs = 0

    def __call__(self, gm, example_inputs):
        CountingBackend.graphs += 1
        return gm.forward


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_ten_steps_with_changing_masks_compile_once(method):
    torch._dynamo.reset()
    CountingBackend.graphs = 0
    cfg = demo_cfg(method)
    cfg.model.compile = dict(backend=CountingBackend())
    model = build_model(cfg)
    wrapper = build_wrapper(cfg, model)
    graphs, masked = [], []
    for step in range(10):
        model.set_train_progress(epoch=1, iteration=step, max_iters=100)
        data = copy.deepcopy(batch(seed=step))
        if method in MASKED:
            views = model.data_preprocessor(copy.deepcopy(data), True)['inputs']
            masked.append(int(model.data_preprocessor.global_view_masks(views).sum()))
        model.train_step(data, wrapper)
        graphs.append(CountingBackend.graphs)
    assert graphs[0] > 0
    assert graphs[1:] == [graphs[0]] * 9, graphs
    if method in MASKED:
        assert len(set(masked)) >= 5, masked  # the masked-token counts did change


def test_simdinov2_masked_rows_switch():
    cfg = demo_cfg('simdinov2')
    cfg.model.masked_rows = 'rows'
    with pytest.raises(ValueError, match="model.masked_rows must be 'law', 'all' or a positive"):
        build_model(cfg)
    cfg.model.masked_rows = 1  # fewer rows than masked patches: named on the CPU
    model = build_model(cfg)
    wrapper = build_wrapper(cfg, model)
    with pytest.raises(RuntimeError, match=r"exceed model.masked_rows=1 .*masked_rows='all'"):
        model.train_step(copy.deepcopy(batch()), wrapper)
