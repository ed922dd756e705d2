"""fp16 + dynamic loss scaling on the CPU through mmengine's Runner: the loss scaler's state
(scale, growth tracker) is saved in the checkpoint and a resumed run continues bit-identically.
The scaler starts at 2^10 and grows every 2 clean steps, so the saved state is not the initial
one."""
import pytest
import torch
from test_resume_exact import ITERS, _Losses, assert_bitwise_equal, final_state, run

SCALER = dict(init_scale=2.0 ** 10, growth_interval=2)


class _Scales(_Losses):
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.by_iter[runner.iter] = runner.optim_wrapper.loss_scaler.get_scale()


def fp16(cfg):
    cfg.optim_wrapper.update(type='AmpDistillOptimWrapper', dtype='float16', loss_scale=SCALER)


@pytest.mark.slow
def test_fp16_scaler_state_is_saved_and_resumed_exactly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip('checks the CPU fp16 path')
    straight, scales = run(tmp_path / 'straight', configure=fp16, recorder=_Scales)
    assert straight.optim_wrapper.cast_dtype == torch.float16
    # the scale moved away from 2^10 (it doubles after 2 clean steps), so a lost state shows
    values = [scales[i] for i in sorted(scales)]
    assert max(values) > 2.0 ** 10, values
    assert any(b == 2 * a for a, b in zip(values, values[1:])), values
    saved = torch.load(tmp_path / 'straight' / 'epoch_2.pth', weights_only=False)
    scaler = saved['optimizer']['loss_scaler']
    assert scaler['scale'] != SCALER['init_scale']  # a lost state would show
    assert scaler['scale'] == scales[2 * ITERS - 1] and scaler['growth_interval'] == 2

    resumed, resumed_scales = run(tmp_path / 'resumed', configure=fp16, recorder=_Scales,
                                  resume_from=str(tmp_path / 'straight' / 'epoch_2.pth'))
    assert {i: scales[i] for i in resumed_scales} == resumed_scales
    a, b = final_state(straight), final_state(resumed)
    assert 'loss_scaler' in a['optimizer']
    assert_bitwise_equal(a, b)
