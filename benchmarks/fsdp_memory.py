"""Per-GPU memory of the model state of every published config under DDP and FSDP (computed).

Each config's model is built on the ``meta`` device (no memory, no weights); its parameter
counts give, in bytes per GPU:

* DDP: every GPU holds everything:
  ``4·S + 4·T + 4·G + 8·G`` (fp32 student S, fp32 EMA teacher T, fp32 gradients of the
  G trainable student parameters, AdamW's two fp32 moments);
* FSDP over N GPUs (``FSDP2Strategy``): the same fp32 state divided by N, plus the parameters
  FSDP gathers transiently: the two largest sharding units (the running one and the
  prefetched next one) unsharded in the compute dtype with their gradients in the same dtype
  (2 + 2 bytes per parameter with bf16). The units are the strategy's own
  (``self_distillation_units``: every transformer block, then backbone, neck and head).

Not included (not measured): activations, which dominate at these batches and are the same
per GPU for DDP and FSDP; autocast's transient weight casts; DDP's gradient buckets (another
~4·G); the CUDA context and allocator fragmentation. No GPU figure is measured.

Usage: python benchmarks/fsdp_memory.py [--gpus 8] [--compute-bytes 2]
"""
import argparse
import glob
import logging
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
GIB = 1024 ** 3


def model_counts(config: str) -> dict:
    """Parameter counts of the config's model and of its largest FSDP units."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import mmselfsup_vmf  # noqa: F401  (registers the models)
    from mmselfsup_vmf.engine.fsdp2_strategy import self_distillation_units

    DefaultScope.get_instance(f'fsdp_memory_{config}', scope_name='mmpretrain')
    cfg = Config.fromfile(config)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    student = model._student_modules()
    units = self_distillation_units(model)
    seen, unit_sizes = set(), []
    for unit in units:  # innermost first: a unit owns the parameters no inner unit took
        own = [p for p in unit.parameters() if id(p) not in seen]
        seen.update(id(p) for p in own)
        unit_sizes.append(sum(p.numel() for p in own))
    return dict(student=sum(p.numel() for p in student.parameters()),
                trainable=sum(p.numel() for p in student.parameters() if p.requires_grad),
                teacher=sum(p.numel() for p in model.teacher.module.parameters()),
                largest_units=sorted(unit_sizes)[-2:])


def per_gpu_bytes(counts: dict, gpus: int, compute_bytes: int) -> tuple:
    """(DDP, FSDP) bytes per GPU of weights, gradients, AdamW moments and teacher."""
    state = 4 * counts['student'] + 4 * counts['teacher'] + 12 * counts['trainable']
    gathered = sum(counts['largest_units']) * 2 * compute_bytes
    return state, state / gpus + gathered


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--gpus', type=int, default=8)
    parser.add_argument('--compute-bytes', type=int, default=2,
                        help='bytes per gathered parameter and gradient (2: bf16/fp16)')
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    configs = sorted(glob.glob(osp.join(ROOT, 'configs', '*', 'vit-*16_8xb*.py')))
    print(f'| config | student params (M) | trainable (M) | teacher (M) | DDP GiB/GPU | '
          f'FSDP-{args.gpus} GiB/GPU |')
    print('|---|---|---|---|---|---|')
    for config in configs:
        if config.endswith('_fsdp.py'):  # the same model as its base config
            continue
        counts = model_counts(config)
        ddp, fsdp = per_gpu_bytes(counts, args.gpus, args.compute_bytes)
        name = osp.relpath(config, ROOT)
        print(f'| `{name}` | {counts["student"] / 1e6:.1f} | {counts["trainable"] / 1e6:.1f} | '
              f'{counts["teacher"] / 1e6:.1f} | {ddp / GIB:.2f} | {fsdp / GIB:.2f} |')


if __name__ == '__main__':
    main()
