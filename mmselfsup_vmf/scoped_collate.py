"""A collate function from a ``mmpretrain::`` base works in any config.

mmengine 0.10 tags every dict inherited from a ``scope::`` base with ``_scope_``, and
``Runner.build_dataloader`` passes all keys of ``collate_fn`` except ``type`` to the function
as keywords, so ``dict(type='default_collate', _scope_='mmpretrain')`` raises
``TypeError: default_collate() got an unexpected keyword argument '_scope_'`` (the other
registries' ``build`` consume ``_scope_``). :func:`resolve_collate_scope` does what ``build``
does: it looks ``type`` up in the ``FUNCTIONS`` registry of that scope (or mmengine's, as
``build`` falls back to) and drops the tag;
:func:`apply_scoped_collate_shim` makes ``Runner.build_dataloader`` call it first.
"""
import copy
from functools import wraps

from mmengine.registry import FUNCTIONS


def resolve_collate_scope(dataloader_cfg):
    """``dataloader_cfg`` with ``collate_fn._scope_`` replaced by the resolved function."""
    if not isinstance(dataloader_cfg, dict):
        return dataloader_cfg
    collate = dataloader_cfg.get('collate_fn')
    if not isinstance(collate, dict) or '_scope_' not in collate:
        return dataloader_cfg
    cfg = copy.copy(dataloader_cfg)
    collate = dict(collate)
    scope = collate.pop('_scope_')
    if isinstance(collate.get('type'), str):
        # the scope's own FUNCTIONS registry if it has one (mmpretrain has none), else the root
        function = FUNCTIONS.get(f"{scope}.{collate['type']}") or FUNCTIONS.get(collate['type'])
        if function is None:
            raise KeyError(f"collate_fn type {collate['type']!r} is not registered in the "
                           f'FUNCTIONS registry of scope {scope!r}')
        collate['type'] = function
    cfg['collate_fn'] = collate
    return cfg


def apply_scoped_collate_shim() -> None:
    from mmengine.runner import Runner
    build = Runner.build_dataloader
    if getattr(build, 'resolves_collate_scope', False):
        return

    @wraps(build)
    def build_dataloader(dataloader, *args, **kwargs):
        return build(resolve_collate_scope(dataloader), *args, **kwargs)

    build_dataloader.resolves_collate_scope = True
    Runner.build_dataloader = staticmethod(build_dataloader)
