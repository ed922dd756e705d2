"""mmselfsup_vmf: DINO/iBOT (with the vMF normaliser) and SimDINO/SimDINOv2 for mmpretrain.

Importing this package applies the stack shims and registers every class in mmpretrain's
registries, so a config only needs
``custom_imports = dict(imports=['mmselfsup_vmf'], allow_failed_imports=False)``.
"""
from . import scoped_collate, shims

shims.apply_all()
scoped_collate.apply_scoped_collate_shim()

from . import datasets, engine, evaluation, models  # noqa: E402,F401  (registration)

__version__ = '0.1.0'
