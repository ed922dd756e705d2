# DINO-vMF ViT-S/16 (Govindarajan et al., ICLR 2023): the DINO ViT-S/16 recipe of
# ../dino/vit-s16_8xb64.py with identical epochs, plus the vMF changes
# (docs/methods.md#dino-and-ibot-recipes):
#   1. logits <w_k, y>/tau + log C_p(||w_k||/tau) on both sides, p = 256 (bottleneck dim);
#   2. probability centering (q = softmax(l_t - log Pbar)) instead of DINO's logit centre;
#   3. unnormalised prototypes (norm_last_layer=False; already so for DINO ViT-S).
# Reconstructions, i.e. switches whose default is the likely value
# (docs/methods.md#reconstructed-choices): centering ('probability'; 'logit' = DINO's centre on
# the raw scores, which keeps the vMF term), approximation ('exact'; 'debye' = the paper's
# leading large-order term), norm_last_layer=False for ViT-S.
_base_ = '../dino/vit-s16_8xb64.py'
model = dict(
    head=dict(norm_last_layer=False),  # reconstruction
    loss=dict(vmf=True, dim=256, centering='probability',  # reconstruction
              approximation='exact'))
# kappa quantiles, teacher entropy / distinct argmax, warnings on collapse (an extra default
# hook, so the custom_hooks of the DINO recipe are inherited unchanged)
default_hooks = dict(prototype_monitor=dict(type='PrototypeMonitorHook'))  # logger's interval
