# iBOT-vMF ViT-B/16: the iBOT ViT-B/16 recipe of ../ibot/vit-b16_8xb64.py with identical epochs
# and the vMF changes (docs/methods.md#ibot-and-ibot-vmf): vMF term on the CLS and patch
# logits, probability centering for both, and unnormalised prototypes (norm_last_layer=False;
# plain iBOT ViT-B uses True). Reconstructions, i.e. switches whose default is the likely value
# (docs/methods.md#reconstructed-choices): centering='probability', approximation='exact'.
_base_ = '../ibot/vit-b16_8xb64.py'
model = dict(
    head=dict(norm_last_layer=False),  # reconstruction
    loss=dict(vmf=True, dim=256, centering='probability', approximation='exact'),
    patch_loss=dict(vmf=True, dim=256, centering='probability',
                    approximation='exact'))
