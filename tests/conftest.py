import os

import pytest
import torch

# The CI machine has 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import mmselfsup_vmf  # noqa: E402,F401  (applies shims, registers modules)


@pytest.fixture(autouse=True)
def _fresh_message_hub():
    """Each test starts without iteration/epoch info left over from another test."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('mmselfsup_vmf_test')
    for key in ('epoch', 'iter', 'max_iters', 'max_epochs'):
        hub.runtime_info.pop(key, None)
    yield
