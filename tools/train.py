"""Train a model from a config with mmengine's Runner (OpenMMLab's tools/train.py interface)."""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.runner import Runner

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout
import mmselfsup_vmf  # noqa: E402,F401  (shims + registration even without custom_imports)
from mmselfsup_vmf.datasets.transforms import apply_device_crops_key  # noqa: E402
from mmselfsup_vmf.engine.launch import apply_tf32_switch, prepare_distributed  # noqa: E402
from mmselfsup_vmf.engine.short_run import shorten_run  # noqa: E402
from mmselfsup_vmf.engine.threads import set_torch_threads  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Pre-train a model (mmselfsup_vmf)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and checkpoints')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from the given checkpoint, or (no value) from the latest one in work-dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: fp16 with dynamic loss scaling (GPU and CPU)')
    parser.add_argument('--amp-dtype', choices=['float16', 'bfloat16'],
                        help="with --amp: the autocast dtype (default: the config's, else fp16)")
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the backbone and head of student and teacher '
                             '(model.compile=True)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--epochs', type=int,
                        help='shorten to this many epochs, every schedule rescaled with it')
    parser.add_argument('--epoch-iters', type=int,
                        help='cap each epoch at this many iterations (smoke runs)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle any type in the resumed/loaded checkpoints (can run '
                        'code: only for files you trust); same as trust_checkpoint=True in the '
                        'config; default: tensors and the types mmengine writes')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: on a CPU-only machine, one per core '
                             'not used by a data-loader worker; under CUDA, torch\'s default)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def merge_args(cfg: Config, args) -> Config:
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    apply_device_crops_key(cfg)  # --cfg-options device_crops=True: crops on the GPU
    if args.epochs is not None or args.epoch_iters is not None:
        shorten_run(cfg, args.epochs, args.epoch_iters)  # after --cfg-options: a new base
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        wrapper = cfg.optim_wrapper
        if wrapper.get('type') in ('DistillOptimWrapper', 'AmpDistillOptimWrapper'):
            wrapper['type'] = 'AmpDistillOptimWrapper'
        else:
            wrapper['type'] = 'AmpOptimWrapper'
        if args.amp_dtype:
            wrapper['dtype'] = args.amp_dtype
        wrapper.setdefault('loss_scale', 'dynamic')
        if (wrapper['type'] == 'AmpDistillOptimWrapper' and wrapper.get('dtype') != 'bfloat16'
                and wrapper.get('optimizer', {}).get('type') == 'AdamW'):
            # as the fp16 recipes: the loss scaler's overflow check stays on the device
            wrapper.optimizer.setdefault('fused', True)
    if args.compile:
        cfg.model.compile = cfg.model.get('compile') or True
    if args.auto_scale_lr:
        cfg.setdefault('auto_scale_lr', dict(base_batch_size=256))
        cfg.auto_scale_lr.enable = True
    if args.trust_checkpoint or cfg.get('trust_checkpoint'):
        from mmselfsup_vmf.utils.safe_load import set_trust
        set_trust(True)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.config):
        raise SystemExit(f'error: config file {args.config} does not exist')
    cfg = merge_args(Config.fromfile(args.config), args)
    workers = cfg.get('train_dataloader', {}).get('num_workers', 0)
    print(set_torch_threads(args.threads, workers)[1], flush=True)
    apply_tf32_switch(cfg)  # allow_tf32
    note = prepare_distributed(cfg)
    if note:
        print(note, flush=True)
    if 'runner_type' in cfg:  # e.g. FlexibleRunner with a strategy (FSDP2Strategy)
        from mmengine.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    add_checkpoint_check(runner)
    check_before_data(runner, cfg, shortened=args.epochs is not None)
    from mmselfsup_vmf.engine.hooks.unreadable_samples import UnreadableSamplesError
    from mmselfsup_vmf.utils.safe_load import UnreadableCheckpointError, UntrustedCheckpointError
    try:
        runner.train()
    except (UntrustedCheckpointError, UnreadableCheckpointError, FloatingPointError,
            UnreadableSamplesError) as e:  # stops every rank takes alike: one line each
        raise SystemExit(f'error: {e}')
    return runner


def check_before_data(runner: Runner, cfg: Config, shortened: bool) -> None:
    """Checks that need the model but not the data come before any dataset is built (a
    mismatched export is named even without ADE20K on disk); ``--epochs`` then fits the
    schedulers to the real epoch length (a warm-up shorter than one iteration)."""
    from mmselfsup_vmf.arg_checks import check_data_root
    from mmselfsup_vmf.engine.short_run import fit_schedulers_to_epoch_length
    from mmselfsup_vmf.evaluation.pretrained_check import check_pretrained_early
    check_pretrained_early(runner)
    check_data_root(cfg)
    if shortened:
        fit_schedulers_to_epoch_length(runner)


def add_checkpoint_check(runner: Runner) -> None:
    """Resuming a checkpoint of another model must fail with one clear line (mmengine only
    warns about missing/unexpected keys), and a diverging run must stop before it saves
    non-finite weights, so every run gets ``CheckpointMatchHook`` and ``DivergenceGuardHook``
    (configs not built on configs/_base_/default_runtime.py lack the latter)."""
    from mmselfsup_vmf.engine.hooks import CheckpointMatchHook, DivergenceGuardHook
    for hook_type in (CheckpointMatchHook, DivergenceGuardHook):
        if not any(isinstance(h, hook_type) for h in runner.hooks):
            runner.register_hook(hook_type())


if __name__ == '__main__':
    main()
