"""SimDINO's expansion/alignment balance: official recipes against the small-scale study.

    python benchmarks/bench_simdino_balance.py            # the table and the calibrated n
    python benchmarks/bench_simdino_balance.py --json out.json

The coding-rate term's scale α = d/(n·eps) and weight γ = 1/n + 1/d use the global batch n
and the head width d, while each GPU takes the covariance of its own m = n/N rows. The
balance between the two terms is measured here as

    ρ = ‖∂loss_expa/∂S_glob‖ / ‖∂loss_comp/∂S_glob‖

the gradient norms of the two loss terms with respect to the student's global-view
features (Frobenius, one rank's rows; DDP's averaging scales both terms alike), on a
synthetic geometry that depends on no recipe: per image a direction x_b uniform on the unit
sphere of R^d; every view (student and teacher) normalise(x_b + σ·ξ/√d), ξ ~ N(0, I_d), so
that two views of an image have cosine ≈ 1/(1 + σ²) (σ = 1: 0.5, the alignment at the start
of training). Gradients come from ``SimDINOLoss`` itself in float64; an official rank is
emulated by passing its global n as ``rate_batch`` with its local m rows.

The rule (docs/simdino.md#small-batch-balance): a study recipe keeps its batch, width and
views and takes as ``rate_batch`` the n (searched on a grid of multiples of 16) whose ρ on
the reference geometry (σ = 1, mean over seeds) is closest, in log ratio, to the ρ of the
official recipe it stands for (SimDINO: v1 ViT-B, 8 × 64; SimDINOv2: v2, 8 × 128). Other
geometries (σ, a power-law spectrum of x) are printed as a check.
"""
import argparse
import datetime
import json
import math
import platform
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

# (views V, global views G, rows per rank m, ranks N, head width d): the recipes' geometry
OFFICIAL = {
    'SimDINO v1 ViT-B (8 x 64, d 256, 2+10 crops)': dict(V=12, G=2, m=64, N=8, d=256),
    'SimDINOv2 (8 x 128, d 256, 2+10 crops)': dict(V=12, G=2, m=128, N=8, d=256),
}
STUDY = {  # configs/benchmarks/small_scale/simdino{,v2}.py: 1 process, 64 images, d 64
    'simdino': dict(V=6, G=2, m=64, N=1, d=64, target='SimDINO v1 ViT-B (8 x 64, d 256, '
                                                          '2+10 crops)'),
    'simdinov2': dict(V=6, G=2, m=64, N=1, d=64, target='SimDINOv2 (8 x 128, d 256, '
                                                          '2+10 crops)'),
}
EPS = 0.05
TOLERANCE = 0.2


def views(V: int, G: int, m: int, d: int, sigma: float, seed: int, decay: float = 0.0):
    """(student (V, m, d), teacher (G, m, d)) unit features of the reference geometry;
    ``decay`` > 0 gives x a power-law spectrum (variance of coordinate i ∝ i^-decay)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** (-decay / 2)
    x = F.normalize(torch.randn(m, d, generator=gen, dtype=torch.float64) * scale, dim=-1)

    def view():
        return F.normalize(x + sigma * torch.randn(m, d, generator=gen, dtype=torch.float64)
                           / math.sqrt(d), dim=-1)
    student = torch.stack([view() for _ in range(V)])
    teacher = torch.stack([view() for _ in range(G)])
    return student, teacher


def balance(V: int, G: int, m: int, N: int, d: int, rate_batch: Optional[int] = None,
            sigma: float = 1.0, decay: float = 0.0, seeds: int = 4, eps: float = EPS) -> Dict:
    """ρ (mean over seeds) and the mean alignment of one recipe; ``rate_batch`` None = the
    official global batch N·m."""
    from mmselfsup_vmf.models.losses.simdino_loss import simdino_loss_terms
    n = N * m if rate_batch is None else rate_batch
    ratios, comps = [], []
    for seed in range(seeds):
        student, teacher = views(V, G, m, d, sigma, seed, decay)
        student.requires_grad_(True)
        terms = simdino_loss_terms(student, teacher, eps=eps, expa_type='mean', num_global=G,
                                   rate_batch=n)
        grad_expa, = torch.autograd.grad(terms['loss_expa'], student, retain_graph=True)
        grad_comp, = torch.autograd.grad(terms['loss_comp'], student)
        ratios.append(float(grad_expa[:G].norm() / grad_comp[:G].norm()))
        comps.append(float(terms['comp']))
    return dict(ratio=sum(ratios) / seeds, comp=sum(comps) / seeds, n=n,
                alpha=d / (n * eps), gamma=1 / n + 1 / d)


def calibrate(study: Dict, target_ratio: float, grid: List[int], **geometry) -> Dict:
    """The grid n whose ρ is closest to ``target_ratio`` in |log ρ/target|."""
    shape = {k: study[k] for k in ('V', 'G', 'm', 'N', 'd')}
    rows = [balance(**shape, rate_batch=n, **geometry) for n in grid]
    return min(rows, key=lambda r: abs(math.log(r['ratio'] / target_ratio)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--seeds', type=int, default=4)
    p.add_argument('--grid', type=int, nargs='+', default=list(range(64, 1025, 16)),
                   help='candidate rate_batch values')
    p.add_argument('--json', help='also write the figures to this file')
    return p.parse_args(argv)


def main(argv=None) -> Dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    import mmselfsup_vmf  # noqa: F401
    out = dict(command='python benchmarks/bench_simdino_balance.py ' + ' '.join(
        sys.argv[1:] if argv is None else argv), date=datetime.date.today().isoformat(),
        machine=platform.machine(), torch=torch.__version__,
        reference=dict(sigma=1.0, decay=0.0, eps=EPS, seeds=args.seeds), official={},
               study={}, checks=[])
    print(f'reference geometry: sigma 1 (view cosine ~0.5), isotropic, eps {EPS}, '
          f'{args.seeds} seeds, float64')
    print(f'{"recipe":48s} {"n":>5s} {"alpha":>6s} {"gamma":>7s} {"rho":>6s}')
    for name, shape in OFFICIAL.items():
        row = balance(**shape, seeds=args.seeds)
        out['official'][name] = row
        print(f'{name:48s} {row["n"]:5d} {row["alpha"]:6.2f} {row["gamma"]:7.4f} '
              f'{row["ratio"]:6.2f}')
    for method, study in STUDY.items():
        shape = {k: study[k] for k in ('V', 'G', 'm', 'N', 'd')}
        untranslated = balance(**shape, seeds=args.seeds)
        target = out['official'][study['target']]['ratio']
        chosen = calibrate(study, target, args.grid, seeds=args.seeds)
        off = chosen['ratio'] / target - 1
        out['study'][method] = dict(untranslated=untranslated, balanced=chosen,
                                    target=study['target'], target_ratio=target,
                                    relative_difference=off)
        for label, row in (('untranslated', untranslated), ('rate_batch', chosen)):
            print(f'{"study " + method + " (" + label + ")":48s} {row["n"]:5d} '
                  f'{row["alpha"]:6.2f} {row["gamma"]:7.4f} {row["ratio"]:6.2f}')
        verdict = 'within' if abs(off) <= TOLERANCE else 'NOT within'
        print(f'  -> {method}: rate_batch = {chosen["n"]}, rho {off:+.1%} from its official '
              f'target ({verdict} {TOLERANCE:.0%})')
    print('check on other geometries (rho; official targets vs the calibrated study):')
    for sigma, decay in ((0.5, 0.0), (1.5, 0.0), (1.0, 1.0), (1.0, 2.0)):
        geometry = dict(sigma=sigma, decay=decay, seeds=args.seeds)
        row = dict(sigma=sigma, decay=decay)
        for method, study in STUDY.items():
            shape = {k: study[k] for k in ('V', 'G', 'm', 'N', 'd')}
            target = balance(**OFFICIAL[study['target']], **geometry)['ratio']
            got = balance(**shape, rate_batch=out['study'][method]['balanced']['n'],
                          **geometry)['ratio']
            row[method] = dict(target=target, study=got)
        out['checks'].append(row)
        print(f'  sigma {sigma} decay {decay}: ' + '; '.join(
            f'{m} {row[m]["study"]:.2f} vs {row[m]["target"]:.2f} '
            f'({row[m]["study"] / row[m]["target"] - 1:+.0%})' for m in STUDY))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == '__main__':
    main()
