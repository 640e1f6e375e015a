"""Rows that time one piece: the plain transformer forward, the classifier, one layer's map capture."""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import torch

from l2s.classifier import RelationClassifier
from l2s.ops import (
    cuda_backend,
    selected_text_attention,
    selected_text_softmax,
    selector_width,
    token_group_selector,
)
from l2s.steer import compile_classifier, differentiable_sdpa

from .report import Row
from .timing import Budget, Clock, ForwardCounter, guarded, timed_first_call

# The capture-op rows: three object words, one of them two sub-word tokens.
CAPTURE_GROUPS = ((2,), (5, 6), (9,))


def uncompile(module: torch.nn.Module) -> None:
    """Undo ``compile_repeated_blocks`` / ``Module.compile`` in place, so later rows run eager."""
    for sub in module.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:
            sub._compiled_call_impl = None    # what Module.compile sets; None restores eager calls


def transformer_inputs(steerer, resolution: int, prompt: str, batch: int) -> dict:
    """The keyword arguments the pipeline passes to the transformer at this resolution (step 0)."""
    with ForwardCounter(steerer.pipe.transformer, record_kwargs=True) as counter:
        steerer(prompt, num_inference_steps=1, height=resolution, width=resolution, steer=False,
                num_images=batch, progress=False)
    return counter.first_call_kwargs


def forward_rows(steerer, clock: Clock, resolution: int, prompt: str, args, budget: Budget) -> Iterator[Row]:
    """Plain forward (no grad): eager, then (unless ``--no-compile``; drawn lazily, so a caller can
    time other rows in between) the same with its repeated blocks compiled (regional)."""
    group = "transformer forward (no grad)"
    transformer = steerer.pipe.transformer
    kwargs = transformer_inputs(steerer, resolution, prompt, args.batch_size)

    def timed(row: Row, prepare: Callable[[], None] | None = None):
        def run():
            if prepare is not None:
                prepare()
            outputs = []

            def forward():
                with torch.no_grad():
                    outputs[:] = [transformer(**kwargs)[0]]

            cold = timed_first_call(forward, clock)
            measured = clock.measure(forward, args.warmup, args.repeats)
            if prepare is not None:
                row.note = f"cold compile + first call {cold:.1f} s"
            if not bool(torch.isfinite(outputs[0]).all()):
                row.note += "; NON-FINITE output"
            return measured
        row.ms, row.peak_extra = guarded(row, run, budget)
        row.forwards = 1
        return row

    yield timed(Row(resolution, group, "eager"))
    if args.no_compile:
        return
    compiled = Row(resolution, group, "compiled blocks (regional torch.compile)", against="eager")
    try:
        yield timed(compiled, lambda: transformer.compile_repeated_blocks(fullgraph=False))
    finally:
        uncompile(transformer)


def classifier_gradient(call, maps: torch.Tensor, steps: torch.Tensor, target: int) -> torch.Tensor:
    """Gradient of -log p(target) w.r.t. the maps: the classifier's share of a steering iteration."""
    x = maps.detach().requires_grad_(True)
    # The classifier's attention layers run SDPA and are differentiated: no cuDNN backward.
    with differentiable_sdpa(maps.device):
        log_prob = torch.log_softmax(call(x, steps).float(), dim=-1)[:, target]
    (grad,) = torch.autograd.grad(-log_prob.sum(), x)
    return grad


def classifier_rows(classifier: RelationClassifier, device: torch.device, clock: Clock, args,
                    budget: Budget) -> Iterator[Row]:
    """Forward + backward to the maps, one change per row: eager fp32 -> bf16 -> compiled ->
    compiled under CUDA graphs (what fast mode runs on a GPU)."""
    config = classifier.config
    torch.manual_seed(0)
    maps = torch.rand(args.batch_size, 2, config.channels, config.map_size, config.map_size, device=device)
    maps = maps / maps.sum(dim=(-2, -1), keepdim=True)       # attention maps sum to 1
    steps = torch.full((args.batch_size,), config.timesteps[0], device=device)
    group = f"classifier fwd+bwd to maps ({config.channels} maps per object)"
    fp32 = copy.deepcopy(classifier).float().to(device)
    bf16 = copy.deepcopy(classifier).to(device, torch.bfloat16)
    variants = [("eager fp32", None, lambda: fp32),
                ("eager bf16", "eager fp32", lambda: bf16),
                ("compiled bf16", "eager bf16", lambda: torch.compile(copy.deepcopy(bf16), dynamic=False)),
                ("compiled bf16 + CUDA graphs (fast mode's)", "compiled bf16",
                 lambda: compile_classifier(copy.deepcopy(classifier).to(device), device, torch.bfloat16))]
    for name, against, make in variants:
        row = Row(0, group, name, against=against)
        if name.startswith("compiled") and args.no_compile:
            continue
        if "CUDA graphs" in name and device.type != "cuda":
            row.note = "CUDA only"
            yield row
            continue

        def run(make=make, row=row, name=name):
            call = make()
            cold = timed_first_call(lambda: classifier_gradient(call, maps.to(_dtype(call)), steps, 0), clock)
            if name.startswith("compiled"):
                row.note = f"cold compile + first call {cold:.1f} s"
            return clock.measure(lambda: classifier_gradient(call, maps.to(_dtype(call)), steps, 0),
                                 args.warmup, args.repeats)

        row.ms, row.peak_extra = guarded(row, run, budget)
        yield row


def _dtype(call) -> torch.dtype:
    module = getattr(call, "_orig_mod", call)
    return next(module.parameters()).dtype


def capture_op_variants() -> dict[str, Callable]:
    """name -> f(q, k, selector (T, G), padded selector (T, W)) -> (B, H, N, G) maps."""
    return {
        # What reference mode does: materialise the text logits, softmax, average the group columns.
        "explicit softmax": lambda q, k, sel, padded: (
            (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1) @ sel.to(q.dtype)),
        # What fast mode's capture does with capture_backend "sdpa" (padded as it pads it).
        "SDPA selector": lambda q, k, sel, padded: selected_text_attention(q, k, padded)[..., : sel.shape[1]],
        # capture_backend "native": the custom op (Triton on a GPU).
        "native op": lambda q, k, sel, padded: selected_text_softmax(q, k, sel),
    }


def capture_rows(arch, resolution: int, device: torch.device, dtype: torch.dtype, clock: Clock, args,
                 budget: Budget) -> Iterator[Row]:
    """One layer's map capture (image queries x text keys), forward + backward to q and k."""
    tokens, text = (resolution // 16) ** 2, arch.max_sequence_length
    torch.manual_seed(0)
    # FLUX's q and k come out of RMSNorm: unit scale, as randn.
    q = torch.randn(args.batch_size, arch.heads, tokens, arch.head_dim, device=device, dtype=dtype,
                    requires_grad=True)
    k = torch.randn(args.batch_size, arch.heads, text, arch.head_dim, device=device, dtype=dtype,
                    requires_grad=True)
    selector = token_group_selector(CAPTURE_GROUPS, text, device=device, dtype=dtype)
    padded = token_group_selector(CAPTURE_GROUPS, text, selector_width(len(CAPTURE_GROUPS), arch.head_dim, device),
                                  device=device, dtype=dtype)
    grad_out = torch.randn(args.batch_size, arch.heads, tokens, len(CAPTURE_GROUPS), device=device, dtype=dtype)
    group = f"capture, one layer fwd+bwd ({arch.heads} heads, {tokens}x{text})"
    for name, fn in capture_op_variants().items():
        row = Row(resolution, group, name, against=None if name == "explicit softmax" else "explicit softmax")

        def step(fn=fn):
            with differentiable_sdpa(device):     # cuDNN's SDPA backward is kept out (it failed on an H100)
                torch.autograd.grad(fn(q, k, selector, padded), (q, k), grad_out)

        row.ms, row.peak_extra = guarded(row, lambda: clock.measure(step, args.warmup, args.repeats), budget)
        if name == "native op" and row.ms is not None:
            row.note = f"backend {cuda_backend()}" if device.type == "cuda" else "backend l2s_fast (CPU)"
        yield row
