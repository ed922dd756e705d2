"""Claim verdicts of the small-scale study: differences between two methods over seeds, with
a 95 % t-interval and a two-sided p-value.

Pairing. Runs of the same seed share the data order and augmentations. They share the
initial weights only within a family whose models draw the same random numbers when built
(``PAIRED_FAMILIES``: the prototype methods build the same ViT and head, and the balanced
SimDINO configs differ from the untranslated ones only in the loss, which has no weights).
Across families (SimDINO against DINO: a different head draws a different random stream)
the seeds do not pair the initialisation, so those comparisons use Welch's two-sample t
instead of the paired one.

- paired: d_s = a_s − b_s over the common seeds; mean ± t_{0.975, n−1} · sd/√n;
  t = mean / (sd/√n) with n − 1 degrees of freedom;
- unpaired (Welch): mean(a) − mean(b) ± t_{0.975, ν} · √(s_a²/n_a + s_b²/n_b), ν by
  Welch–Satterthwaite.

Verdict: "higher" / "lower" when the 95 % interval excludes 0, "inconclusive" otherwise
(the interval says which effects the seeds cannot rule out); fewer than 3 seeds per side give
no verdict.
"""
import math
import statistics
from typing import Dict, List, Optional, Sequence

PAIRED_FAMILIES = (frozenset({'dino', 'dino_vmf', 'ibot', 'ibot_vmf'}),
                   frozenset({'simdino', 'simdino_balanced'}),
                   frozenset({'simdinov2', 'simdinov2_balanced'}))
MIN_SEEDS = 3


def paired_at_init(method: str, baseline: str) -> bool:
    return any(method in f and baseline in f for f in PAIRED_FAMILIES)


def _t_quantile(dof: float) -> float:
    from scipy import stats
    return float(stats.t.ppf(0.975, dof))


def _two_sided_p(t: float, dof: float) -> float:
    from scipy import stats
    return float(2 * stats.t.sf(abs(t), dof))


def paired_t(diffs: Sequence[float]) -> Dict:
    """Mean, sd, 95 % interval and p of per-seed differences (n ≥ 2)."""
    n = len(diffs)
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    half = _t_quantile(n - 1) * se
    p = _two_sided_p(mean / se, n - 1) if se > 0 else (0.0 if mean else 1.0)
    return dict(mean=mean, sd=sd, n=n, dof=n - 1, low=mean - half, high=mean + half, p=p)


def mean_interval(values: Sequence[float]) -> Dict:
    """Mean and half-width of its 95 % t-interval, t_{0.975, n−1} · sd/√n (n ≥ 2)."""
    n = len(values)
    half = _t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return dict(mean=statistics.mean(values), half=half, n=n)


def welch_t(a: Sequence[float], b: Sequence[float]) -> Dict:
    """mean(a) − mean(b), its 95 % Welch interval and p (both sides n ≥ 2)."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    mean = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return dict(mean=mean, sd=None, n=min(len(a), len(b)), dof=None, low=mean, high=mean,
                    p=0.0 if mean else 1.0)
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = _t_quantile(dof) * se
    return dict(mean=mean, sd=None, n=min(len(a), len(b)), dof=dof, low=mean - half,
                high=mean + half, p=_two_sided_p(mean / se, dof))


def by_seed(runs: List[dict], method: str, key: str) -> Dict[int, float]:
    """{seed: value} of the runs of ``method``'s group (name = '<method>_s<seed>')."""
    return {r['run_spec']['seed']: r[key] for r in runs
            if r['run_spec']['method'] == method
            and r['run_spec']['name'] == f'{method}_s{r["run_spec"]["seed"]}'}


def compare(runs: List[dict], method: str, baseline: str, key: str) -> Optional[Dict]:
    """The difference method − baseline of ``key``: paired over common seeds within a family,
    Welch otherwise; None when a side has no run. ``paired`` and ``n`` say which."""
    a, b = by_seed(runs, method, key), by_seed(runs, baseline, key)
    if paired_at_init(method, baseline):
        seeds = sorted(set(a) & set(b))
        if not seeds:
            return None
        diffs = [a[s] - b[s] for s in seeds]
        if len(diffs) < 2:
            return dict(mean=diffs[0], sd=None, n=1, paired=True)
        return dict(paired_t(diffs), paired=True)
    if not a or not b:
        return None
    if min(len(a), len(b)) < 2:
        return dict(mean=statistics.mean(a.values()) - statistics.mean(b.values()), sd=None,
                    n=min(len(a), len(b)), paired=False)
    return dict(welch_t(list(a.values()), list(b.values())), paired=False)


def format_p(p: float) -> str:
    return f'p = {p:.2g}' if p >= 0.001 else 'p < 0.001'


def verdict(result: Optional[Dict]) -> str:
    if result is None:
        return 'not run'
    n = result['n']
    if n < MIN_SEEDS or 'low' not in result:
        return f'no verdict ({n} seed{"s" if n != 1 else ""})'
    interval = f'95 % CI [{result["low"]:+.2f}, {result["high"]:+.2f}], {format_p(result["p"])}'
    if result['low'] > 0:
        return f'higher ({interval})'
    if result['high'] < 0:
        return f'lower ({interval})'
    return f'inconclusive ({interval})'


def difference_text(result: Optional[Dict]) -> str:
    if result is None:
        return '—'
    spread = f' ± {result["sd"]:.2f}' if result.get('sd') is not None else ''
    return f'{result["mean"]:+.2f}{spread}'


def claims_table(runs: List[dict], pairs, names: Dict[str, str]) -> str:
    lines = ['| comparison | seeds | initialisation | k-NN difference (points) | verdict | '
             'linear difference (points) | verdict |', '|---|---|---|---|---|---|---|']
    for method, baseline in pairs:
        results = [compare(runs, method, baseline, k) for k in ('knn_top1', 'linear_top1')]
        n = max((r['n'] for r in results if r), default=0)
        pairing = ('paired by seed' if paired_at_init(method, baseline)
                   else 'not paired (Welch)')
        cells = [c for r in results for c in (difference_text(r), verdict(r))]
        lines.append(f'| {names.get(method, method)} ≥ {names.get(baseline, baseline)} | {n} | '
                     f'{pairing} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


RULE_TEXT = ('Differences in points: mean ± std of the per-seed differences where the seeds '
             'pair the initial weights (the DINO/iBOT family; a SimDINO recipe with its '
             'balanced variant), the difference of the means with Welch\'s test where they do '
             'not (SimDINO against the DINO family: a different head draws a different random '
             'stream, so seed s does not start both from the same weights). Verdict: higher / '
             'lower when the 95 % t-interval excludes 0, inconclusive otherwise; 3 seeds per '
             'side at least.')
