# SimDINOv2, small-scale study, balanced: ./simdinov2.py with the coding-rate balance moved
# to this batch and width. The n of alpha = d/(n*eps) and gamma = 1/n + 1/d is 192 instead
# of the batch (64): on the reference geometry of benchmarks/bench_simdino_balance.py this
# gives the expansion/alignment gradient ratio of the official SimDINOv2 recipe (8 x 128,
# d 256): 3.72 against 3.75, where n = 64 gives 8.12 (docs/simdino.md#small-batch-balance).
_base_ = ['./simdinov2.py']
model = dict(loss=dict(rate_batch=192))
