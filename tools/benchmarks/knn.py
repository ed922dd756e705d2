"""Offline weighted k-NN evaluation of a pre-trained model (the DINO protocol).

Protocol (``mmselfsup_vmf/evaluation/knn.py``): teacher CLS features (``--key student`` for
the student), L2-normalised; cosine similarity; each of the k nearest training images votes
for its class with weight exp(s / T); T = 0.07; k in {10, 20, 100, 200}.

Usage: python tools/benchmarks/knn.py CONFIG CHECKPOINT [--key teacher|student]
           [--k 10 20 100 200] [--temperature 0.07] [--out result.json] [--cfg-options ...]
           [--trust-checkpoint]

CONFIG is the pre-training config. The labelled sets are, in this order,
``knn_train_dataloader`` / ``knn_val_dataloader`` of the config, or the dataloaders of its
``KNNHook``. CHECKPOINT is a pre-training checkpoint, or a backbone exported by
``tools/model_converters/extract_backbone.py`` (loaded into the ``--key`` backbone). It is
read with ``weights_only=True`` and mmengine's allowlist (``mmselfsup_vmf/utils/safe_load.py``)
unless ``--trust-checkpoint`` is given.
"""
import argparse
import json
import os.path as osp
import sys
from typing import Dict, Optional, Sequence, Tuple

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # checkout

DEFAULT_KS = (10, 20, 100, 200)


def build_model(config: str, cfg_options: Optional[dict] = None):
    """The config's model (mmpretrain registry, eval mode) and the config."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import mmselfsup_vmf  # noqa: F401  (shims + registration)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    model = MODELS.build(cfg.model)
    if not callable(getattr(model, 'knn_features', None)):
        raise TypeError(f'{type(model).__name__} has no knn_features(data_batch, key): '
                        'CONFIG must be a pre-training config of this project')
    model.eval()
    return model, cfg


def load_weights(model, checkpoint: str, key: str = 'teacher') -> str:
    """Load a full pre-training checkpoint, or an exported backbone into ``key``'s backbone.

    Returns 'model' or 'backbone' (what was loaded).
    """
    from mmengine.runner.checkpoint import _load_checkpoint
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f'{checkpoint}: no state_dict in the checkpoint')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    if any(k.startswith('teacher.') for k in state):
        target, what = model, 'model'
    else:
        if key == 'teacher' and getattr(model, 'teacher', None) is None:
            raise ValueError(f'{type(model).__name__} has no EMA teacher: use --key student')
        target = model.teacher.module['backbone'] if key == 'teacher' else model.backbone
        what = 'backbone'
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k != 'mask_token']
    if missing or result.unexpected_keys:
        raise ValueError(f'{checkpoint}: weights do not fit the config model: missing '
                         f'{missing[:5]}, unexpected {result.unexpected_keys[:5]}')
    return what


def knn_dataloader_cfgs(cfg) -> Tuple[dict, dict]:
    """(train, val) dataloader configs of the k-NN sets named in the config."""
    if cfg.get('knn_train_dataloader') and cfg.get('knn_val_dataloader'):
        return cfg.knn_train_dataloader, cfg.knn_val_dataloader
    for hook in cfg.get('custom_hooks') or []:
        if hook.get('type') in ('KNNHook', 'mmselfsup_vmf.KNNHook', 'mmpretrain.KNNHook'):
            return hook['train_dataloader'], hook['val_dataloader']
    raise ValueError('no k-NN data in the config: define knn_train_dataloader and '
                     'knn_val_dataloader (labelled, no augmentation) or a KNNHook')


def run_knn(config: str, checkpoint: str, key: str = 'teacher',
            ks: Sequence[int] = DEFAULT_KS, temperature: float = 0.07,
            cfg_options: Optional[dict] = None, progress: bool = True,
            device: str = 'cpu') -> Dict[str, float]:
    """Extract features of both sets with ``model.knn_features`` and run the k-NN."""
    from mmengine.runner import Runner

    from mmselfsup_vmf.evaluation.knn import extract_features, knn_accuracy
    if key not in ('teacher', 'student'):
        raise ValueError(f"key must be 'teacher' or 'student', got {key!r}")
    model, cfg = build_model(config, cfg_options)
    load_weights(model, checkpoint, key)
    model.to(device)
    feats, num_classes = {}, None
    for name, loader_cfg in zip(('train', 'val'), knn_dataloader_cfgs(cfg)):
        loader = Runner.build_dataloader(loader_cfg, seed=0)
        if progress:
            print(f'extracting {key} features of the {name} set ({len(loader.dataset)} images)')
        feats[name] = extract_features(lambda batch: model.knn_features(batch, key), loader,
                                       progress=progress)
        classes = getattr(loader.dataset, 'metainfo', {}).get('classes')
        if name == 'train' and classes:
            num_classes = len(classes)
    (train_f, train_y), (val_f, val_y) = feats['train'], feats['val']
    if num_classes is None:
        num_classes = int(max(train_y.max(), val_y.max())) + 1
    return knn_accuracy(train_f, train_y, val_f, val_y, num_classes, k=tuple(ks),
                        temperature=temperature)


def protocol_line(key: str, ks, temperature: float) -> str:
    return (f'k-NN protocol: {key} CLS features, L2-normalised, cosine similarity, weighted '
            f'vote exp(s/T), T={temperature}, k={list(ks)}')


def main(argv=None) -> int:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Weighted k-NN accuracy of a pre-trained model (DINO protocol).')
    parser.add_argument('config', help='pre-training config')
    parser.add_argument('checkpoint', help='pre-training checkpoint or exported backbone')
    parser.add_argument('--key', choices=('teacher', 'student'), default='teacher')
    parser.add_argument('--k', type=int, nargs='+', default=list(DEFAULT_KS))
    parser.add_argument('--temperature', type=float, default=0.07)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', help='also write the result as JSON here')
    parser.add_argument('--no-progress', action='store_true')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings in the config, key=value')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='unpickle any type in CHECKPOINT (can run code: only for files '
                        'you trust)')
    args = parser.parse_args(argv)
    if args.trust_checkpoint:
        from mmselfsup_vmf.utils.safe_load import set_trust
        set_trust(True)
    try:
        result = run_knn(args.config, args.checkpoint, args.key, args.k, args.temperature,
                         args.cfg_options, not args.no_progress, args.device)
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(protocol_line(args.key, args.k, args.temperature))
    for k in args.k:
        print(f'k={k}: top1 {result[f"k{k}/top1"]:.2f}  top5 {result[f"k{k}/top5"]:.2f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(result, key=args.key, temperature=args.temperature,
                           checkpoint=osp.abspath(args.checkpoint)), f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
