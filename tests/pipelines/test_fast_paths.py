"""The fast steering paths against the reference on a tiny FLUX: same steering, no host sync inside an
iteration, early exit at no extra cost, compiled blocks only during steered steps, options checked."""
import copy
import dataclasses
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import l2s.steer.refine as refine_module
from l2s.demo import tiny_classifier_for, tiny_flux_pipeline
from l2s.errors import UsageError
from l2s.pipelines import wrap_pipeline
from l2s.steer import MODES, custom_schedule

PROMPT = "a cat above a dog"
SIDE = 32


def given_plan(s):
    """``s`` steers PROMPT's relation as given, not parsed: GPU machines may lack spaCy."""
    s.given_relations = lambda prompt: [("cat", "above", "dog")] if prompt == PROMPT else None
    return s


def responsive(classifier):
    """A random classifier amplified so gradient steps move p(target) as on a trained one."""
    with torch.no_grad():
        classifier.object_extractor.input_projection.weight.mul_(1000.0)
        classifier.relation_classifier.fc[-1].weight.mul_(10.0)
    return classifier


@pytest.fixture(scope="module")
def pipe_and_classifier():
    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=2, guidance_embeds=True, seed=0)
    return pipe, responsive(tiny_classifier_for(pipe, seed=1))


def steerer(pipe_and_classifier, mode, **options):
    pipe, classifier = pipe_and_classifier
    return wrap_pipeline(pipe, copy.deepcopy(classifier), mode=mode, **options)


# aot_eager runs dynamo and AOTAutograd (the forward and backward graphs, the guards, the graph
# breaks) without inductor's cold C++ compile; the inductor run is the slow test below.
COMPILED_FOR_TESTS = dataclasses.replace(MODES["fast+compiled"], compile_backend="aot_eager")
SCHEDULE = custom_schedule(3, steered=[0, 1], iterations=4, step_size=5.0)


def trajectory(result):
    return [r.target_probability[0] for r in result.diagnostics.records]


def run(s, schedule=SCHEDULE, steps=3, prompt=PROMPT, seed=0):
    return s(prompt, num_inference_steps=steps, height=SIDE, width=SIDE, schedule=schedule, seed=seed,
             progress=False)


def test_reference_fast_and_compiled_modes_steer_alike(pipe_and_classifier):
    results = {name: run(steerer(pipe_and_classifier, mode))
               for name, mode in [("reference", "reference"), ("fast", "fast"), ("compiled", COMPILED_FOR_TESTS)]}
    reference = trajectory(results["reference"])
    assert len(reference) == 8 and reference[-1] > reference[0] + 0.3     # steering moved p(target)
    for name in ("fast", "compiled"):
        assert trajectory(results[name]) == pytest.approx(reference, rel=1e-4, abs=1e-6), name
        image = torch.tensor(list(results[name].images[0].tobytes()), dtype=torch.float32)
        expected = torch.tensor(list(results["reference"].images[0].tobytes()), dtype=torch.float32)
        assert (image - expected).abs().max() <= 1                        # pixels within one level


@pytest.mark.slow
def test_inductor_compiled_mode_steers_like_fast(pipe_and_classifier):
    fast = trajectory(run(steerer(pipe_and_classifier, "fast")))
    compiled = steerer(pipe_and_classifier, "fast+compiled")
    first = run(compiled)
    assert trajectory(first) == pytest.approx(fast, rel=1e-4, abs=1e-6)
    assert first.timings["steering_compile_s"] > 0


def test_fast_mode_runs_the_steered_forward_and_the_stock_one_where_it_cannot(pipe_and_classifier):
    """A hook on the transformer keeps the stock forward (with the capture): the same steering."""
    lean = steerer(pipe_and_classifier, "fast")
    expected = trajectory(run(lean))
    assert lean.objective._steered is not None
    handle = lean.pipe.transformer.register_forward_pre_hook(lambda *a: None)
    try:
        stock = steerer(pipe_and_classifier, "fast")
        assert trajectory(run(stock)) == pytest.approx(expected, rel=1e-6, abs=1e-7)
        assert stock.objective._steered is None
        with pytest.raises(UsageError, match="steered forward.*hooked"):
            run(steerer(pipe_and_classifier, COMPILED_FOR_TESTS))
    finally:
        handle.remove()


def test_a_fused_transformer_keeps_the_steered_forward_compiled_too(pipe_and_classifier):
    """After ``fuse_qkv_projections`` "fast" runs the steered forward (it fell back to the stock one) and
    the compiled mode steers as "fast" (it was refused); fusing rounds differently, nothing more."""
    pipe, classifier = pipe_and_classifier
    fused = copy.deepcopy(pipe)
    fused.transformer.fuse_qkv_projections()
    fast = steerer((fused, classifier), "fast")
    expected = trajectory(run(fast))
    assert fast.objective._steered is not None
    assert trajectory(run(steerer((fused, classifier), COMPILED_FOR_TESTS))) == pytest.approx(expected, rel=1e-4,
                                                                                               abs=1e-6)
    assert expected == pytest.approx(trajectory(run(steerer(pipe_and_classifier, "fast"))), rel=1e-4, abs=1e-6)


def test_compiled_steering_is_one_graph_for_every_prompt_relation_and_step(pipe_and_classifier):
    """Index-like inputs are device tensors and the step's constants are inputs: one compiled graph
    serves a second prompt with three objects and two relations (other groups, other classes)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    mode = dataclasses.replace(COMPILED_FOR_TESTS, compile_backend=counter)
    s = steerer(pipe_and_classifier, mode)
    with torch._dynamo.config.patch(recompile_limit=1):      # a recompile would fail (fullgraph)
        first = run(s)
        again = run(s, prompt="a frog above a cat below a dog", seed=1)
        # another pipeline compiles its own graph, not a recompile of this one's
        run(steerer(pipe_and_classifier, mode))
    assert again.plan.pairs == [(0, 1), (1, 2)] and {r.relation for r in again.diagnostics.records} == {0, 1}
    assert counter.frame_count == 2                          # one trace per pipeline, never again
    assert first.timings["steering_compile_s"] > 0
    assert "steering_compile_s" not in again.timings         # nothing compiled for the second prompt
    assert 0 < again.timings["steering"] <= again.timings["total"]
    # the steered forward never swaps processors: plain steps run the stock model as it was
    assert all(type(m.processor).__name__ == "FluxAttnProcessor"
               for m in s.pipe.transformer.modules() if hasattr(m, "processor"))


def test_compiled_modes_are_refused_where_they_cannot_run(pipe_and_classifier):
    from l2s.demo import tiny_sd_pipeline

    sd = tiny_sd_pipeline(seed=0)
    with pytest.raises(UsageError, match="FLUX"):
        wrap_pipeline(sd, tiny_classifier_for(sd, seed=0), mode="fast+compiled")
    with pytest.raises(UsageError, match="CUDA"):
        steerer(pipe_and_classifier, "fast+cudagraphs")


def test_capture_backend_is_an_option_with_the_same_steering(pipe_and_classifier):
    sdpa = steerer(pipe_and_classifier, "fast")
    native = steerer(pipe_and_classifier, "fast", capture_backend="native")
    assert sdpa.capture_backend == "sdpa" and native.capture_backend == "native"
    assert trajectory(run(native)) == pytest.approx(trajectory(run(sdpa)), rel=1e-4, abs=1e-6)
    with pytest.raises(UsageError, match="capture backend"):
        steerer(pipe_and_classifier, "fast", capture_backend="triton")
    with pytest.raises(UsageError, match="capture backend"):
        sdpa.capture_backend = "cuda"


@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_early_exit_never_runs_more_steering_forwards_than_the_reference_schedule(pipe_and_classifier, mode):
    s = steerer(pipe_and_classifier, mode)
    forwards = {}
    for preset in ("reference", "early-exit"):
        result = run(s, schedule=preset, steps=4)
        forwards[preset] = len(result.diagnostics.records)
        exits = [r for r in result.diagnostics.records if not r.updated]
        assert all(r is result.diagnostics.for_step(r.step)[-1] for r in exits)   # an exit ends its step
    assert forwards["reference"] == 2 * 16                        # flux-dev rule: steps 0-1 of 4
    assert forwards["early-exit"] < forwards["reference"]         # p >= 0.9 was reached
    # fast mode decides exactly where the reference mode does: same count
    other = run(steerer(pipe_and_classifier, "reference" if mode == "fast" else "fast"), schedule="early-exit",
                steps=4)
    assert len(other.diagnostics.records) == forwards["early-exit"]


# Reads of a value on the host: a sync on any device, wherever they are called from.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
# Copies to the host: on this CPU-only machine ``x.to(ids.device)`` (diffusers' rotary embedding)
# also reads as a copy to the CPU, though on a GPU it stays there; so only l2s's own calls count.
HOST_COPIES = ("cpu", "numpy", "to")


def _host_sync_traps(monkeypatch, armed):
    """Make every host read of a tensor raise while ``armed[0]`` is true."""
    def trap(name):
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, **kwargs):
            if armed[0] and (name in HOST_READS or _from_l2s() and (name != "to" or _to_cpu(*args, **kwargs))):
                raise AssertionError(f"host sync inside a steering iteration: Tensor.{name}")
            return original(self, *args, **kwargs)
        return wrapped

    for name in HOST_READS + HOST_COPIES:
        monkeypatch.setattr(torch.Tensor, name, trap(name))


# Ops whose result's shape depends on values (boolean masks, nonzero) wait for the device on CUDA;
# on the CPU no Tensor method is called for them, so a dispatch mode catches them.
_DATA_DEPENDENT = {torch.ops.aten.nonzero, torch.ops.aten.masked_select, torch.ops.aten._local_scalar_dense,
                   torch.ops.aten._unique2, torch.ops.aten.unique_consecutive, torch.ops.aten.unique_dim}
_INDEXING = {torch.ops.aten.index, torch.ops.aten.index_put, torch.ops.aten.index_put_}


class _DataDependentOpTrap(TorchDispatchMode):
    """Raise on an op that syncs on CUDA through its values while ``armed[0]`` is true."""

    def __init__(self, armed) -> None:
        super().__init__()
        self.armed = armed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        boolean_index = packet in _INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ())
        if self.armed[0] and (packet in _DATA_DEPENDENT or boolean_index):
            raise AssertionError(f"host sync inside a steering iteration: {func}")
        return func(*args, **(kwargs or {}))


def _from_l2s() -> bool:
    return sys._getframe(2).f_globals.get("__name__", "").startswith("l2s")


def _to_cpu(*args, **kwargs) -> bool:
    targets = list(args) + [kwargs.get("device")]
    return any((isinstance(t, str) and t.startswith("cpu")) or
               (isinstance(t, torch.device) and t.type == "cpu") for t in targets)


def test_no_host_sync_inside_a_steered_iteration(pipe_and_classifier, monkeypatch):
    """Forward, classifier, backward and update never read a tensor on the host: only the loop's one
    exit test per iteration (``any_active``) and the diagnostics read after the step may."""
    s = steerer(pipe_and_classifier, "fast")
    run(s)                                                    # warm: lazy set-up is not an iteration
    armed, decisions = [False], []
    refine, any_active, record = s.refine, refine_module.any_active, refine_module._record

    def unarmed(fn, note=None):
        def call(*args, **kwargs):
            armed[0] = False
            try:
                if note is not None:
                    note.append(1)
                return fn(*args, **kwargs)
            finally:
                armed[0] = True
        return call

    def armed_refine(*args, **kwargs):
        armed[0] = True
        try:
            with _DataDependentOpTrap(armed):
                return refine(*args, **kwargs)
        finally:
            armed[0] = False

    _host_sync_traps(monkeypatch, armed)
    monkeypatch.setattr(refine_module, "any_active", unarmed(any_active, decisions))
    monkeypatch.setattr(refine_module, "_record", unarmed(record))
    s.refine = armed_refine
    result = run(s)
    assert len(result.diagnostics.records) == len(decisions) == 8     # one exit test per iteration
    assert trajectory(result) == pytest.approx(trajectory(run(steerer(pipe_and_classifier, "fast"))))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["fast", "fast+compiled", "fast+cudagraphs"])
def test_no_host_sync_inside_a_steered_iteration_on_cuda(mode):
    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=2, guidance_embeds=True, seed=0).to("cuda")
    s = given_plan(wrap_pipeline(pipe, responsive(tiny_classifier_for(pipe, seed=1)), mode=mode))
    run(s)                                                    # compiles, captures graphs, warms up
    any_active, record, refine = refine_module.any_active, refine_module._record, s.refine

    def allowed(fn):
        def call(*args, **kwargs):
            torch.cuda.set_sync_debug_mode(0)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return call

    def strict_refine(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return refine(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    refine_module.any_active, refine_module._record, s.refine = allowed(any_active), allowed(record), strict_refine
    try:
        result = run(s)
    finally:
        refine_module.any_active, refine_module._record = any_active, record
    assert len(result.diagnostics.records) == 8


def test_the_classifier_follows_the_denoisers_device_and_drops_its_old_calls(pipe_and_classifier, monkeypatch):
    """The CPU half of the GPU test below: a denoiser now elsewhere (here "meta") moves the
    classifier there and drops the classifier calls made for the old device."""
    s = given_plan(steerer(pipe_and_classifier, "fast"))
    run(s)                                                     # builds the device's classifier calls
    objective = s.objective
    assert objective._steered is not None
    monkeypatch.setattr(type(objective), "device", property(lambda self: torch.device("meta")))
    objective._follow_denoiser()
    assert next(objective.classifier.parameters()).device.type == "meta"
    assert objective._classify is None and objective._steered is None


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_the_classifier_follows_a_pipeline_moved_after_wrapping(pipe_and_classifier, mode):
    pipe = tiny_flux_pipeline(num_layers=2, num_single_layers=2, guidance_embeds=True, seed=0)
    s = given_plan(wrap_pipeline(pipe, copy.deepcopy(pipe_and_classifier[1]), mode=mode))
    on_cpu = trajectory(run(s))
    s.pipe.to("cuda")        # without following, CUDA maps would meet a CPU classifier
    assert len(trajectory(run(s))) == len(on_cpu)
    assert next(s.objective.classifier.parameters()).device.type == "cuda"


@pytest.mark.parametrize("mode, engine, steer, whole", [
    ("fast", "auto", True, False), ("fast", "auto", False, False),    # nothing built per shape: one image
    ("fast+compiled", "auto", True, True), ("fast+compiled", "auto", False, False),
    ("fast", "compile", False, True),                                 # plain steps' engine: per batch size
])
def test_a_warm_up_given_a_batch_runs_one_image_unless_shapes_compile(pipe_and_classifier, mode, engine, steer,
                                                                         whole, monkeypatch):
    s = steerer(pipe_and_classifier, mode, engine=engine)
    calls = []
    monkeypatch.setattr(type(s), "__call__", lambda self, prompt, **kwargs: calls.append((prompt, kwargs["seed"])))
    s.warm_up([PROMPT, PROMPT], steer=steer, seed=[3, 4])
    assert calls == ([] if whole else [(PROMPT, 3)])   # a batch-1 graph or engine no call would use: none
