"""fp16 (autocast + dynamic loss scaling) vs fp32 training steps on the CPU.

For each method, the demo config's model (``configs/<method>/demo_fashion-mnist.py``) and its
optimiser settings, one ``train_step`` (forward, backward, scaler, clipping, AdamW step, EMA)
on a fixed batch of 2 x 28 px + 2 x 14 px views, timed fp32 and fp16 alternately (interleaved
rounds, median), one torch thread. Prints seconds per step and the fp16 / fp32 ratio with the
load average: CPU fp16 proves the numerics (tests/engine/test_amp_fp16_cpu.py); it is not meant
to be fast.

Usage: python benchmarks/bench_fp16_cpu.py [--methods dino simdino] [--batch 8] [--rounds 7]
"""
import argparse
import copy
import os
import os.path as osp
import statistics
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)


def build(method: str, amp: bool):
    import torch
    from mmengine.config import Config
    from mmpretrain.registry import MODELS, OPTIM_WRAPPERS

    import mmselfsup_vmf  # noqa: F401
    cfg = Config.fromfile(osp.join(ROOT, 'configs', method, 'demo_fashion-mnist.py'))
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    model.train()
    model.set_train_progress(epoch=1, iteration=0, max_iters=100)
    wrapper = copy.deepcopy(cfg.optim_wrapper.to_dict())
    opt = wrapper.pop('optimizer')
    opt.pop('type')
    for key in ('paramwise_cfg', 'constructor'):
        wrapper.pop(key, None)
    wrapper.update(optimizer=torch.optim.AdamW(model.parameters(), **opt),
                   type='AmpDistillOptimWrapper' if amp else 'DistillOptimWrapper')
    if amp:
        wrapper.update(dtype='float16', loss_scale='dynamic')
    return model, OPTIM_WRAPPERS.build(wrapper)


def batch(size: int):
    import torch
    from mmpretrain.structures import DataSample
    gen = torch.Generator().manual_seed(0)
    views = [torch.rand(size, 3, s, s, generator=gen) * 255 for s in (28, 28, 14, 14)]
    return dict(inputs=views, data_samples=[DataSample() for _ in range(size)])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--methods', nargs='+', default=['dino', 'simdino'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--rounds', type=int, default=7)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    print(f'load average at start: {os.getloadavg()[0]:.2f}')
    print('| method | fp32 s / step | fp16 s / step | fp16 / fp32 |')
    print('|---|---|---|---|')
    for method in args.methods:
        runs = {amp: build(method, amp) for amp in (False, True)}
        data = batch(args.batch)
        times = {False: [], True: []}
        for round_ in range(args.rounds + 1):  # round 0 warms up (and settles the scaler)
            for amp, (model, wrapper) in runs.items():
                start = time.perf_counter()
                model.train_step(copy.deepcopy(data), wrapper)
                if round_:
                    times[amp].append(time.perf_counter() - start)
        t32, t16 = statistics.median(times[False]), statistics.median(times[True])
        print(f'| {method} | {t32:.3f} | {t16:.3f} | {t16 / t32:.2f} |')
    print(f'load average at end: {os.getloadavg()[0]:.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
