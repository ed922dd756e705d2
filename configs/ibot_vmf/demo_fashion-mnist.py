# iBOT-vMF on the CPU demo data: the iBOT demo with the vMF log-normaliser on the CLS and patch
# logits, probability centering for both, and unnormalised prototypes.
_base_ = '../ibot/demo_fashion-mnist.py'
model = dict(
    head=dict(norm_last_layer=False),
    loss=dict(vmf=True, centering='probability', approximation='exact'),
    patch_loss=dict(vmf=True, centering='probability', approximation='exact'))
