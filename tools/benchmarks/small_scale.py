"""The small-scale study: pre-train the six methods on all of Fashion-MNIST on the CPU and
evaluate their teachers against raw pixels (docs/benchmarks.md, "Small-scale study").

Each run trains ``configs/benchmarks/small_scale/<method>.py`` through mmengine's Runner in its
own process (one torch thread), then evaluates the teacher's CLS features with weighted k-NN
(k = 20, T = 0.07, all 60,000 training images as the bank, all 10,000 test images as queries)
and a logistic-regression linear probe (``mmselfsup_vmf/evaluation/logistic_probe.py``).
Every run writes its own result file atomically (``<out>/<experiment>/runs/<run>.json``); a
restarted driver skips runs whose file exists and resumes a stopped run from its last
checkpoint (``<work-root>/<experiment>/<run>/``). Drivers started side by side on the same
list (one per free core) share it: each run is locked by the driver that trains it. At the
end (and with ``--report``) it writes ``results.json``, ``results.md`` and PNG figures next
to the runs. ``<out>`` is the committed ``benchmarks/results/small_scale``, except for the
smoke run: ``work_dirs/small_scale_smoke``, so a check leaves the repository clean.

Experiments (``--experiment``):
  study       methods x seeds at the study budget (default), each method with the lr and
              teacher momentum of its best sweep trial (k-NN top-1) once the sweep has run
  study_rerun seed 0 of DINO, DINO-vMF, iBOT and iBOT-vMF as in ``study``, trained again
              so that their teacher backbones are kept for the few-label evaluation
  sweep       seed 0, every method on the same lr x teacher-momentum grid, short budget
              (one epoch of a 20,000-image subset), final evaluation only
  robustness  the papers' stability claims at the sweep budget: lr x 3, temperature / eps x 3,
              DINO without centring, momentum 0 (no self-distillation), DINO with
              unnormalised prototypes, DINO-vMF with the 'debye' normaliser
  moving      a moving object (small_scale_moving.py): the six methods (default: dino,
              dino_vmf, ibot, ibot_vmf, simdino_balanced, simdinov2_balanced) x seeds with
              their study lr / momentum, pre-trained and evaluated on Fashion-MNIST garments
              at seeded random offsets on a 40 x 40 canvas; the raw-pixel and PCA-64 rows on
              the same canvas splits and seed 0's networks at random init. Budget: 1 epoch
              of a class-balanced 30,000-image half of the training split (468 iterations),
              final evaluation only (k-NN bank and queries: the whole canvas splits)
  moving_long the moving runs at 3 epochs instead of 1 (default: DINO, SimDINO balanced)
  smoke       one tiny run (256 images, small k-NN sets) for CI
  moving_smoke  the moving experiment's tiny run for CI (SMOKE sizes on the canvas)

Usage:
  python tools/benchmarks/small_scale.py [--experiment study] [--methods dino simdino ...]
      [--seeds 3] [--epochs E] [--out DIR] [--work-root DIR]
      [--only NAME ...] [--list] [--report]
"""
import argparse
import datetime
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from small_scale_run import ROOT, write_json_atomic  # noqa: E402

METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino', 'simdinov2', 'simdino_balanced',
           'simdinov2_balanced')
# simdino / simdinov2: the untranslated recipe (rate_batch = the batch of 64);
# *_balanced: the coding-rate balance moved to the study's batch and width
# (docs/simdino.md#small-batch-balance)
GAMMA = 'model.loss.gamma'
CONFIG_DIR = 'configs/benchmarks/small_scale'
STUDY_EPOCHS = 3  # 2,811 iterations per run; timings in docs/benchmarks.md
SWEEP_EPOCHS = 1
SWEEP_IMAGES = 20000  # sweep trials pre-train on a class-balanced 20,000-image subset
SWEEP_LRS = (1e-3, 3e-3)
SWEEP_MOMENTA = (0.99, )
LR = 'optim_wrapper.optimizer.lr'
MOMENTUM = 'model.teacher_momentum'

# smoke: 256 training images, 4 x 64 iterations, 1,000-image k-NN bank and 500 queries
SMOKE_SIZES = dict(train_images=256, bank=1000, queries=500)
SMOKE_MODEL_OVERRIDES = {
    'train_dataloader.num_workers': 0,
    'train_dataloader.persistent_workers': False,
    'model.backbone.arch.embed_dims': 32,
    'model.backbone.arch.feedforward_channels': 64,
    'model.backbone.arch.num_layers': 2,
    'model.head.in_channels': 32,
    'model.head.hidden_channels': 64,
}
SMOKE_OVERRIDES = {
    'train_dataloader.dataset.dataset.num_samples': SMOKE_SIZES['train_images'],
    'knn_train_dataloader.dataset.num_samples': SMOKE_SIZES['bank'],
    'knn_val_dataloader.dataset.num_samples': SMOKE_SIZES['queries'],
    **SMOKE_MODEL_OVERRIDES,
}
MOVING_EPOCHS = 1
MOVING_IMAGES = 30000  # a class-balanced half of the training split: 468 iterations
MOVING_LONG_EPOCHS = 3
MOVING_LONG_METHODS = ('dino', 'simdino_balanced')
SMOKE_EXPERIMENTS = ('smoke', 'moving_smoke')  # results outside version control
RERUN_METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf')


def run_spec(experiment: str, name: str, method: str, seed: int, epochs: int,
             overrides: Dict = None, **extra) -> dict:
    return dict(experiment=experiment, name=name, method=method,
                config=f'{CONFIG_DIR}/{method}.py', seed=seed, epochs=epochs,
                overrides=dict(overrides or {}), **extra)


def tuned_overrides(out_dir: str, method: str) -> Dict:
    """The sweep's best grid point of ``method`` (highest k-NN top-1; ties: first in grid
    order), as lr / momentum overrides; {} (the config's values) before the sweep ran."""
    best, best_knn = {}, None
    for run_spec in sweep_runs(parse_args(['--experiment', 'sweep', '--methods', method])):
        result = read_result(osp.join(out_dir, 'sweep', 'runs', run_spec['name'] + '.json'))
        if result is None:
            continue
        if best_knn is None or result['knn_top1'] > best_knn:
            best_knn = result['knn_top1']
            best = {k: run_spec['overrides'][k] for k in (LR, MOMENTUM)}
    return best


def study_runs(args) -> List[dict]:
    epochs = args.epochs or STUDY_EPOCHS
    return [run_spec('study', f'{m}_s{s}', m, s, epochs, tuned_overrides(args.out, m))
            for s in range(args.seeds) for m in args.methods]


def study_rerun_runs(args) -> List[dict]:
    """Seed 0 of the DINO / iBOT family's study runs, trained again with today's pipeline:
    their first runs kept no backbone, which the few-label evaluation scores. The same
    config, tuned lr / momentum and epochs as ``study``; results in ``<out>/study_rerun``."""
    return [dict(s, experiment='study_rerun')
            for s in study_runs(argparse.Namespace(**dict(vars(args), seeds=1)))]


def sweep_runs(args) -> List[dict]:
    """The same lr x momentum grid for every method (seed 0): equal tuning effort."""
    epochs = args.epochs or SWEEP_EPOCHS
    subset = {'train_dataloader.dataset.dataset.num_samples': SWEEP_IMAGES}
    return [run_spec('sweep', f'{m}_lr{lr:g}_m{mom:g}', m, 0, epochs,
                     dict(subset, **{LR: lr, MOMENTUM: mom}), knn_hook=False)
            for mom in SWEEP_MOMENTA for lr in SWEEP_LRS for m in args.methods]


def robustness_runs(args) -> List[dict]:
    """The papers' stability claims at the sweep budget (1 epoch on the 20,000-image
    subset), seed 0, around each method's chosen recipe."""
    epochs = args.epochs or SWEEP_EPOCHS
    subset = {'train_dataloader.dataset.dataset.num_samples': SWEEP_IMAGES}
    runs = []

    def add(name, method, overrides):
        recipe = dict(subset, **tuned_overrides(args.out, method))
        runs.append(run_spec('robustness', name, method, 0, epochs, dict(recipe, **overrides)))
    for method in ('dino', 'simdino'):
        for factor in (0.3, 3.0, 10.0):
            add(f'{method}_lr_x{factor:g}', method, {'lr_factor': factor})
        add(f'{method}_no_self_distillation', method,
            {MOMENTUM: 0.0, 'model.teacher_momentum_end': 0.0})
    for temp in (0.02, 0.04, 0.1):
        add(f'dino_teacher_temp_{temp:g}', 'dino',
            {'model.teacher_temp': dict(start=temp, end=temp, warmup_epochs=0)})
    for eps in (0.01, 0.2, 0.5):
        add(f'simdino_eps_{eps:g}', 'simdino', {'model.loss.eps': eps})
    add('dino_no_centering', 'dino', {'model.loss.centering': 'none'})
    add('dino_unnormalised_prototypes', 'dino', {'model.head.norm_last_layer': False})
    add('dino_vmf_debye', 'dino_vmf', {'model.loss.approximation': 'debye'})
    # SimDINO's counterpart of DINO's stress runs: the coding-rate weight gamma x 0, 0.1, 10
    # around the balanced recipe (its gamma = 1/rate_batch + 1/d)
    if 'simdino_balanced' in args.methods:
        from mmengine.config import Config
        cfg = Config.fromfile(osp.join(ROOT, CONFIG_DIR, 'simdino_balanced.py'))
        gamma = 1 / cfg.model.loss.rate_batch + 1 / cfg.model.head.bottleneck_channels
    for factor in (0.0, 0.1, 10.0) if 'simdino_balanced' in args.methods else ():
        add(f'simdino_balanced_gamma_x{factor:g}', 'simdino_balanced', {GAMMA: factor * gamma})
    return [r for r in runs if r['method'] in args.methods]


def smoke_runs(args) -> List[dict]:
    method = args.methods[0] if len(args.methods) == 1 else 'simdino'
    return [run_spec('smoke', f'{method}_s0', method, 0, args.epochs or 1, SMOKE_OVERRIDES,
                     probe_interval=2)]


def moving_runs(args) -> List[dict]:
    """The six methods x seeds on the 40 x 40 canvas, each with its study lr / momentum;
    no k-NN hook (final evaluation only); seed 0 also evaluates its network at random init
    (one more evaluation per method; the other seeds would add ~1 min each)."""
    from small_scale_moving import canvas_overrides
    epochs = args.epochs or MOVING_EPOCHS
    return [run_spec('moving', f'{m}_s{s}', m, s, epochs,
                     dict(tuned_overrides(args.out, m),
                          **canvas_overrides(m, train_images=MOVING_IMAGES)),
                     knn_hook=False, init_eval=s == 0)
            for s in range(args.seeds) for m in args.methods]


def moving_long_runs(args) -> List[dict]:
    """The moving runs of DINO and SimDINO (balanced) at 3 epochs instead of 1: how much of
    the gap to pixels is the budget. Results in ``<out>/moving_long``."""
    longer = argparse.Namespace(**dict(vars(args), epochs=args.epochs or MOVING_LONG_EPOCHS))
    return [dict(s, experiment='moving_long') for s in moving_runs(longer)]


def moving_smoke_runs(args) -> List[dict]:
    from small_scale_moving import canvas_overrides
    method = args.methods[0] if len(args.methods) == 1 else 'dino'
    overrides = dict(canvas_overrides(method, **SMOKE_SIZES), **SMOKE_MODEL_OVERRIDES)
    return [run_spec('moving_smoke', f'{method}_s0', method, 0, args.epochs or 1, overrides,
                     knn_hook=False, init_eval=True, probe_interval=2)]


EXPERIMENTS = dict(study=study_runs, study_rerun=study_rerun_runs, sweep=sweep_runs,
                   robustness=robustness_runs, smoke=smoke_runs, moving=moving_runs,
                   moving_long=moving_long_runs, moving_smoke=moving_smoke_runs)


def resolve_lr_factor(run_spec: dict) -> dict:
    """Turn ``lr_factor`` into an absolute lr: factor x the method config's (tuned) lr."""
    factor = run_spec['overrides'].pop('lr_factor', None)
    if factor is not None:
        base_lr = run_spec['overrides'].get(LR)
        if base_lr is None:
            from mmengine.config import Config
            base_lr = Config.fromfile(osp.join(ROOT, run_spec['config'])).optim_wrapper.optimizer.lr
        run_spec['overrides'][LR] = base_lr * factor
    return run_spec


def read_result(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else \
        f'{seconds // 60}m{seconds % 60:02d}s'


def claim_run(work_dir: str) -> bool:
    """Take the run's lock (``<work_dir>/driver.lock``, the driver's pid) unless a live
    driver holds it, so that two drivers on one list (one per core) never train the same run;
    a lock whose process has ended is taken over."""
    path = osp.join(work_dir, 'driver.lock')
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
                return pid == os.getpid()
            except (ValueError, ProcessLookupError, FileNotFoundError):
                try:
                    os.remove(path)  # stale: its driver is gone
                except FileNotFoundError:
                    pass
                continue
            except PermissionError:  # alive, another user's
                return False
        with os.fdopen(fd, 'w') as f:
            f.write(str(os.getpid()))
        return True
    return False


def release_run(work_dir: str) -> None:
    try:
        os.remove(osp.join(work_dir, 'driver.lock'))
    except FileNotFoundError:
        pass


def launch(run_spec: dict, result_path: str, log_path: str, in_process: bool) -> bool:
    if in_process:
        from small_scale_run import run_one
        run_one(run_spec, result_path)
        return True
    spec_path = osp.join(run_spec['work_dir'], 'run_spec.json')
    write_json_atomic(spec_path, run_spec)
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1')
    code = ('import json, sys; sys.path.insert(0, sys.argv[1]); from small_scale_run import '
            'run_one; run_one(json.load(open(sys.argv[2])), sys.argv[3])')
    with open(log_path, 'a') as log:
        proc = subprocess.run([sys.executable, '-c', code, osp.dirname(osp.abspath(__file__)),
                               spec_path, result_path], stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=ROOT)
    os.remove(spec_path)
    return proc.returncode == 0


def raw_pixel_result(out_dir: str, smoke: bool) -> dict:
    """The raw-pixel baseline row, computed once and kept in ``<out>/raw_pixels.json``."""
    path = osp.join(out_dir, 'raw_pixels_smoke.json' if smoke else 'raw_pixels.json')
    result = read_result(path)
    if result is None:
        from small_scale_run import raw_pixel_baseline
        result = raw_pixel_baseline(1000, 500) if smoke else raw_pixel_baseline()
        result['command'] = 'python tools/benchmarks/small_scale.py (raw-pixel baseline)'
        write_json_atomic(path, result)
    return result


def baseline_rows(args, exp_dir: str):
    """(raw-pixel row, head table of the report or None): on the 28 px images for the
    study's experiments, on the canvas (with PCA-64) for the moving ones."""
    if not args.experiment.startswith('moving'):
        return raw_pixel_result(args.out, args.experiment == 'smoke'), None
    import small_scale_moving as moving
    sizes = SMOKE_SIZES if args.experiment in SMOKE_EXPERIMENTS else {}
    pixels = moving.pixel_rows(exp_dir, sizes.get('bank'), sizes.get('queries'))
    return pixels['raw pixels'], moving.head_table(pixels)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--experiment', choices=sorted(EXPERIMENTS), default='study')
    p.add_argument('--methods', nargs='+', choices=METHODS,
                   help='default: all; the six of the moving experiment; DINO and '
                        'SimDINO (balanced) for moving_long; the DINO family for study_rerun')
    p.add_argument('--seeds', type=int, default=3)
    p.add_argument('--epochs', type=int, help='epoch budget (default: per experiment)')
    p.add_argument('--out', help='results folder (default: the committed '
                   'benchmarks/results/small_scale; for smoke, work_dirs/small_scale_smoke '
                   'outside version control)')
    p.add_argument('--readme', default=osp.join(ROOT, 'README.md'),
                   help="study only: the README whose methods x results table (between "
                        "'<!-- small-scale-study:start/end -->') is rewritten, and the "
                        "docs/benchmarks.md beside it (its study-details markers); '' for none")
    p.add_argument('--work-root', default=osp.join(ROOT, 'work_dirs', 'small_scale'))
    p.add_argument('--only', nargs='+', help='run only these run names')
    p.add_argument('--list', action='store_true', help='list the runs and their state, exit')
    p.add_argument('--report', action='store_true', help='only write the table and figures')
    p.add_argument('--in-process', action='store_true',
                   help='train in this process (default: one subprocess per run)')
    args = p.parse_args(argv)
    if args.methods is None:
        from small_scale_moving import MOVING_METHODS
        defaults = dict(moving_long=MOVING_LONG_METHODS, study_rerun=RERUN_METHODS)
        args.methods = list(defaults.get(args.experiment) or (
            MOVING_METHODS if args.experiment.startswith('moving') else METHODS))
    if args.out is None:
        args.out = (osp.join(ROOT, 'work_dirs', 'small_scale_smoke') if args.experiment in
                    SMOKE_EXPERIMENTS else osp.join(ROOT, 'benchmarks', 'results',
                                                     'small_scale'))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(1)
    run_specs = [resolve_lr_factor(s) for s in EXPERIMENTS[args.experiment](args)]
    if args.only:
        run_specs = [s for s in run_specs if s['name'] in args.only]
    exp_dir = osp.join(args.out, args.experiment)
    runs_dir = osp.join(exp_dir, 'runs')
    os.makedirs(runs_dir, exist_ok=True)
    pending = [s for s in run_specs if read_result(osp.join(runs_dir, s['name'] + '.json')) is None]
    print(f'{args.experiment}: {len(run_specs)} runs, {len(run_specs) - len(pending)} finished, '
          f'{len(pending)} to run (results in {runs_dir})', flush=True)
    if args.list:
        for s in run_specs:
            state = 'pending' if s in pending else 'done'
            print(f'  {s["name"]:40s} {state}  {s["overrides"]}')
        return 0
    command = 'python tools/benchmarks/small_scale.py ' + ' '.join(argv or sys.argv[1:])
    failed = []
    if not args.report:
        baseline_rows(args, exp_dir)  # once, kept in <out>
        durations = []
        for i, run_spec in enumerate(pending):
            run_spec.update(work_dir=osp.join(args.work_root, args.experiment, run_spec['name']),
                        command=command)
            os.makedirs(run_spec['work_dir'], exist_ok=True)
            result_path = osp.join(runs_dir, run_spec['name'] + '.json')
            if read_result(result_path) is not None or not claim_run(run_spec['work_dir']):
                print(f'[{datetime.datetime.now():%H:%M:%S}] {run_spec["name"]}: finished or '
                      'running in another driver, skipped', flush=True)
                continue
            eta = (f', ETA {format_seconds(sum(durations) / len(durations) * (len(pending) - i))}'
                   if durations else '')
            print(f'[{datetime.datetime.now():%H:%M:%S}] run {i + 1}/{len(pending)} '
                  f'{run_spec["name"]} (load {os.getloadavg()[0]:.2f}{eta}); log: '
                  f'{run_spec["work_dir"]}/driver.log', flush=True)
            start = time.time()
            try:
                ok = launch(run_spec, result_path, osp.join(run_spec['work_dir'], 'driver.log'),
                            args.in_process)
            finally:
                release_run(run_spec['work_dir'])
            durations.append(time.time() - start)
            result = read_result(result_path) if ok else None
            if result is None:
                failed.append(run_spec['name'])
                print(f'  FAILED: see {run_spec["work_dir"]}/driver.log', flush=True)
            else:
                print(f'  k-NN {result["knn_top1"]:.2f}  linear {result["linear_top1"]:.2f}  '
                      f'({format_seconds(result["wall_seconds"])}, '
                      f'{result["images_per_second"]:.0f} img/s)', flush=True)
    import small_scale_report as report
    raw, head = baseline_rows(args, exp_dir)
    readme = args.readme if args.experiment == 'study' else None
    print('wrote ' + ', '.join(report.write_report(exp_dir, raw, readme, head)))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
