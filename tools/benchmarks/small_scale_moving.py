"""The moving-object experiment of the small-scale study: Fashion-MNIST garments at seeded
random offsets on a 40 × 40 canvas (``FashionMNISTOffsets``), where a pixel is no longer the
same part of the garment in every image, so raw pixels may stop being the ceiling.

``canvas_overrides`` turns a study config (``configs/benchmarks/small_scale/<method>.py``)
into its canvas version through overrides only, so that the model, loss, augmentations and
schedule stay the study's and only the image geometry changes:

- pre-training, the k-NN bank and the queries are the canvas images of the train / test
  splits with the offsets of seed 0 (the same canvas for every method and seed);
- the ViT sees the whole 40 px canvas at evaluation with 8 px patches (a 5 × 5 grid; 40 is
  not a multiple of the study's 7 px patches);
- crops: the study's crop laws (area fraction 0.4–1 of the image for the global crops,
  0.1–0.4 for the local ones), resized to 32 px and 16 px, i.e. the study's 4 × 4 and 2 × 2
  token grids, so a training step costs what a study step costs. Why the study's fractions
  still fit: the garment is 28 px of the 40, at a uniform offset in [0, 12]². With the
  crop sampler of ``MultiCrop`` on the first 3,000 training garments (fraction of the
  garment's ink inside the crop; ``crop_coverage``), a global crop keeps 90 % of it on
  average, at least half in 98 % of the crops and 80 % in 82 % of them (the study on the
  28 px image: 82 %, 97 %, 59 %); a local crop keeps 47 % on average and under a tenth in
  10 % of the crops (study: 37 %, 5 %). The zoom of a global crop (side 25–40 px resized
  to 32) is 0.8–1.26 × the evaluation's.

``pixel_rows`` adds the raw-pixel and PCA-64-of-pixel rows on the same canvas splits;
``moving_table`` is the experiment's results table (mean ± 95 % t-interval over seeds,
each method against raw pixels, random initialisation from each run's ``init``).
"""
import copy
import json
import os.path as osp
import statistics
from typing import Dict, List, Optional

import small_scale_stats as stats
from small_scale_run import ROOT, evaluate_features, write_json_atomic

CANVAS = 40  # side of the canvas (pixel rows: benchmarks/results/small_scale/moving/pixels.json)
PATCH = 8  # 5 x 5 patches on the canvas
GLOBAL_SIZE, LOCAL_SIZE = 32, 16  # 4 x 4 and 2 x 2 patches, the study's token counts
OFFSET_SEED = 0  # one canvas for every method and seed
MOVING_METHODS = ('dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdino_balanced',
                  'simdinov2_balanced')
CONFIG_DIR = 'configs/benchmarks/small_scale'


def crop_coverage(scale, canvas: int = CANVAS, num_images: int = 3000) -> Dict[str, float]:
    """How much of each garment's ink a crop of area fraction ``scale`` keeps: the first
    ``num_images`` training garments at their offsets on ``canvas`` (28: the study's
    images), one crop each from ``MultiCrop``'s box sampler (seed 0)."""
    import numpy as np

    from mmselfsup_vmf.datasets.moving_fashion_mnist import GARMENT, garment_offsets
    from mmselfsup_vmf.datasets.small_datasets import DEBIAN_FASHION_MNIST_ROOT, read_fashion_mnist
    from mmselfsup_vmf.models.utils.multicrop_params import resized_crop_boxes
    images = read_fashion_mnist(DEBIAN_FASHION_MNIST_ROOT, 'train')[0][:num_images]
    offsets = garment_offsets(60000, canvas, OFFSET_SEED)[:num_images]  # the train split's
    boxes = resized_crop_boxes(np.random.default_rng(0), canvas, canvas,
                               np.array([scale] * num_images, dtype=float))
    kept = []
    for ink, (dy, dx), (top, left, h, w) in zip(images.astype(float), offsets, boxes):
        rows = slice(max(top - dy, 0), max(min(top + h - dy, GARMENT), 0))
        cols = slice(max(left - dx, 0), max(min(left + w - dx, GARMENT), 0))
        kept.append(ink[rows, cols].sum() / ink.sum())
    kept = np.array(kept)
    return dict(mean=kept.mean(), at_least_half=(kept >= 0.5).mean(),
                at_least_80=(kept >= 0.8).mean(), under_tenth=(kept < 0.1).mean())


def canvas_dataset(split: str, num_samples: Optional[int], pipeline: list) -> dict:
    """A ``FashionMNISTOffsets`` config replacing the study's dataset (``_delete_``: the
    study's ``image_size`` is not an argument of the canvas dataset)."""
    from mmselfsup_vmf.datasets.small_datasets import DEBIAN_FASHION_MNIST_ROOT
    return dict(_delete_=True, type='FashionMNISTOffsets', data_root=DEBIAN_FASHION_MNIST_ROOT,
                split=split, canvas=CANVAS, num_samples=num_samples, seed=OFFSET_SEED,
                pipeline=copy.deepcopy(pipeline))


def canvas_overrides(method: str, train_images: Optional[int] = None,
                     bank: Optional[int] = None, queries: Optional[int] = None) -> Dict:
    """Overrides that move ``method``'s study config onto the canvas (None: whole split)."""
    from mmengine.config import Config
    cfg = Config.fromfile(osp.join(ROOT, CONFIG_DIR, f'{method}.py'))
    pipeline = copy.deepcopy(cfg.train_dataloader.dataset.dataset.pipeline)
    crops = [t for t in pipeline if t['type'] == 'MultiCrop']
    if len(crops) != 1:
        raise ValueError(f'{method}: expected one MultiCrop in the training pipeline, found '
                         f'{len(crops)}; the canvas overrides resize its crops')
    crops[0].update(global_size=GLOBAL_SIZE, local_size=LOCAL_SIZE)
    knn_pipeline = cfg.knn_train_dataloader.dataset.pipeline
    overrides = {
        'train_dataloader.dataset.dataset': canvas_dataset('train', train_images, pipeline),
        'knn_train_dataloader.dataset': canvas_dataset('train', bank, knn_pipeline),
        'knn_val_dataloader.dataset': canvas_dataset('test', queries, knn_pipeline),
        'model.backbone.img_size': CANVAS,
        'model.backbone.patch_size': PATCH,
    }
    if 'patch_size' in cfg.model.data_preprocessor:  # the mask generators' patch grid
        overrides['model.data_preprocessor.patch_size'] = PATCH
    if 'patch_size' in cfg.train_dataloader.get('collate_fn', {}):  # loader-drawn masks
        overrides['train_dataloader.collate_fn.patch_size'] = PATCH
    return overrides


def pixel_rows(exp_dir: str, bank: Optional[int] = None,
               queries: Optional[int] = None) -> Dict[str, dict]:
    """The raw-pixel (one channel, 1,600-d) and PCA-64-of-pixel rows (PCA fitted on the bank,
    no labels) on the canvas k-NN sets, computed once and kept in ``<exp_dir>/pixels.json``."""
    import datetime
    import os
    import time

    from mmengine.config import Config
    from small_scale_fewlabel import PCA_DIM, pca_sets, pixel_sets
    path = osp.join(exp_dir, 'pixels.json')
    if osp.isfile(path):
        with open(path) as f:
            return json.load(f)
    from mmengine.registry import init_default_scope

    import mmselfsup_vmf  # noqa: F401  (registers FashionMNISTOffsets)
    cfg = Config.fromfile(osp.join(ROOT, CONFIG_DIR, 'dino.py'))
    cfg.merge_from_dict(canvas_overrides('dino', bank=bank, queries=queries))
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    rows = {}
    train, test = pixel_sets(cfg)
    for name, sets in (('raw pixels', (train, test)),
                       (f'PCA-{PCA_DIM} pixels', pca_sets(train, test))):
        load_start, start = os.getloadavg(), time.time()
        rows[name] = dict(evaluate_features(*sets), wall_seconds=time.time() - start,
                          loadavg_start=list(load_start), loadavg_end=list(os.getloadavg()),
                          finished=datetime.datetime.now().isoformat(timespec='seconds'),
                          canvas=CANVAS, offset_seed=OFFSET_SEED,
                          command='python tools/benchmarks/small_scale.py --experiment moving '
                                  '(pixel rows)')
    write_json_atomic(path, rows)
    return rows


def _cell(values: List[float]) -> str:
    if not values:
        return '—'
    if len(values) == 1:
        return f'{values[0]:.2f}'
    r = stats.mean_interval(values)
    return f'{r["mean"]:.2f} ± {r["half"]:.2f}'


def _against(values: List[float], baseline: float) -> str:
    """mean − baseline and the verdict of the one-sample t-test (the pixel rows have no
    seed: they are deterministic)."""
    if not values:
        return '— | not run'
    diffs = [v - baseline for v in values]
    result = (dict(stats.paired_t(diffs), paired=True) if len(diffs) > 1
              else dict(mean=diffs[0], sd=None, n=1))
    return f'{statistics.mean(diffs):+.2f} | {stats.verdict(result)}'


def moving_table(runs: List[dict], pixels: Dict[str, dict]) -> str:
    """Per method: k-NN and probe (mean ± 95 % t-interval half-width over seeds), the
    difference to raw pixels with its verdict, and the same network at random init."""
    from small_scale_report import METHOD_NAMES, group_name, summarise
    raw = pixels['raw pixels']
    lines = ['| features | seeds | k-NN top-1 (%) | k-NN − raw pixels | verdict | '
             'linear top-1 (%) | linear − raw pixels | verdict | random init k-NN (%), '
             'seed 0 | random init linear (%), seed 0 |', '|---' * 10 + '|']
    for name, row in pixels.items():
        dim = f'{row["feature_dim"]}-d'
        lines.append(f'| {name} ({dim}) | — | {row["knn_top1"]:.2f} | | | '
                     f'{row["linear_top1"]:.2f} | | | | |')
    by_group = {}
    for run in runs:
        by_group.setdefault(group_name(run), []).append(run)
    for group, s in summarise(runs).items():
        members = by_group.get(group, [])
        init = [r['init'] for r in members if r.get('init')]
        lines.append(
            f'| {METHOD_NAMES.get(s["method"], s["method"])} | {len(s["seeds"])} | '
            f'{_cell(s["knn_top1"])} | {_against(s["knn_top1"], raw["knn_top1"])} | '
            f'{_cell(s["linear_top1"])} | {_against(s["linear_top1"], raw["linear_top1"])} | '
            f'{_cell([i["knn_top1"] for i in init])} | '
            f'{_cell([i["linear_top1"] for i in init])} |')
    return '\n'.join(lines) + '\n'


TABLE_TEXT = ('Moving object: Fashion-MNIST garments at seeded random offsets on a {canvas} × '
              '{canvas} canvas, pre-training, k-NN bank and queries on the canvas. Mean ± '
              'half-width of the 95 % t-interval over seeds; "higher" / "lower" than raw '
              'pixels when the interval of the difference excludes 0 (one-sample t, 3 seeds '
              'at least); random init: the network of seed 0 before training.\n\n')


def head_table(pixels: Dict[str, dict]):
    """``write_report``'s head table for the moving experiment."""
    return lambda runs: TABLE_TEXT.format(canvas=CANVAS) + moving_table(runs, pixels)
