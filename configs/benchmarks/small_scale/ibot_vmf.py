# iBOT-vMF, small-scale study: ./ibot.py with the vMF log-normaliser on the CLS and patch
# logits, probability centring for both, and unnormalised prototypes.
_base_ = './ibot.py'
model = dict(
    head=dict(norm_last_layer=False),
    loss=dict(vmf=True, centering='probability', approximation='exact'),
    patch_loss=dict(vmf=True, centering='probability', approximation='exact'))
