# DINO-vMF on the CPU demo data: exactly the DINO demo (../dino/demo_fashion-mnist.py, inherited
# so that its tuning carries over) with the vMF changes: the vMF log-normaliser on both sides
# (p = the head's bottleneck dim), probability centering, and unnormalised prototypes.
_base_ = '../dino/demo_fashion-mnist.py'
model = dict(
    head=dict(norm_last_layer=False),
    loss=dict(vmf=True, centering='probability', approximation='exact'))
# an extra default hook, so the demo's custom_hooks (k-NN probe, ...) are inherited unchanged
default_hooks = dict(prototype_monitor=dict(type='PrototypeMonitorHook', interval=1))
