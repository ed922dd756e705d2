"""StopOnSignalHook's loader workers ignore SIGTERM, so when training ends the hook stops the
train loader's persistent workers itself: torch's clean-up of a garbage-collected Runner
cannot (it sends its stop message after the same collection closed the queue, then SIGTERM),
and each finished Runner used to leave an idle forked worker behind."""
import gc

from integration.tiny_dino_cfg import tiny_dino_cfg
from mmengine.hooks import Hook
from mmengine.runner import Runner
from testing_utils import loader_workers


class SeeWorkers(Hook):
    """The loader workers alive at each epoch's end (while training runs)."""

    def __init__(self):
        self.seen = set()

    def after_train_epoch(self, runner):
        self.seen |= {c.pid for c in loader_workers()}


def test_no_loader_worker_outlives_a_finished_runner(tmp_path):
    cfg = tiny_dino_cfg(tmp_path, epochs=2)  # the demo's loader: 1 persistent worker
    assert cfg.train_dataloader.num_workers == 1 and cfg.train_dataloader.persistent_workers
    before = {c.pid for c in loader_workers()}
    runner = Runner.from_cfg(cfg)
    probe = SeeWorkers()
    runner.register_hook(probe)
    runner.train()
    assert probe.seen - before  # the checks below can see a worker
    assert runner.iter == 4  # 32 images, batch 16, 2 epochs: the worker served every batch
    assert {c.pid for c in loader_workers()} <= before
    del runner
    gc.collect()
    assert {c.pid for c in loader_workers()} <= before
