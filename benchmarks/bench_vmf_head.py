"""Cost of DINO-vMF over plain DINO: head + loss, forward + backward, as a ratio in one run.

    python benchmarks/bench_vmf_head.py [--batch 64] [--num-local 10] [--num-prototypes 65536]
        [--dim 256] [--in-channels 384] [--threads 2] [--repeats 10] [--device cpu]

One training step of the projection head and the loss, without the backbone:

* student: ``DINOHead`` on batch x (2 + num_local) backbone features, with gradients;
* teacher: the EMA head (a copy) on the batch x 2 global features, no gradients;
* one head call per view, as ``DINO.distillation_loss`` does;
* plain DINO: ``DINOLoss(vmf=False, centering='logit')`` (no prototype norms needed);
* DINO-vMF: ``DINOLoss(vmf=True, centering='probability')`` with the student's and the
  teacher's prototype norms (the student's are differentiable);
* then ``loss.backward()`` into the student head.

Both variants use unnormalised prototypes (``norm_last_layer=False``, the DINO ViT-S and
DINO-vMF setting) and the same weights and inputs. Rounds are interleaved so background load
hits both alike; medians, minima and their ratios (target <= 1.10) are printed.
"""
import argparse
import copy
import statistics
import time

import torch

from mmselfsup_vmf.models.heads import DINOHead
from mmselfsup_vmf.models.losses import DINOLoss


def make_step(student: DINOHead, teacher: DINOHead, loss_fn: DINOLoss, vmf: bool,
              student_feats, teacher_feats, teacher_temp: float = 0.04):
    def step():
        student.zero_grad(set_to_none=True)
        with torch.no_grad():
            teacher_scores = [teacher(x) for x in teacher_feats]
            teacher_norms = teacher.prototype_norms() if vmf else None
        student_scores = [student(x) for x in student_feats]
        student_norms = student.prototype_norms() if vmf else None
        loss = loss_fn(student_scores, teacher_scores, teacher_temp, student_norms=student_norms,
                       teacher_norms=teacher_norms)['loss_dino']
        loss.backward()
        return loss
    return step


def time_steps(steps, repeats: int, warmup: int = 2):
    """Per step: median wall time, minimum wall time and median process CPU time (s).

    The rounds are interleaved. On a shared machine the wall time includes waiting for a
    core and the CPU time includes OpenMP threads spinning while a sibling thread is
    descheduled; the minimum over rounds is the least disturbed measurement.
    """
    for step in steps:
        for _ in range(warmup):
            step()
    wall = [[] for _ in steps]
    cpu = [[] for _ in steps]
    for _ in range(repeats):
        for i, step in enumerate(steps):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[i].append(time.perf_counter() - start_wall)
            cpu[i].append(time.process_time() - start_cpu)
    return [dict(median=statistics.median(w), min=min(w), cpu=statistics.median(c))
            for w, c in zip(wall, cpu)]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, default=64, help='images per step')
    parser.add_argument('--num-global', type=int, default=2)
    parser.add_argument('--num-local', type=int, default=10)
    parser.add_argument('--num-prototypes', type=int, default=65536)
    parser.add_argument('--dim', type=int, default=256, help='bottleneck dimension p')
    parser.add_argument('--in-channels', type=int, default=384, help='backbone width (ViT-S)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    student = DINOHead(args.in_channels, bottleneck_channels=args.dim,
                       num_prototypes=args.num_prototypes, norm_last_layer=False).to(device)
    with torch.no_grad():  # spread the prototype norms as after some training
        g = student.last_layer.parametrizations.weight.original0
        g.copy_(torch.rand_like(g) * 3 + 0.1)
    teacher = copy.deepcopy(student).requires_grad_(False)
    num_views = args.num_global + args.num_local
    feats = [torch.randn(args.batch, args.in_channels, device=device) for _ in range(num_views)]
    plain = DINOLoss(args.num_prototypes, centering='logit', vmf=False).to(device)
    vmf = DINOLoss(args.num_prototypes, centering='probability', vmf=True, dim=args.dim).to(device)
    steps = [make_step(student, teacher, plain, False, feats, feats[:args.num_global]),
             make_step(student, teacher, vmf, True, feats, feats[:args.num_global])]
    plain_t, vmf_t = time_steps(steps, args.repeats)
    print(f'head + loss, forward + backward: batch {args.batch} x ({args.num_global} + '
          f'{args.num_local}) crops, K={args.num_prototypes}, p={args.dim}, '
          f'in={args.in_channels}, device={device}, threads={torch.get_num_threads()}, '
          f'{args.repeats} interleaved rounds')
    ratios = {}
    for key, label in (('median', 'median wall'), ('min', 'min wall'), ('cpu', 'median CPU')):
        ratios[key] = vmf_t[key] / plain_t[key]
        print(f'{label:>11}: plain DINO {1e3 * plain_t[key]:9.1f} ms   DINO-vMF '
              f'{1e3 * vmf_t[key]:9.1f} ms   ratio vMF/DINO {ratios[key]:5.3f}')
    print('target: ratio <= 1.10')
    return dict(plain=plain_t, vmf=vmf_t, ratios=ratios)


if __name__ == '__main__':
    main()
