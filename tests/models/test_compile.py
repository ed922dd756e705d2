"""``model.compile`` (``tools/train.py --compile``): the backbone and head of student and
teacher run through ``torch.compile`` as one graph each, give the eager losses and gradients,
keep the eager checkpoint keys, and a compiled run resumes bit-identically.

Most tests use dynamo with the ``aot_eager`` backend (same graph capture and autograd
tracing as inductor, eager kernels): inductor compiles C++ kernels, which takes minutes on
the shared 2-core machine. One slow test runs inductor itself when a C++ compiler exists."""
import copy
import os.path as osp
import shutil
import sys

import pytest
import torch
from mmengine.runner import Runner

from mmselfsup_vmf.models.utils.compile import compile_kwargs

sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'engine'))
sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'integration'))
from test_amp_fp16_cpu import StepRecorder, batch, build_model, build_wrapper, demo_cfg, rel_err  # noqa: E402
from test_resume_exact import assert_bitwise_equal, final_state  # noqa: E402
from tiny_dino_cfg import tiny_dino_cfg  # noqa: E402


class CountingBackend:
    """A torch.compile backend that runs dynamo's graph as is and counts the graphs (on the
    class: the model config, and the backend in it, is deep-copied when the model is built)."""

    graphs = 0

    def __call__(self, gm, example_inputs):
        CountingBackend.graphs += 1
        return gm.forward


def train(model, cfg, steps=3):
    wrapper = build_wrapper(cfg, model)
    recorder = StepRecorder(model, wrapper.optimizer)
    losses = []
    for step in range(steps):
        torch.manual_seed(step)
        losses.append(model.train_step(copy.deepcopy(batch()), wrapper)['loss'].item())
    return losses, recorder.grads


def compare_with_eager(method, compile_cfg, rtol, drop_path=0.1, num_layers=None):
    cfg = demo_cfg(method)
    cfg.model.backbone.drop_path_rate = drop_path  # its numpy-float rate must not break graphs
    if num_layers is not None:
        cfg.model.backbone.arch.num_layers = num_layers
    eager = build_model(cfg)
    cfg.model.compile = compile_cfg
    compiled = build_model(cfg)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefix
    compiled.load_state_dict(eager.state_dict())
    l_eager, g_eager = train(eager, cfg)
    l_comp, g_comp = train(compiled, cfg)
    for a, b in zip(l_comp, l_eager):
        assert a == pytest.approx(b, rel=rtol, abs=rtol)
    for step, (gc, ge) in enumerate(zip(g_comp, g_eager)):
        for name, ref in ge.items():
            if ref is not None:
                assert rel_err(gc[name], ref) < rtol, f'step {step}: {name}'
    return compiled


@pytest.mark.slow
@pytest.mark.parametrize('method', ['simdinov2', 'ibot_vmf'])
def test_compiled_model_matches_eager_in_one_graph_per_part(method):
    CountingBackend.graphs = 0
    # fullgraph=True: any graph break (e.g. a data-dependent branch) raises
    compiled = compare_with_eager(method, dict(backend=CountingBackend(), fullgraph=True),
                                  rtol=1e-5)
    for parts in (compiled.teacher.module, compiled._student_modules()):
        assert all(m._compiled_call_impl is not None for m in parts.values())
    # student: backbone on global (masked) and local crops, head on CLS and patches;
    # teacher: backbone and head on the global crops; one graph each
    assert 4 <= CountingBackend.graphs <= 12, CountingBackend.graphs


def test_compile_argument():
    assert compile_kwargs(None) is None and compile_kwargs(False) is None
    assert compile_kwargs(True) == dict(dynamic=False)
    assert compile_kwargs(dict(mode='max-autotune')) == dict(dynamic=False, mode='max-autotune')
    with pytest.raises(TypeError, match='model.compile must be'):
        compile_kwargs('yes')


@pytest.mark.slow
def test_inductor_matches_eager():
    if not (shutil.which('g++') or shutil.which('c++') or shutil.which('clang++')):
        pytest.skip('inductor needs a C++ compiler on the CPU; none found')
    # inductor reorders float sums (1e-5 after one step, amplified by AdamW's normalised
    # early updates to ~2e-4 by step 2, hence 1e-3) and draws random numbers with its own
    # generator, so drop-path masks would differ from eager ones: no drop-path here
    compare_with_eager('simdino', True, rtol=1e-3, drop_path=0.0, num_layers=2)


def run_tiny(work_dir, epochs, compile_cfg, resume_from=None):
    cfg = tiny_dino_cfg(work_dir, epochs=4)
    cfg.train_cfg.max_epochs = epochs
    cfg.default_hooks.checkpoint.max_keep_ckpts = -1
    cfg.model.compile = compile_cfg
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, resume_from
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


@pytest.mark.slow
def test_compiled_run_resumes_exactly_and_checkpoints_load_eagerly(tmp_path):
    compile_cfg = dict(backend='aot_eager')
    straight = run_tiny(tmp_path / 'straight', 4, compile_cfg)
    ckpt = str(tmp_path / 'straight' / 'epoch_2.pth')
    resumed = run_tiny(tmp_path / 'resumed', 4, compile_cfg, resume_from=ckpt)
    assert_bitwise_equal(final_state(straight), final_state(resumed))
    # the compiled run's checkpoint resumes without compilation too (same keys)
    eager = run_tiny(tmp_path / 'eager', 3, None, resume_from=ckpt)
    assert eager.iter == 6 and eager.model.compile_args is None


def test_train_tool_compile_flag():
    from testing_utils import load_tool
    train_tool = load_tool('tools/train.py', 'train_tool_compile')
    cfg_path = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))),
                        'configs', 'simdino', 'demo_fashion-mnist.py')
    for argv, expected in (([], None), (['--compile'], True)):
        args = train_tool.parse_args([cfg_path, *argv])
        cfg = train_tool.merge_args(train_tool.Config.fromfile(cfg_path), args)
        assert cfg.model.get('compile') == expected


def test_compilation_announces_itself_and_its_cache(tmp_path, monkeypatch):
    """``--compile`` used to be minutes of silence: a line when the model is built (with the
    inductor cache directory), one when the training graphs start compiling, and one when
    the first compiled iteration is done."""
    from testing_utils import mmengine_messages

    from mmselfsup_vmf.models.utils.compile import CompileAnnouncer

    def about_compile(messages):
        return [m for m in messages if m.startswith('torch.compile')]

    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'kernels'))
    with mmengine_messages() as said:
        CompileAnnouncer(dict(dynamic=False))  # inductor, the default backend: not run here
    said = about_compile(said)
    assert len(said) == 1 and 'graphs compile at their first call' in said[0]
    assert f"compiled kernels are cached in {tmp_path / 'kernels'}" in said[0]

    cfg = demo_cfg('dino')
    cfg.model.compile = dict(backend='aot_eager')
    with mmengine_messages() as said:
        model = build_model(cfg)
        built = about_compile(said)
        assert len(built) == 1 and "backend='aot_eager'" in built[0] and 'cached' not in built[0]
        train(model, cfg, steps=1)
        assert about_compile(said)[1:] == [
            'torch.compile: compiling the training graphs (first iteration)...']
        train(model, cfg, steps=2)
    done = about_compile(said)[2:]
    assert len(done) == 1 and done[0].startswith('torch.compile: first compiled iteration done in ')
