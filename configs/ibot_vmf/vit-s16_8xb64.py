# iBOT-vMF ViT-S/16: the iBOT ViT-S/16 recipe of ../ibot/vit-s16_8xb64.py with identical epochs
# and the vMF changes (docs/methods.md#ibot-and-ibot-vmf, all reconstructions): the vMF
# log-normaliser on the CLS logits (CLS prototype norms) and on the patch logits (the norms of
# the layer that produced them; the same prototypes with the shared head), each with its own
# temperature, and probability centering with a separate Pbar for CLS and patches.
# norm_last_layer=False.
# Switches whose default is the likely value (docs/methods.md#reconstructed-choices):
# centering='probability' ('logit' is the alternative), approximation='exact'.
_base_ = '../ibot/vit-s16_8xb64.py'
model = dict(
    head=dict(norm_last_layer=False),  # reconstruction
    loss=dict(vmf=True, dim=256, centering='probability', approximation='exact'),
    patch_loss=dict(vmf=True, dim=256, centering='probability',
                    approximation='exact'))
