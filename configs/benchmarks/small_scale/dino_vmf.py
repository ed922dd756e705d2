# DINO-vMF, small-scale study: exactly ./dino.py (inherited, so its tuning carries over) with
# the vMF changes: the vMF log-normaliser on both sides (p = the bottleneck dim), probability
# centring and unnormalised prototypes.
_base_ = './dino.py'
model = dict(
    head=dict(norm_last_layer=False),
    loss=dict(vmf=True, centering='probability', approximation='exact'))
