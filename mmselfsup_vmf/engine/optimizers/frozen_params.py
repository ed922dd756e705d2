"""One log line each for the frozen parameters and the per-parameter options of an optimiser.

mmengine's ``DefaultOptimWrapperConstructor.add_params`` warns once per frozen parameter
(the EMA teacher of a self-distillation model has one per student parameter) and logs one
``paramwise_options -- name:weight_decay=0.0`` line per bias / norm parameter: about 100
lines before the first iteration. ``FrozenParamsSummaryMixin`` drops those and logs one line
for each instead.
"""
import logging
from collections import Counter
from contextlib import contextmanager

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from ..hooks.divergence_guard import first_names

SKIPPED_WARNING = 'is skipped since its requires_grad=False'
PARAMWISE_PREFIX = 'paramwise_options -- '


class _DropMessages(logging.Filter):
    def __init__(self, texts):
        super().__init__()
        self.texts = texts
        self.dropped = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in self.texts):
            self.dropped.append(message)
            return False
        return True


@contextmanager
def dropped_messages(logger: logging.Logger, *texts: str):
    """Within the block, ``logger`` drops records containing one of ``texts``; yields the
    list of dropped messages."""
    drop = _DropMessages(texts)
    logger.addFilter(drop)
    try:
        yield drop.dropped
    finally:
        logger.removeFilter(drop)


def paramwise_summary(messages) -> str:
    """'weight_decay=0.0 on 39 parameters (a, b, c and 36 more)' from mmengine's
    ``paramwise_options -- <name>:<option>=<value>`` lines, one clause per setting."""
    by_setting = {}
    for message in messages:
        if message.startswith(PARAMWISE_PREFIX):
            name, _, setting = message[len(PARAMWISE_PREFIX):].rpartition(':')
            by_setting.setdefault(setting, []).append(name)
    return '; '.join(f'{setting} on {len(names)} parameters ({first_names(names)})'
                     for setting, names in by_setting.items())


def frozen_params_summary(module: nn.Module) -> str:
    """'60 parameters with requires_grad=False are not optimised (teacher: 60)', or ''."""
    counts = Counter(name.split('.')[0] for name, p in module.named_parameters()
                     if not p.requires_grad)
    if not counts:
        return ''
    where = ', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))
    return (f'{sum(counts.values())} parameters with requires_grad=False are not optimised '
            f'({where})')


class FrozenParamsSummaryMixin:
    """For subclasses of mmengine's optimiser constructors: one line for frozen parameters."""

    def add_params(self, params, module: nn.Module, prefix: str = '', **kwargs) -> None:
        if prefix:
            return super().add_params(params, module, prefix=prefix, **kwargs)
        with dropped_messages(MMLogger.get_current_instance(), SKIPPED_WARNING,
                              PARAMWISE_PREFIX) as dropped:
            super().add_params(params, module, prefix=prefix, **kwargs)
        for summary in (frozen_params_summary(module), paramwise_summary(dropped)):
            if summary:
                print_log(f'optimiser: {summary}', logger='current')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DistillOptimWrapperConstructor(FrozenParamsSummaryMixin, DefaultOptimWrapperConstructor):
    """mmengine's ``DefaultOptimWrapperConstructor`` (same parameter groups) that reports the
    frozen (EMA teacher) parameters in one line instead of one warning each."""
