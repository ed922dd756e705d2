"""Cost of the SimDINO coding-rate term, alone and relative to one ViT-S/16 training step.

    python benchmarks/bench_coding_rate.py                 # real setting: 64 × (2 + 10 crops)
    python benchmarks/bench_coding_rate.py --batch 16 --local-crops 4 --threads 2

Part 1 times R = ½ logdet(I + α ZᵀZ) for 2 global views (one batched call), forward +
backward, at d = 256 and n ∈ {64, 512}: Cholesky in the form ``coding_rate`` picks
(n×n Gram when n < d), Cholesky on the d×d covariance (the official code, and the only
form usable with reduce_cov), and ``torch.linalg.slogdet`` on the d×d matrix.
Part 2 times one SimDINO step on this machine: teacher forward of the 2 global crops (no
grad) + student forward/backward of all crops (mmpretrain ViT deit-small, patch 16, and
the 3-layer MLP head 384→2048→2048→256 + L2 norm) + SimDINOLoss. It then prints the rate
term's share of the step (target ≤ 2 %). All figures come from the same run.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch', type=int, default=64, help='images per GPU (m)')
    parser.add_argument('--local-crops', type=int, default=10)
    parser.add_argument('--dim', type=int, default=256, help='head output size d')
    parser.add_argument('--eps', type=float, default=0.05)
    parser.add_argument('--rate-repeats', type=int, default=20)
    parser.add_argument('--steps', type=int, default=1,
                        help='timed ViT steps (median), after one warm-up step at batch 2')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--skip-step', action='store_true', help='only part 1')
    return parser.parse_args()


def median_time(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def slogdet_rate(z, eps):
    d = z.shape[-1]
    alpha = d / (z.shape[-2] * eps)
    # One view at a time: in this torch 2.14 CPU build the backward of a *batched*
    # (2, 256, 256) slogdet fails with 2 threads (MKL "Parameter 6 ... SLASWP", then
    # "Pivots given to lu_solve must all be >= 1").
    return torch.stack([
        0.5 * torch.linalg.slogdet(torch.eye(d) + alpha * view.mT @ view)[1] for view in z])


def rate_timings(n, d, eps, repeats):
    from mmselfsup_vmf.models.losses import coding_rate
    z = F.normalize(torch.randn(2, n, d), dim=-1).requires_grad_(True)
    variants = {
        'cholesky (auto form)': lambda: coding_rate(z, eps),
        'cholesky d×d': lambda: coding_rate(z, eps, reduce_cov=True),  # 1 rank: d×d form
        'slogdet d×d': lambda: slogdet_rate(z, eps),  # LU, per view
    }
    results = {}
    for name, fn in variants.items():
        def fwd_bwd():
            z.grad = None
            fn().sum().backward()
        results[name] = median_time(fwd_bwd, repeats)
    return results


class MLPHead(nn.Module):
    """SimDINO projector: Linear→GELU→Linear→GELU→Linear, then L2 normalisation."""

    def __init__(self, in_dim=384, hidden=2048, out_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, out_dim))

    def forward(self, x):
        return F.normalize(self.mlp(x), dim=-1, eps=1e-6)


def build_net():
    from mmpretrain.models import VisionTransformer
    backbone = VisionTransformer(arch='deit-small', img_size=224, patch_size=16,
                                 drop_path_rate=0.1)
    return nn.ModuleDict(dict(backbone=backbone, head=MLPHead()))


def embed(net, crops):
    """Backbone + head on crops grouped by resolution (as DINO's MultiCropWrapper)."""
    outs = []
    for group in crops:
        views = group.shape[0]
        cls = net['backbone'](group.flatten(0, 1))[-1]
        outs.extend(net['head'](cls).unflatten(0, (views, -1)).unbind(0))
    return outs


def step_time(args):
    from mmselfsup_vmf.models.losses import SimDINOLoss
    torch.manual_seed(0)
    student, teacher = build_net(), build_net()
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    loss_fn = SimDINOLoss(eps=args.eps)

    def one_step(m):
        global_crops = torch.randn(2, m, 3, 224, 224)
        local_crops = torch.randn(args.local_crops, m, 3, 96, 96)
        start = time.perf_counter()
        with torch.no_grad():
            teacher_out = embed(teacher, [global_crops])
        crops = [global_crops] + ([local_crops] if args.local_crops else [])
        student_out = embed(student, crops)
        losses = loss_fn(student_out, teacher_out)
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        student.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    one_step(2)  # warm-up at a small batch (allocator, kernels) to keep the run short
    return statistics.median(one_step(args.batch) for _ in range(args.steps))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    import mmselfsup_vmf  # noqa: F401  (registers modules)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, CPU float32')
    print(f'Part 1: coding rate of 2 views, d={args.dim}, eps={args.eps}, forward+backward, '
          f'median of {args.rate_repeats}')
    sizes = sorted({64, 512, args.batch})
    rate = {}
    for n in sizes:
        rate[n] = rate_timings(n, args.dim, args.eps, args.rate_repeats)
        chol = rate[n]['cholesky d×d']
        line = ', '.join(f'{k} {v * 1e3:7.2f} ms' for k, v in rate[n].items())
        print(f'  n={n:4d}: {line}  (slogdet/cholesky d×d = '
              f'{rate[n]["slogdet d×d"] / chol:.2f}x)')
    if args.skip_step:
        return
    print(f'Part 2: one SimDINO step, ViT-S/16 + MLP head, batch {args.batch} × '
          f'(2 global 224 px + {args.local_crops} local 96 px), teacher fwd + student '
          f'fwd/bwd, median of {args.steps} (warm-up at batch 2)')
    step = step_time(args)
    print(f'  step: {step:.2f} s')
    # re-time the rate term after the step (the machine load may have changed) and
    # use the larger of the two medians
    after = rate_timings(args.batch, args.dim, args.eps, args.rate_repeats)
    for name in ('cholesky (auto form)', 'cholesky d×d', 'slogdet d×d'):
        cost = max(rate[args.batch][name], after[name])
        print(f'  rate term ({name}, n={args.batch}): {cost * 1e3:.2f} ms '
              f'= {100 * cost / step:.4f} % of the step (target <= 2 %)')


if __name__ == '__main__':
    main()
