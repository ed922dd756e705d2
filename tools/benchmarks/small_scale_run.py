"""One run of the small-scale study: pre-train with mmengine's Runner, evaluate the teacher.

``run_one(run_spec, result_path)`` builds the method's config (``configs/benchmarks/small_scale/``)
with the run's overrides, seed and epoch budget, trains it (resuming from the work dir's last
checkpoint if a previous session was stopped), then evaluates the teacher's CLS features:

- weighted k-NN (k = 20, T = 0.07; ``mmselfsup_vmf/evaluation/knn.py``) with the config's
  k-NN bank (all 60,000 training images) and queries (all 10,000 test images);
- a logistic-regression linear probe on the same frozen features
  (``mmselfsup_vmf/evaluation/logistic_probe.py``).

The result (accuracies, k-NN after every epoch from the training log, timings, load average,
prototype usage for prototype methods; with ``init_eval=True`` in ``run_spec``, both scores of the
same network before training) is written atomically to ``result_path``. The final
teacher backbone is kept beside it (``save_teacher_backbone``) so that later evaluations
re-score a run without re-training.
"""
import copy
import datetime
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
for _path in (ROOT, osp.join(ROOT, 'tools', 'analysis'), osp.dirname(osp.abspath(__file__))):
    if _path not in sys.path:
        sys.path.insert(0, _path)

PROTOTYPE_METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf')


def write_json_atomic(path: str, data) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def set_epochs(cfg, epochs: int, warmup_epochs: int = 1) -> None:
    """Set the epoch budget and stretch the schedule base's lr / wd schedulers to it.

    The lr warm-up lasts ``warmup_epochs``, at most a quarter of the budget."""
    warmup = min(warmup_epochs, epochs / 4)
    cfg.train_cfg.max_epochs = epochs
    for sched in cfg.param_scheduler:
        if sched['type'] == 'LinearLR':
            sched['end'] = warmup
        elif sched['type'] == 'CosineAnnealingLR':
            sched.update(begin=warmup, end=epochs, T_max=epochs - warmup)
        else:
            sched['end'] = epochs
    cfg.param_scheduler = [s for s in cfg.param_scheduler if s['end'] > s.get('begin', 0)]


def build_cfg(run_spec: dict):
    """The run's Config: method config + overrides + seed + budget + work dir + probes."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, run_spec['config']))
    if run_spec.get('overrides'):  # a copy: merging pops '_delete_' from the dicts it reads
        cfg.merge_from_dict(copy.deepcopy(run_spec['overrides']))
    for hook in cfg.custom_hooks:  # the k-NN hook evaluates on the (overridden) k-NN sets
        if hook['type'] == 'KNNHook':
            hook.update(train_dataloader=cfg.knn_train_dataloader,
                        val_dataloader=cfg.knn_val_dataloader)
    if not run_spec.get('knn_hook', True):  # only the final evaluation (short sweep trials)
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'KNNHook']
    set_epochs(cfg, int(run_spec['epochs']))
    cfg.randomness = dict(seed=int(run_spec['seed']), deterministic=False)
    cfg.work_dir = run_spec['work_dir']
    cfg.launcher = 'none'
    if run_spec['method'] in PROTOTYPE_METHODS:
        cfg.custom_hooks.append(dict(
            type='PrototypeUsageProbeHook', dataset=cfg.knn_val_dataloader.dataset,
            num_images=2000, interval=max(1, int(run_spec.get('probe_interval', 200)))))
    if osp.isfile(osp.join(run_spec['work_dir'], 'last_checkpoint')):
        cfg.resume = True
    return cfg


def read_log_series(work_dir: str, keys) -> Dict[str, List[List[float]]]:
    """{key: [[iter, value], ...]} of the given scalar keys in the run's vis_data logs."""
    from plot_knn import find_logs
    out = {k: [] for k in keys}
    try:
        logs = find_logs(work_dir)
    except FileNotFoundError:
        return out
    last_iter = 0.0
    for path in logs:
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                record = json.loads(line)
                x = float(record.get('iter', max(record.get('step', 0), last_iter)))
                if 'iter' in record:
                    last_iter = x
                for k in keys:
                    if isinstance(record.get(k), (int, float)):
                        out[k].append([x, float(record[k])])
    return out


def _timed(fn, box: list):
    def wrapper(*args, **kwargs):
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            box.append(time.time() - start)
    return wrapper


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def extract_teacher_features(model, cfg):
    """(features, labels) of the k-NN bank and queries named in the config (as knn.py)."""
    from knn import knn_dataloader_cfgs
    from mmengine.runner import Runner

    from mmselfsup_vmf.evaluation.knn import extract_features
    return tuple(
        extract_features(lambda b: model.knn_features(b, 'teacher'),
                         Runner.build_dataloader(loader_cfg, seed=0))
        for loader_cfg in knn_dataloader_cfgs(cfg))


def evaluate_features(train, test) -> dict:
    """k-NN (k=20, T=0.07) and logistic probe accuracies of (features, labels) pairs."""
    from mmselfsup_vmf.evaluation.knn import knn_accuracy
    from mmselfsup_vmf.evaluation.logistic_probe import logistic_probe_accuracy
    (train_f, train_y), (test_f, test_y) = train, test
    start = time.time()
    knn = knn_accuracy(train_f, train_y, test_f, test_y, 10, k=20, temperature=0.07)
    knn_s = time.time() - start
    start = time.time()
    lin = logistic_probe_accuracy(train_f.numpy(), train_y.numpy(), test_f.numpy(),
                                  test_y.numpy())
    return dict(knn_top1=knn['top1'], knn_top5=knn['top5'], linear_top1=lin['top1'],
                linear_train_top1=lin['train_top1'], linear_iterations=lin['iterations'],
                feature_dim=int(train_f.shape[1]), num_bank=int(train_f.shape[0]),
                num_queries=int(test_f.shape[0]), knn_seconds=knn_s,
                linear_seconds=time.time() - start)


def backbone_path(result_path: str) -> str:
    """``<out>/<experiment>/runs/<run>.json`` -> ``<out>/<experiment>/backbones/<run>.pth``."""
    runs_dir, name = osp.split(result_path)
    return osp.join(osp.dirname(runs_dir), 'backbones', osp.splitext(name)[0] + '.pth')


def save_teacher_backbone(model, run_spec: dict, path: str) -> dict:
    """Save the EMA teacher's backbone as ``{'state_dict', 'meta'}`` (the layout of
    tools/model_converters/extract_backbone.py: mmpretrain keys, plain values only, loads
    with ``weights_only=True``); returns its path, size and parameter count."""
    import torch
    state = {k: v.detach().cpu().clone()
             for k, v in model.teacher.module['backbone'].state_dict().items()}
    meta = dict(run=run_spec['name'], method=run_spec['method'], config=run_spec['config'],
                seed=int(run_spec['seed']), overrides=json.dumps(run_spec['overrides']),
                key='teacher')
    os.makedirs(osp.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    torch.save(dict(state_dict=state, meta=meta), tmp)
    os.replace(tmp, path)
    inside = osp.abspath(path).startswith(ROOT + os.sep)
    return dict(path=osp.relpath(path, ROOT) if inside else osp.abspath(path),
                bytes=osp.getsize(path), parameters=int(sum(v.numel() for v in state.values())))


def run_one(run_spec: dict, result_path: str) -> dict:
    import torch
    torch.set_num_threads(1)
    import small_scale_hooks  # also registers PrototypeUsageProbeHook
    from mmengine.runner import Runner

    import mmselfsup_vmf  # noqa: F401
    from mmselfsup_vmf.engine.hooks.knn_hook import KNNHook
    load_start = os.getloadavg()
    started = datetime.datetime.now().isoformat(timespec='seconds')
    cfg = build_cfg(run_spec)
    timing_path = osp.join(run_spec['work_dir'], 'timing.json')
    previous = {'train_seconds': 0.0, 'knn_hook_seconds': 0.0, 'sessions': 0}
    if cfg.get('resume') and osp.isfile(timing_path):
        with open(timing_path) as f:
            previous = json.load(f)
    runner = Runner.from_cfg(cfg)
    hook_times: List[float] = []
    for hook in runner.hooks:
        if isinstance(hook, KNNHook):
            hook.evaluate = _timed(hook.evaluate, hook_times)
    session = small_scale_hooks.SessionStartHook()
    runner.register_hook(session)
    init_path = osp.join(run_spec['work_dir'], 'init_eval.json')
    init_hook = small_scale_hooks.InitEvalHook(
        lambda m: evaluate_features(*extract_teacher_features(m, cfg)), init_path)
    if run_spec.get('init_eval'):  # the same network before training, same protocol
        runner.register_hook(init_hook)
    start = time.time()
    runner.train()
    session_train_s = time.time() - start
    train_s = previous['train_seconds'] + session_train_s
    knn_hook_s = previous['knn_hook_seconds'] + sum(hook_times)
    write_json_atomic(timing_path, dict(train_seconds=train_s, knn_hook_seconds=knn_hook_s,
                                        sessions=previous['sessions'] + 1))
    model = runner.model
    model.eval()
    backbone = save_teacher_backbone(model, run_spec, backbone_path(result_path))
    start = time.time()
    train, test = extract_teacher_features(model, cfg)
    extract_s = time.time() - start
    result = evaluate_features(train, test)
    batch = cfg.train_dataloader.batch_size
    iters_per_epoch = len(runner.train_dataloader)
    # throughput of this session: a resumed run's earlier sessions may have left no timing
    iters_this_session = runner.iter - session.iter
    pure_train_s = max(session_train_s - sum(hook_times) - init_hook.seconds, 1e-9)
    curve = read_log_series(run_spec['work_dir'], ['knn/top1'])['knn/top1']
    # collapse signs: the teacher's argmax/entropy (prototype methods), the alignment and the
    # coding rate (SimDINO: comp -> 1 with expa -> 0)
    logged = read_log_series(run_spec['work_dir'], ['teacher_unique_argmax', 'teacher_entropy',
                                                'loss', 'comp', 'global_comp', 'expa'])
    usage_path = osp.join(run_spec['work_dir'], 'prototype_usage.json')
    usage = init = None
    if osp.isfile(usage_path):
        with open(usage_path) as f:
            usage = json.load(f)
    if run_spec.get('init_eval'):
        with open(init_path) as f:
            init = json.load(f)
    result.update(
        run_spec={k: v for k, v in run_spec.items() if k != 'work_dir'},
        knn_curve=[[x / iters_per_epoch, v] for x, v in curve],
        train_log={k: v[::max(1, len(v) // 200)] for k, v in logged.items()},
        prototype_usage=usage, init=init,
        teacher_backbone=backbone,
        iters=runner.iter, iters_this_session=iters_this_session,
        iters_per_epoch=iters_per_epoch, batch_size=batch,
        train_seconds=train_s, knn_hook_seconds=knn_hook_s,
        eval_seconds=extract_s + result['knn_seconds'] + result['linear_seconds'],
        images_per_second=iters_this_session * batch / pure_train_s,
        wall_seconds=train_s + extract_s + result['knn_seconds'] + result['linear_seconds'],
        loadavg_start=list(load_start), loadavg_end=list(os.getloadavg()),
        started=started, finished=datetime.datetime.now().isoformat(timespec='seconds'),
        git_commit=_git_commit(), torch_threads=torch.get_num_threads(),
        command=run_spec.get('command'))
    write_json_atomic(result_path, result)
    return result


def raw_pixel_baseline(num_bank: Optional[int] = None, num_queries: Optional[int] = None):
    """Both protocols on L2-normalised (k-NN) / standardised (probe) raw 28 x 28 pixels."""
    import numpy as np
    import torch

    from mmselfsup_vmf.datasets.small_datasets import (
        _IDX_IMAGES_MAGIC,
        _IDX_LABELS_MAGIC,
        DEBIAN_FASHION_MNIST_ROOT,
        FASHION_MNIST_FILES,
        _find_idx_file,
        read_idx_file,
    )
    out = []
    for split, limit in (('train', num_bank), ('test', num_queries)):
        images, labels = (read_idx_file(_find_idx_file(DEBIAN_FASHION_MNIST_ROOT, name), magic)
                          for name, magic in zip(FASHION_MNIST_FILES[split],
                                                 (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC)))
        images, labels = images[:limit], labels[:limit]
        feats = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32))
        out.append((feats, torch.from_numpy(labels.astype(np.int64))))
    load_start = os.getloadavg()
    start = time.time()
    result = evaluate_features(*out)
    result.update(wall_seconds=time.time() - start, loadavg_start=list(load_start),
                  loadavg_end=list(os.getloadavg()),
                  finished=datetime.datetime.now().isoformat(timespec='seconds'))
    return result
