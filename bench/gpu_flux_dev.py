#!/usr/bin/env python
"""What steering costs on FLUX.1-dev: the real transformer architecture with random weights, on a GPU.

No weights can be downloaded, so the script builds the FLUX.1-dev transformer (19 double + 38 single
blocks, 24 heads x 128, joint attention dim 4096, pooled 768, guidance embedding) with random weights,
initialised directly on the device in the benchmark dtype, inside a stock diffusers ``FluxPipeline``.
The text encoders (a 1-layer T5 of width 4096, a 1-layer CLIP of width 768) and the VAE (16 latent
channels, 4 blocks, so 512 px is a 32x32 token grid) are tiny stand-ins with the real interfaces;
they are outside every timed region. The relation classifier is the published FLUX.1-dev preset,
randomly initialised. Steering runs through :class:`l2s.pipelines.FluxSteeringPipeline` in both
execution modes, so what is timed is the code users run.

Measured per resolution (medians of ``--iterations`` runs after ``--warmup`` runs, torch.cuda.Event
timing, peak memory above what was allocated before the measurement):

* a plain transformer forward (no gradient);
* one steering iteration (forward with capture, classifier, backward to the latent, update), in
  ``reference`` mode (explicit attention, eager fp32 classifier, host-side stop test) and ``fast``
  mode: the pipeline's own refinement call, timed through its ``refine`` hook;
* the classifier's forward + backward to its maps, eager fp32 vs ``l2s.steer.compile_classifier``
  (bf16 under CUDA graphs on a GPU);
* one layer's map capture, forward + backward: explicit softmax vs the SDPA selector
  (``l2s.ops.selected_text_attention``) vs the native op (``l2s.ops.selected_text_softmax``);
* whole images (``--image-resolutions``): the denoising loop of a full steered generation, from the
  first transformer call to the VAE decode, for reference mode + reference schedule, then fast mode
  with every ``--presets`` schedule.

It prints one markdown table (times, speed-ups against the reference row of the same group measured
in the same run, peak memory) under a header naming the GPU and library versions, and writes it to
``--out``. ``--tiny`` runs the same code on the CPU with a tiny architecture (a smoke test).

Usage (device machine), from the repository root; the script imports ``l2s`` from its own
checkout, so no install is needed::

    python bench/gpu_flux_dev.py --resolutions 512 1024 --dtype bf16 --iterations 10
    python bench/gpu_flux_dev.py --tiny            # CPU smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before diffusers is imported: never download

REPO_ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__" and sys.path[0] != str(REPO_ROOT):
    # Run as a script from a checkout (no install): its own l2s comes first on the path.
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

import l2s  # noqa: E402
from l2s.classifier import RelationClassifier  # noqa: E402
from l2s.classifier import preset as classifier_preset  # noqa: E402
from l2s.demo import CLIP_VOCAB_SIZE, T5_VOCAB_SIZE, tiny_clip_tokenizer, tiny_t5_tokenizer  # noqa: E402
from l2s.ops import (  # noqa: E402
    cuda_backend,
    selected_text_attention,
    selected_text_softmax,
    selector_width,
    token_group_selector,
)
from l2s.pipelines import FluxSteeringPipeline  # noqa: E402
from l2s.steer import PRESETS, compile_classifier, custom_schedule, differentiable_sdpa, preset_steps  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DEFAULT_PROMPT = "a photo of a cat to the left of a dog"
# The capture-op rows: three object words, one of them two sub-word tokens.
CAPTURE_GROUPS = ((2,), (5, 6), (9,))
PUBLISHED_STEPS = 50      # FLUX.1-dev's default number of denoising steps
STEP_SIZE = 5.0           # the published FLUX step size (used by the one-iteration schedule)


# ------------------------------------------------------------------------------------------------
# Architectures
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """A FLUX-dev-shaped pipeline: transformer config, stand-in encoder/VAE sizes, classifier sizes."""

    name: str
    transformer: dict
    t5: dict
    clip: dict
    vae_channels: tuple[int, ...]           # 4 blocks: VAE scale factor 8, as FLUX's VAE
    classifier_overrides: dict = field(default_factory=dict)   # on top of preset("flux-dev")
    max_sequence_length: int = 512

    @property
    def heads(self) -> int:
        return self.transformer["num_attention_heads"]

    @property
    def head_dim(self) -> int:
        return self.transformer["attention_head_dim"]

    @property
    def layers(self) -> int:
        return self.transformer["num_layers"] + self.transformer["num_single_layers"]


FLUX_DEV = Architecture(
    name="FLUX.1-dev",
    # FluxTransformer2DModel's defaults are FLUX.1-dev's config; spelled out so the table is honest.
    transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                     attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                     pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    # Only the output widths matter (T5: 4096 per token, CLIP pooled: 768): one narrow layer each.
    t5=dict(d_model=4096, d_ff=256, d_kv=64, num_heads=2, num_layers=1),
    clip=dict(hidden_size=768, projection_dim=768, intermediate_size=256, num_attention_heads=2,
              num_hidden_layers=1),
    vae_channels=(8, 8, 8, 8),
)

TINY = Architecture(
    name="tiny FLUX-dev-shaped",
    transformer=dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                     attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                     pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
    t5=dict(d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=1),
    clip=dict(hidden_size=32, projection_dim=32, intermediate_size=37, num_attention_heads=4,
              num_hidden_layers=1),
    vae_channels=(4, 4, 4, 4),
    classifier_overrides=dict(d_model=32, extractor_layers=1, extractor_heads=2, extractor_ff=64,
                              pool_heads=2, head_layers=1, head_heads=2, head_ff=64, fc_dims=(32, 16)),
    max_sequence_length=64,
)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_flux_pipeline(arch: Architecture, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A diffusers ``FluxPipeline`` with ``arch``'s random transformer and tiny stand-in encoders/VAE."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    # Initialise the 12B-parameter transformer where it runs and in the dtype it runs in: an fp32
    # copy first would need 48 GB and a second pass.
    with torch.device(device), default_dtype(dtype):
        transformer = FluxTransformer2DModel(**arch.transformer).eval()
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=T5_VOCAB_SIZE, feed_forward_proj="relu", relative_attention_num_buckets=8,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, **arch.t5)).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        hidden_act="gelu", **arch.clip)).eval()
    blocks = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks, block_out_channels=arch.vae_channels,
        layers_per_block=1, latent_channels=arch.transformer["in_channels"] // 4,
        norm_num_groups=arch.vae_channels[0], use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False, shift_factor=0.1159, scaling_factor=0.3611).eval()
    # FLUX.1-dev's scheduler config (dynamic shifting by image size).
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                        tokenizer=tiny_clip_tokenizer(), text_encoder_2=text_encoder_2,
                        tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)
    return pipe.to(device, dtype)


def random_classifier(arch: Architecture, seed: int = 0) -> RelationClassifier:
    """The published FLUX.1-dev classifier configuration (sized for ``arch``), randomly initialised."""
    torch.manual_seed(seed)
    config = classifier_preset("flux-dev", channels=arch.layers * arch.heads, **arch.classifier_overrides)
    return RelationClassifier(config).eval()


# ------------------------------------------------------------------------------------------------
# Hooks into the pipeline (shared with bench/test_bench_steering.py)
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def intercept_refinement(steerer, handler: Callable) -> Iterator[None]:
    """Route ``steerer``'s refinement calls (its ``refine`` hook) through ``handler``.

    ``handler(refine, latents, step, log_prob_fn, schedule, num_relations, diagnostics, **kwargs)``
    gets the real function first and must return what it returns. This lets a benchmark time the
    pipeline's own refinement call (capture installed, its objective at the step, its mode's
    options) without re-implementing any of it.
    """
    original = steerer.refine

    def hook(*args, **kwargs):
        return handler(original, *args, **kwargs)

    steerer.refine = hook
    try:
        yield
    finally:
        steerer.refine = original


class ForwardCounter:
    """Counts calls of a module's forward (also those cut short after the last captured layer)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self.first_call_kwargs: dict | None = None
        self._handle = module.register_forward_pre_hook(self._on_call, with_kwargs=True)

    def _on_call(self, module, args, kwargs):
        if self.first_call_kwargs is None:
            self.first_call_kwargs = {k: v.detach() if torch.is_tensor(v) else v for k, v in kwargs.items()}
        self.count += 1

    def __enter__(self) -> "ForwardCounter":
        return self

    def __exit__(self, *exc_info) -> None:
        self._handle.remove()


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

class Clock:
    """Wall time of work on ``device``: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def elapsed_ms(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end)
        return (end - start) * 1e3

    @contextlib.contextmanager
    def memory(self) -> Iterator[dict]:
        """Yields a dict that gets ``peak_extra``: peak bytes allocated above the starting level."""
        out: dict = {"peak_extra": None}
        if self.cuda:
            self.sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        try:
            yield out
        finally:
            if self.cuda:
                self.sync()
                out["peak_extra"] = torch.cuda.max_memory_allocated() - base

    def measure(self, fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, int | None]:
        """(median milliseconds, peak extra bytes) of ``fn`` over ``repeats`` runs after ``warmup``."""
        for _ in range(warmup):
            fn()
        with self.memory() as mem:
            spans = []
            for _ in range(repeats):
                start = self.mark()
                fn()
                spans.append((start, self.mark()))
            self.sync()
        return statistics.median(self.elapsed_ms(a, b) for a, b in spans), mem["peak_extra"]


class LoopSpan:
    """Times a generation's denoising loop: first transformer call -> start of the VAE decode."""

    def __init__(self, pipe, clock: Clock) -> None:
        self.clock = clock
        self.start = self.end = None
        self._handles = [
            pipe.transformer.register_forward_pre_hook(self._on_transformer),
            pipe.vae.decoder.register_forward_pre_hook(self._on_decode),
        ]

    def _on_transformer(self, module, args):
        if self.start is None:
            self.start = self.clock.mark()

    def _on_decode(self, module, args):
        self.end = self.clock.mark()

    def elapsed_ms(self) -> float:
        self.clock.sync()
        return self.clock.elapsed_ms(self.start, self.end)

    def __enter__(self) -> "LoopSpan":
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------

@dataclass
class Row:
    resolution: int
    group: str
    variant: str
    ms: float | None = None
    peak_extra: int | None = None
    forwards: int | None = None
    note: str = ""
    baseline: bool = False      # the group's reference: other rows' speed-ups are against it


def one_iteration_schedule():
    """A 1-step schedule with a single refinement iteration: forward, classifier, backward, update."""
    return custom_schedule(1, steered=[0], iterations=1, step_size=STEP_SIZE, name="one iteration")


def measure_iteration(steerer: FluxSteeringPipeline, clock: Clock, resolution: int, prompt: str,
                      warmup: int, repeats: int) -> Row:
    """One steering iteration exactly as the pipeline runs it (its own refinement call)."""
    row = Row(resolution, "steering iteration (fwd+bwd to latent)", f"{steerer.mode.name} mode",
              baseline=steerer.mode.name == "reference")

    def time_refinement(refine, latents, step, log_prob, schedule, num_relations, diagnostics=None,
                        **kwargs):
        def once():
            return refine(latents, step, log_prob, schedule, num_relations, None, **kwargs)

        before = counter.count
        once()
        row.forwards = counter.count - before
        row.ms, row.peak_extra = clock.measure(once, warmup, repeats)
        return refine(latents, step, log_prob, schedule, num_relations, diagnostics, **kwargs)

    def run():
        with intercept_refinement(steerer, time_refinement):
            result = steerer(prompt, num_inference_steps=1, height=resolution, width=resolution,
                             schedule=one_iteration_schedule(), progress=False)
        row.note = f"p(target) {result.diagnostics.records[-1].target_probability[0]:.3f}"
        if result.diagnostics.non_finite_events():
            row.note += "; NON-FINITE loss or gradient"
        return row.ms, row.peak_extra

    with ForwardCounter(steerer.pipe.transformer) as counter:
        guarded(row, run)
    return row


def transformer_inputs(steerer: FluxSteeringPipeline, resolution: int, prompt: str) -> dict:
    """The keyword arguments the pipeline passes to the transformer at this resolution (step 0)."""
    with ForwardCounter(steerer.pipe.transformer) as counter:
        steerer(prompt, num_inference_steps=1, height=resolution, width=resolution, steer=False,
                progress=False)
    return counter.first_call_kwargs


def measure_plain_forward(steerer: FluxSteeringPipeline, clock: Clock, resolution: int, prompt: str,
                          warmup: int, repeats: int) -> Row:
    """A stock transformer forward (no capture, no gradient) on the pipeline's own inputs."""
    row = Row(resolution, "transformer forward (no grad)", "stock diffusers", forwards=1)
    outputs = []

    def run():
        call_kwargs = transformer_inputs(steerer, resolution, prompt)

        def forward():
            with torch.no_grad():
                outputs[:] = [steerer.pipe.transformer(**call_kwargs)[0]]

        measured = clock.measure(forward, warmup, repeats)
        if not bool(torch.isfinite(outputs[0]).all()):
            row.note = "NON-FINITE output"
        return measured

    row.ms, row.peak_extra = guarded(row, run)
    return row


def classifier_gradient(call, maps: torch.Tensor, steps: torch.Tensor, target: int) -> torch.Tensor:
    """Gradient of -log p(target) w.r.t. the maps: the classifier's share of a steering iteration."""
    x = maps.detach().requires_grad_(True)
    # The classifier's attention layers run SDPA and are differentiated: no cuDNN backward.
    with differentiable_sdpa(maps.device):
        log_prob = torch.log_softmax(call(x, steps).float(), dim=-1)[:, target]
    (grad,) = torch.autograd.grad(-log_prob.sum(), x)
    return grad


def measure_classifier(classifier: RelationClassifier, device: torch.device, dtype: torch.dtype,
                       clock: Clock, warmup: int, repeats: int) -> list[Row]:
    """Classifier forward + backward to its maps: eager fp32 vs the pipeline's compiled classifier."""
    config = classifier.config
    torch.manual_seed(0)
    maps = torch.rand(1, 2, config.channels, config.map_size, config.map_size, device=device)
    maps = maps / maps.sum(dim=(-2, -1), keepdim=True)       # attention maps sum to 1
    steps = torch.tensor([config.timesteps[0]], device=device)
    group = "classifier fwd+bwd to maps"

    eager_row = Row(0, group, "eager fp32", baseline=True)
    eager = copy.deepcopy(classifier).float().to(device)
    eager_row.ms, eager_row.peak_extra = guarded(
        eager_row, lambda: clock.measure(lambda: classifier_gradient(eager, maps, steps, 0), warmup, repeats))

    compiled_dtype = dtype if device.type == "cuda" else None     # as the pipeline compiles it
    how = "reduce-overhead" if device.type == "cuda" else "default mode"
    name = str(compiled_dtype or torch.float32).removeprefix("torch.")
    compiled_row = Row(0, group, f"torch.compile {name} ({how})")

    def compiled_run():
        # compile_classifier converts the module it is given: hand it a copy.
        compiled = compile_classifier(copy.deepcopy(classifier).to(device), device, compiled_dtype)
        started = time.perf_counter()
        classifier_gradient(compiled, maps, steps, 0)
        compiled_row.note = f"first call (compile) {time.perf_counter() - started:.0f} s"
        return clock.measure(lambda: classifier_gradient(compiled, maps, steps, 0), warmup, repeats)

    compiled_row.ms, compiled_row.peak_extra = guarded(compiled_row, compiled_run)
    return [eager_row, compiled_row]


def capture_op_variants(device: torch.device) -> dict[str, Callable]:
    """name -> f(q, k, selector (T, G), padded selector (T, W)) -> (B, H, N, G) maps."""
    return {
        # What reference mode does: materialise the text logits, softmax, average the group columns.
        "explicit softmax": lambda q, k, sel, padded: (
            (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1) @ sel.to(q.dtype)),
        # What fast mode's capture processors do (padded as they pad it).
        "SDPA selector (l2s.capture)": lambda q, k, sel, padded: (
            selected_text_attention(q, k, padded)[..., : sel.shape[1]]),
        # The custom op; an unbuilt kernel fails its row only (see guarded).
        "native op (l2s.ops)": lambda q, k, sel, padded: selected_text_softmax(q, k, sel),
    }


def measure_capture_op(arch: Architecture, resolution: int, device: torch.device, dtype: torch.dtype,
                       clock: Clock, warmup: int, repeats: int) -> list[Row]:
    """One layer's map capture (image queries x text keys), forward + backward to q and k."""
    tokens = (resolution // 16) ** 2
    torch.manual_seed(0)
    # FLUX's q and k come out of RMSNorm: unit scale, as randn.
    q = torch.randn(1, arch.heads, tokens, arch.head_dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(1, arch.heads, arch.max_sequence_length, arch.head_dim, device=device, dtype=dtype,
                    requires_grad=True)
    selector = token_group_selector(CAPTURE_GROUPS, arch.max_sequence_length, device=device, dtype=dtype)
    padded = token_group_selector(CAPTURE_GROUPS, arch.max_sequence_length,
                                  selector_width(len(CAPTURE_GROUPS), arch.head_dim, device),
                                  device=device, dtype=dtype)
    grad_out = torch.randn(1, arch.heads, tokens, len(CAPTURE_GROUPS), device=device, dtype=dtype)
    group = f"capture op, one layer fwd+bwd ({arch.heads} heads, {tokens}x{arch.max_sequence_length})"
    rows = []
    for name, fn in capture_op_variants(device).items():
        row = Row(resolution, group, name, baseline=name == "explicit softmax")
        rows.append(row)

        def step(fn=fn):
            # Differentiated pass: keep cuDNN's SDPA backward out (it failed on an H100).
            with differentiable_sdpa(device):
                torch.autograd.grad(fn(q, k, selector, padded), (q, k), grad_out)

        row.ms, row.peak_extra = guarded(row, lambda: clock.measure(step, warmup, repeats))
        if name.startswith("native") and device.type == "cuda" and row.ms is not None:
            row.note = f"backend {cuda_backend()}"
    return rows


def image_steps(preset: str, steps_for_50: int) -> int:
    """Denoising steps for ``preset``: its own FLUX.1-dev recommendation, scaled to ``steps_for_50``."""
    own = preset_steps(preset, "flux-dev", PUBLISHED_STEPS)
    return max(1, round(own * steps_for_50 / PUBLISHED_STEPS))


def warm_up(steerer: FluxSteeringPipeline, resolution: int, prompt: str, warmup: int) -> None:
    """Compile / record CUDA graphs at this resolution before a timed whole-image run."""
    schedule = custom_schedule(1, steered=[0], iterations=max(1, warmup), step_size=STEP_SIZE)
    steerer(prompt, num_inference_steps=1, height=resolution, width=resolution, schedule=schedule,
            progress=False)


def measure_image(steerer: FluxSteeringPipeline, preset: str, steps: int, resolution: int,
                  prompt: str, clock: Clock) -> Row:
    """The denoising loop of one steered generation with schedule preset ``preset``."""
    row = Row(resolution, "whole image, denoising loop", f"{steerer.mode.name} mode, {preset} schedule",
              baseline=steerer.mode.name == "reference" and preset == "reference")

    def generate():
        with clock.memory() as mem, LoopSpan(steerer.pipe, clock) as span, \
                ForwardCounter(steerer.pipe.transformer) as counter:
            result = steerer(prompt, num_inference_steps=steps, height=resolution, width=resolution,
                             schedule=preset, seed=0, progress=False)
        ms = span.elapsed_ms()
        row.forwards = counter.count
        records = result.diagnostics.records
        row.note = f"{steps} steps, {len(records)} steering iterations"
        if records:
            row.note += f", last p(target) {records[-1].target_probability[0]:.3f}"
        if result.diagnostics.non_finite_events():
            row.note += f", {len(result.diagnostics.non_finite_events())} NON-FINITE events"
        return ms, mem["peak_extra"]

    row.ms, row.peak_extra = guarded(row, generate)
    return row


def guarded(row: Row, measure: Callable[[], tuple]) -> tuple:
    """Run one measurement; out-of-memory or a failure becomes the row's note, not the run's end."""
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        row.note = "out of memory"
    except Exception as error:  # one broken path must not hide every other number
        row.note = f"failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None, None


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def _versions(device: torch.device) -> str:
    import diffusers
    import transformers

    parts = [f"torch {torch.__version__}", f"diffusers {diffusers.__version__}",
             f"transformers {transformers.__version__}"]
    if device.type == "cuda":
        parts.insert(1, f"CUDA {torch.version.cuda}")
        try:
            import triton
            parts.append(f"triton {triton.__version__}")
        except ImportError:
            parts.append("triton not installed")
    return ", ".join(parts)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _format_ms(ms: float) -> str:
    """At least four significant digits, so ratios recomputed from the table agree with it."""
    return f"{ms:.{max(0, 3 - math.floor(math.log10(ms)))}f}" if ms > 0 else f"{ms:g}"


def _gib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**30:.2f}"


def render_table(rows: Sequence[Row]) -> str:
    """The markdown table; speed-up = the group's reference time / this row's time."""
    baselines = {(r.resolution, r.group): r.ms for r in rows if r.baseline and r.ms}
    lines = ["| resolution | measurement | variant | time (ms) | speed-up vs ref | peak extra memory (GiB) "
             "| transformer forwards | notes |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        base = baselines.get((r.resolution, r.group))
        if r.ms is None:
            ratio = "n/a"
        elif r.baseline:
            ratio = "1.00x (ref)"
        elif base:
            ratio = f"{base / r.ms:.2f}x"
        else:
            ratio = "-"
        resolution = f"{r.resolution}²" if r.resolution else "-"
        time_ms = "n/a" if r.ms is None else _format_ms(r.ms)
        forwards = "" if r.forwards is None else str(r.forwards)
        lines.append(f"| {resolution} | {r.group} | {r.variant} | {time_ms} | {ratio} | {_gib(r.peak_extra)} "
                     f"| {forwards} | {r.note} |")
    return "\n".join(lines)


def render_report(rows: Sequence[Row], args: argparse.Namespace, arch: Architecture,
                  device: torch.device, resident: int | None, argv: Sequence[str]) -> str:
    t = arch.transformer
    header = [
        f"# Steering benchmark: {arch.name} architecture, random weights",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; device: {device_name(device)}",
        f"- versions: {_versions(device)}; l2s from {Path(l2s.__file__).parent}",
        f"- transformer: {t['num_layers']} double + {t['num_single_layers']} single blocks, "
        f"{arch.heads} heads x {arch.head_dim}, joint attention dim {t['joint_attention_dim']}, "
        f"random {args.dtype} weights"
        f"{f' ({_gib(resident)} GiB resident on the GPU)' if resident is not None else ''}; "
        f"text {arch.max_sequence_length} T5 tokens; batch 1",
        "- classifier: l2s.classifier.preset('flux-dev') sizes, random weights; text encoders and VAE "
        "are tiny stand-ins and are outside every timed region",
        f"- per-measurement times: median of {args.iterations} runs after {args.warmup} warm-up runs "
        f"({'torch.cuda.Event' if device.type == 'cuda' else 'time.perf_counter'}); whole images: one "
        "run, denoising loop only (first transformer call to VAE decode), after a warm-up",
        "- speed-up vs ref: the time of the group's reference row / this row's time, same run",
        f"- prompt: \"{args.prompt}\"; command: `python bench/gpu_flux_dev.py {' '.join(argv)}`",
        "",
    ]
    return "\n".join(header) + "\n" + render_table(rows) + "\n"


def default_out_path(arch: Architecture, device: torch.device) -> Path:
    name = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    model = "flux-dev" if arch is FLUX_DEV else "tiny"
    return RESULTS_DIR / f"{model}_{name}_{stamp}.md"


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="tiny architecture on the CPU (smoke run; defaults below change)")
    parser.add_argument("--resolutions", type=int, nargs="+",
                        help="image sides in pixels, multiples of 16 (default 512 1024; tiny 64 128)")
    parser.add_argument("--image-resolutions", type=int, nargs="*",
                        help="resolutions of the whole-image runs (default: the smallest of "
                             "--resolutions; give none to skip them)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="model dtype (default bf16; tiny fp32)")
    parser.add_argument("--iterations", type=int, help="timed runs per measurement (default 10; tiny 2)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 3; tiny 1)")
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS), default=list(PRESETS),
                        help="schedule presets for the fast-mode whole-image runs (default all)")
    parser.add_argument("--image-steps", type=int,
                        help=f"denoising steps for {PUBLISHED_STEPS}-step schedules; presets that "
                             "recommend fewer keep their proportion (fast: 28/50). Default "
                             f"{PUBLISHED_STEPS}; tiny 4")
    parser.add_argument("--no-micro", action="store_true",
                        help="skip the per-iteration / classifier / capture-op measurements")
    parser.add_argument("--device", help="default cuda (tiny: cpu)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads (default: torch's; tiny 1, steadier on a shared CPU)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--out", type=Path, help="markdown file to write (default bench/results/<auto>.md)")
    args = parser.parse_args(argv)
    tiny = args.tiny
    args.resolutions = args.resolutions or ([64, 128] if tiny else [512, 1024])
    if args.image_resolutions is None:
        args.image_resolutions = [min(args.resolutions)]
    args.dtype = args.dtype or ("fp32" if tiny else "bf16")
    args.iterations = args.iterations or (2 if tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    args.image_steps = args.image_steps or (4 if tiny else PUBLISHED_STEPS)
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.threads = args.threads or (1 if tiny else None)
    for side in args.resolutions + args.image_resolutions:
        if side % 16:
            parser.error(f"resolution {side} is not a multiple of 16 (VAE factor 8 x 2x2 packing)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run on the device machine, or use --tiny for a CPU smoke run")
    return args


def measure_micro(steerers: dict, classifier: RelationClassifier, arch: Architecture,
                  device: torch.device, dtype: torch.dtype, clock: Clock,
                  args: argparse.Namespace) -> list[Row]:
    """Per resolution: plain forward, one steering iteration per mode, capture op; then the classifier."""
    rows: list[Row] = []
    for resolution in args.resolutions:
        rows.append(measure_plain_forward(steerers["fast"], clock, resolution, args.prompt,
                                          args.warmup, args.iterations))
        for mode in ("reference", "fast"):
            rows.append(measure_iteration(steerers[mode], clock, resolution, args.prompt,
                                          args.warmup, args.iterations))
        rows.extend(measure_capture_op(arch, resolution, device, dtype, clock, args.warmup,
                                       args.iterations))
        print(f"micro measurements at {resolution}² done", file=sys.stderr)
    rows.extend(measure_classifier(classifier, device, dtype, clock, args.warmup, args.iterations))
    return rows


def measure_images(steerers: dict, clock: Clock, args: argparse.Namespace) -> list[Row]:
    """Whole images: reference mode + reference schedule, then fast mode with every preset."""
    rows: list[Row] = []
    presets = ["reference"] + [p for p in args.presets if p != "reference"]
    for resolution in args.image_resolutions:
        for mode in ("reference", "fast"):
            warm = Row(resolution, "warm-up", mode)
            guarded(warm, lambda mode=mode: warm_up(steerers[mode], resolution, args.prompt, args.warmup))
            if warm.note:
                print(f"warm-up {mode} at {resolution}²: {warm.note}", file=sys.stderr)
        runs = [("reference", "reference")] + [("fast", p) for p in presets]
        for mode, preset in runs:
            rows.append(measure_image(steerers[mode], preset, image_steps(preset, args.image_steps),
                                      resolution, args.prompt, clock))
            print(f"whole image {mode}/{preset} at {resolution}²: {rows[-1].ms} ms", file=sys.stderr)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = TINY if args.tiny else FLUX_DEV
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    clock = Clock(device)

    started = time.perf_counter()
    pipe = build_flux_pipeline(arch, device, dtype)
    resident = torch.cuda.memory_allocated() if device.type == "cuda" else None
    classifier = random_classifier(arch)
    # One classifier copy per mode: fast mode may compile (and convert) its own in place.
    steerers = {mode: FluxSteeringPipeline(pipe, copy.deepcopy(classifier), mode=mode,
                                           max_sequence_length=arch.max_sequence_length)
                for mode in ("reference", "fast")}
    print(f"built {arch.name} on {device_name(device)} in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)

    rows: list[Row] = []
    if not args.no_micro:
        rows.extend(measure_micro(steerers, classifier, arch, device, dtype, clock, args))
    rows.extend(measure_images(steerers, clock, args))

    report = render_report(rows, args, arch, device, resident, argv)
    out = args.out or default_out_path(arch, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"written to {out} ({time.perf_counter() - started:.0f} s in all)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
