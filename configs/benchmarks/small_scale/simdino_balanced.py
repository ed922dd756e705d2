# SimDINO, small-scale study, balanced: ./simdino.py with the coding-rate balance moved to
# this batch and width. The n of alpha = d/(n*eps) and gamma = 1/n + 1/d is 352 instead of
# the batch (64): on the reference geometry of benchmarks/bench_simdino_balance.py this
# gives the expansion/alignment gradient ratio of the official ViT-B recipe (8 x 64, d 256):
# 2.60 against 2.60, where n = 64 gives 8.12 (rule: docs/simdino.md#small-batch-balance).
_base_ = ['./simdino.py']
model = dict(loss=dict(rate_batch=352))
