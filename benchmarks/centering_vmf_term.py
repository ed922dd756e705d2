"""How much of the vMF term survives the teacher centring (docs/methods.md#centring).

The vMF term adds a per-prototype constant c_k = log C_p(‖w_k‖/τ) − log C_p(1/τ) to the
teacher logits. This script measures, for each centring, the mean total-variation distance
between the centred teacher distributions computed with and without that constant:

* at the first step (centre at its initial value), and
* at steady state, after ``--steps`` EMA updates of each run's own centre on fresh batches.

Prototype directions and features are random unit vectors in R^p; prototype norms are
log-normal around 1 (``--norm-spread``), as in a head with unnormalised prototypes. Uses the
project's own ``prototype_logits`` and centres, float64.

    python benchmarks/centering_vmf_term.py            # K=4096, p=256, tau_t=0.07
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmselfsup_vmf.models.losses import LogitCenter, ProbabilityCenter  # noqa: E402
from mmselfsup_vmf.models.losses.dino_loss import prototype_logits  # noqa: E402


def teacher_batch(gen, prototypes, batch, dim):
    y = torch.nn.functional.normalize(torch.randn(batch, dim, generator=gen,
                                                  dtype=torch.float64), dim=-1)
    return y @ prototypes.T  # scores <w_k, y>


def centred(center, scores, tau, norms, dim):
    """(q, raw probabilities) as PrototypeDistillation computes them."""
    if isinstance(center, LogitCenter):
        logits = prototype_logits(center.center_scores(scores), tau, norms, dim)
        raw = torch.softmax(prototype_logits(scores, tau, norms, dim), -1)
        return torch.softmax(logits, -1), raw
    logits = prototype_logits(scores, tau, norms, dim)
    return torch.softmax(center.center_logits(logits), -1), torch.softmax(logits, -1)


def measure(kind, args):
    gen = torch.Generator().manual_seed(args.seed)
    directions = torch.nn.functional.normalize(
        torch.randn(args.k, args.dim, generator=gen, dtype=torch.float64), dim=-1)
    norms = torch.exp(args.norm_spread * torch.randn(args.k, generator=gen,
                                                     dtype=torch.float64))
    prototypes = directions * norms.unsqueeze(1)
    center_cls = LogitCenter if kind == 'logit' else ProbabilityCenter
    with_term, without = center_cls(args.k).double(), center_cls(args.k).double()
    distances = []
    for step in range(args.steps + 1):
        scores = teacher_batch(gen, prototypes, args.batch, args.dim)
        q_vmf, raw_vmf = centred(with_term, scores, args.tau, norms, args.dim)
        q_plain, raw_plain = centred(without, scores, args.tau, None, args.dim)
        distances.append(0.5 * (q_vmf - q_plain).abs().sum(-1).mean().item())
        with_term.update(scores, raw_vmf)
        without.update(scores, raw_plain)
    return distances[0], sum(distances[-10:]) / 10


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--k', type=int, default=4096)
    p.add_argument('--dim', type=int, default=256)
    p.add_argument('--tau', type=float, default=0.07)
    p.add_argument('--batch', type=int, default=512)
    p.add_argument('--steps', type=int, default=200)
    p.add_argument('--norm-spread', type=float, default=0.5)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f'K={args.k} p={args.dim} tau_t={args.tau} batch={args.batch} '
          f'log-normal norm spread {args.norm_spread}, {args.steps} centre updates (m=0.9)')
    print('| centring | TV(with, without vMF term), first step | at steady state |')
    print('|---|---|---|')
    for kind in ('probability', 'logit'):
        first, steady = measure(kind, args)
        print(f'| {kind} | {first:.3f} | {steady:.3f} |')


if __name__ == '__main__':
    main()
