# iBOT-vMF ViT-B/16: the iBOT ViT-B/16 recipe of ../ibot/vit-b16_8xb64.py with identical epochs
# and the vMF changes (spec §2): vMF term on the CLS and patch logits, probability centering for
# both, and unnormalised prototypes (norm_last_layer=False [R]; plain iBOT ViT-B uses True).
# Switches with the spec's defaults: centering='probability' [R], approximation='exact'.
_base_ = '../ibot/vit-b16_8xb64.py'
model = dict(
    head=dict(norm_last_layer=False),  # [R]
    loss=dict(vmf=True, dim=256, centering='probability', approximation='exact'),  # [R]
    patch_loss=dict(vmf=True, dim=256, centering='probability',  # [R]
                    approximation='exact'))
