"""Step-by-step equivalence of this project's training step with the official code.

    python tools/analysis/compare_with_official.py dino /path/to/facebookresearch/dino
    python tools/analysis/compare_with_official.py simdino /path/to/SimDINO/simdino
    python tools/analysis/compare_with_official.py ibot /path/to/bytedance/ibot  # needs timm
    python tools/analysis/compare_with_official.py simdinov2 /path/to/SimDINO/simdinov2

Both implementations start from the same weights (an asserted parameter-name map), see the
same fixed crops and train the shrunk published recipe (tiny ViT, 4 epochs of 3 iterations:
the lr warm-up, the last-layer freeze and the teacher-temperature warm-up end inside the run)
for 12 iterations: ours through mmengine's ``Runner.train()`` with the recipe's schedulers and
hooks, theirs through their ``train_one_epoch``. Per iteration it prints the largest relative
gap of each quantity (loss terms, lr / weight decay / gradient of every parameter at the
optimiser step, teacher momentum and temperature, DINO's centre), then every final student
and teacher weight, and exits 1 naming the first quantity and iteration over its tolerance.
``dino_vmf`` / ``ibot_vmf`` run the DINO-vMF / iBOT-vMF recipes with their vMF switches at
their neutral values (no vMF normaliser, logit centring), which must reduce to DINO / iBOT:
pass the DINO / iBOT checkout. iBOT also gets our masks and compares the patch temperature and
the patch centre. ``simdinov2`` runs the SimDINOv2 ViT-B recipe against the official
``SimSSLMetaArch`` step without FSDP (``equivalence_simdinov2.py``; needs timm, omegaconf,
iopath), with our masks.

``--noise-floor`` runs the official loop against itself with another AdamW implementation
(torch's fused kernel, which SimDINO's own script selects, against the for-loop one) and prints
the gaps that a different order of the same arithmetic produces.
``--self-test`` compares our loop with a perturbed copy of itself (``--perturb``) instead of
the official code, which is how CI checks this tool without the official repositories.
"""
import argparse
import os.path as osp
import sys
from functools import partial

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

from equivalence_ours import TINY, compare_traces, identity_map, run_ours  # noqa: E402

QUANTITIES = ('loss', 'lr', 'wd', 'momentum', 'teacher_temp', 'teacher_patch_temp', 'center',
              'center2', 'grad', 'student', 'teacher')
# Relative tolerances, set from the noise floors in docs/equivalence.md (the official loop
# against itself with fused vs for-loop AdamW): float64 >= 40 x every floor (largest 2.3e-11);
# float32 >= 10 x the largest floor of each quantity (the final weights are dominated by the
# attention key bias, whose exact gradient is 0, so AdamW steps on rounding noise there).
TOLERANCES = {
    True: dict.fromkeys(QUANTITIES + ('iterations',), 1e-9),
    False: dict(loss=1e-5, lr=1e-6, wd=1e-6, momentum=1e-6, teacher_temp=1e-6,
                teacher_patch_temp=1e-6, center=1e-5, center2=1e-5, grad=1e-3, student=0.2,
                teacher=0.2, iterations=0.0),
}
# SimDINOv2's float32 floor is larger (gradients 6.5e-4, losses 3.3e-6): 10 x it
METHOD_TOLERANCES = {('simdinov2', False): dict(loss=1e-4, grad=1e-2)}
NEUTRAL = dict(dino_vmf=dict(vmf=False, centering='logit'),
               ibot_vmf=dict(vmf=False, centering='logit'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('method', choices=['dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino',
                                           'simdinov2'])
    parser.add_argument('official', nargs='?', help='checkout of the official repository '
                        '(facebookresearch/dino; bytedance/ibot; RobinWu218/SimDINO/simdino; '
                        'RobinWu218/SimDINO/simdinov2)')
    parser.add_argument('--float32', action='store_true', help='train in float32')
    parser.add_argument('--tolerance', type=float, help='one relative tolerance for every '
                        'quantity (default: TOLERANCES, per quantity)')
    parser.add_argument('--noise-floor', action='store_true',
                        help='the official loop with fused AdamW against itself with the '
                        'for-loop AdamW')
    parser.add_argument('--official-float32-parts', action='store_true',
                        help='simdinov2: keep the two steps its code runs in float32 (local-crop '
                        'position embedding, patch weights) in float32 in float64 runs')
    parser.add_argument('--self-test', action='store_true',
                        help='our loop against a perturbed copy of itself (no official code)')
    parser.add_argument('--perturb-lr-at', type=int, help='self-test: lr x 1.001 at this '
                        'iteration')
    parser.add_argument('--perturb-center-momentum', type=float,
                        help='self-test: this centre momentum in the copy')
    return parser.parse_args(argv)


def report(per_iteration: dict, failure, tolerance, iterations: int) -> int:
    """Per iteration the largest gap of each quantity, then the maximum over the run."""
    for it, row in sorted(per_iteration.items()):
        label = 'final' if it == iterations else f'iter {it:2d}'
        print(f'{label:>7}: ' + '  '.join(f'{k} {row[k]:.1e}' for k in QUANTITIES if k in row))
    overall = {}
    for row in per_iteration.values():
        for k, v in row.items():
            overall[k] = max(overall.get(k, 0.0), v)
    print('max relative gap over the run: ' + ', '.join(
        f'{k} {overall[k]:.1e}' for k in QUANTITIES if k in overall))
    if failure is not None:
        it, quantity, gap = failure
        where = 'the final weights' if it == iterations else f'iteration {it}'
        limit = tolerance[quantity.split(':')[0]] if isinstance(tolerance, dict) else tolerance
        print(f'FIRST DIFFERENCE: {quantity} at {where}: relative gap {gap:.3e} > '
              f'tolerance {limit:.1e}')
        return 1
    print('all quantities within tolerance')
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    float64 = not args.float32
    tol = args.tolerance if args.tolerance is not None else dict(
        TOLERANCES[float64], **METHOD_TOLERANCES.get((args.method, float64), {}))
    overrides = NEUTRAL.get(args.method)
    if args.self_test:
        perturb = {}
        if args.perturb_lr_at is not None:
            perturb['lr_at'] = args.perturb_lr_at
        if args.perturb_center_momentum is not None:
            perturb['center_momentum'] = args.perturb_center_momentum
        ours = run_ours(args.method, ROOT, float64, loss_overrides=overrides)
        ref = run_ours(args.method, ROOT, float64, perturb=perturb, loss_overrides=overrides)
        name_map = identity_map(ours['initial'])
    else:
        if not args.official:
            raise SystemExit('give the path of the official checkout (or --self-test)')
        official = args.method.replace('_vmf', '')
        if official == 'simdinov2':
            from equivalence_simdinov2 import run_simdinov2
            run_official = partial(run_simdinov2, float32_parts=args.official_float32_parts)
        else:
            from equivalence_official import run_official as run
            run_official = partial(run, method=official)
        ours = run_ours(args.method, ROOT, float64, loss_overrides=overrides)
        ref, name_map = run_official(args.official, ours=ours, tiny=TINY, float64=float64)
        if args.noise_floor:  # the official loop: fused AdamW vs the for-loop one (above)
            other, _ = run_official(args.official, ours=ours, tiny=TINY, float64=float64,
                                    adamw=dict(fused=True))
            ours, name_map = other, identity_map(name_map.values())
    per_iteration, failure = compare_traces(ours, ref, name_map, tol)
    print(f'{args.method}: {len(ours["rows"])} iterations, '
          f'{"float64" if float64 else "float32"}; relative gap = max|ours - ref| / max|ref|')
    return report(per_iteration, failure, tol, len(ours['rows']))


if __name__ == '__main__':
    sys.exit(main())
