"""One log line for the parameters an optimiser constructor leaves out (requires_grad=False).

mmengine's ``DefaultOptimWrapperConstructor.add_params`` warns once per frozen parameter;
the EMA teacher of a self-distillation model has one per student parameter (about 60 lines
before the first iteration). ``FrozenParamsSummaryMixin`` drops those warnings and logs one
line with the count per top-level module instead.
"""
import logging
from collections import Counter
from contextlib import contextmanager

from mmengine.logging import MMLogger, print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmpretrain.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

SKIPPED_WARNING = 'is skipped since its requires_grad=False'


class _DropMessages(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextmanager
def dropped_messages(logger: logging.Logger, text: str):
    """Within the block, ``logger`` drops records whose message contains ``text``."""
    drop = _DropMessages(text)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


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
        with dropped_messages(MMLogger.get_current_instance(), SKIPPED_WARNING):
            super().add_params(params, module, prefix=prefix, **kwargs)
        summary = frozen_params_summary(module)
        if summary:
            print_log(f'optimiser: {summary}', logger='current')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DistillOptimWrapperConstructor(FrozenParamsSummaryMixin, DefaultOptimWrapperConstructor):
    """mmengine's ``DefaultOptimWrapperConstructor`` (same parameter groups) that reports the
    frozen (EMA teacher) parameters in one line instead of one warning each."""
