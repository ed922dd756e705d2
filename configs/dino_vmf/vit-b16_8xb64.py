# DINO-vMF ViT-B/16: the DINO ViT-B/16 recipe of ../dino/vit-b16_8xb64.py (400 epochs, clip 3.0
# per tensor, last layer frozen 3 epochs, teacher temperature 0.04 -> 0.07 over 50 epochs,
# K = 65536) with the vMF changes (docs/methods.md#dino-and-ibot-recipes):
#   1. vMF log-normaliser on both sides' logits (p = 256);
#   2. probability centering;
#   3. norm_last_layer=False (arXiv:2405.10939, abstract): the normaliser is what makes
#      unnormalised prototypes stable for ViT-B (plain DINO ViT-B needs norm_last_layer=True).
# Reconstructions, i.e. switches whose default is the likely value
# (docs/methods.md#reconstructed-choices): centering='probability' ('logit' is the
# alternative), approximation='exact' ('debye' for comparison with the paper's approximation).
_base_ = '../dino/vit-b16_8xb64.py'
model = dict(
    head=dict(norm_last_layer=False),  # arXiv:2405.10939
    loss=dict(vmf=True, dim=256, centering='probability',  # reconstruction
              approximation='exact'))
default_hooks = dict(prototype_monitor=dict(type='PrototypeMonitorHook'))  # logger's interval
