"""The benchmark's options, their defaults per run kind (full, ``--quick``, ``--tiny``) and its header."""
from __future__ import annotations

import argparse
import datetime
import platform
import re
from collections.abc import Sequence
from pathlib import Path

import torch

import l2s
from l2s.cli.help import OneLineParser
from l2s.engines import ENGINE_KINDS, EngineError, check_engine_request
from l2s.ops import ATTENTION_BACKENDS
from l2s.steer import PRESETS

from .arch import FLUX_DEV, TINY
from .steering import PUBLISHED_STEPS

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
REPO_ROOT = Path(__file__).resolve().parents[2]
PROG = "python bench/gpu_flux_dev.py"
# GPU runs are committed; tiny CPU runs go where git does not look.
GPU_RESULTS, CPU_RESULTS = REPO_ROOT / "bench" / "results", REPO_ROOT / "out" / "gpu_flux_dev"
# The slowest images, the published schedule's and front-loaded's, are left out.
QUICK_PRESETS = ["fast", "early-exit"]
QUICK_BUDGET_S = 330      # rows not started by then are skipped ...
QUICK_HARD_S = 345        # ... and one still running then is stopped, so a --quick run has a bounded length


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, program_name=PROG,
                      description="What steering costs on the FLUX.1-dev architecture (random weights).")
    p.add_argument("--tiny", action="store_true", help="tiny architecture on the CPU (smoke run; defaults change)")
    p.add_argument("--quick", action="store_true",
                   help=f"512² only, fewer repeats, no reference-mode or published-schedule images, presets "
                        f"{' '.join(QUICK_PRESETS)}, stop starting rows after {QUICK_BUDGET_S} s and stop a row "
                        f"still running at {QUICK_HARD_S} s")
    p.add_argument("--engine", choices=ENGINE_KINDS, default="eager",
                   help="plain-step engine of the whole-image runs, every fast mode (default eager; "
                        "reference mode runs eager)")
    p.add_argument("--capture-backend", choices=ATTENTION_BACKENDS, default="sdpa",
                   help="how fast mode computes maps (default sdpa; native = the l2s op, Triton on a GPU)")
    p.add_argument("--layers", type=int, nargs="*", metavar="K",
                   help="also time an iteration with a classifier of the first K blocks, per K "
                        "(default 1 4 19 38; quick 1 4 19; tiny 1 2; none: no such rows)")
    p.add_argument("--batch-size", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--throughput-batches", type=int, nargs="*", metavar="B",
                   help="batch sizes of the images-per-second rows (fast mode, `fast` preset, B seeds per call; "
                        "default 1 2 4 8; quick 1 4; tiny 1 2; none: no such rows)")
    p.add_argument("--resolutions", type=int, nargs="+", help="sides in pixels (default 512 1024; quick 512; tiny 64)")
    p.add_argument("--image-resolutions", type=int, nargs="*",
                   help="whole-image sides (default: the smallest resolution; give none to skip)")
    p.add_argument("--presets", nargs="+", choices=list(PRESETS),
                   help="schedule presets of the fast-mode whole images (default all; quick: "
                        f"{' '.join(QUICK_PRESETS)})")
    p.add_argument("--image-steps", type=int,
                   help=f"denoising steps for {PUBLISHED_STEPS}-step schedules (default {PUBLISHED_STEPS}; tiny 4); "
                        "presets that recommend fewer keep their proportion")
    p.add_argument("--no-reference", action="store_true",
                   help="no reference-mode rows (quick: no reference-mode whole image; iteration rows stay)")
    p.add_argument("--no-micro", action="store_true", help="whole images only")
    p.add_argument("--no-compile", action="store_true", help="no rows that compile (forward, iteration, classifier)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="model dtype (default bf16; tiny fp32)")
    p.add_argument("--repeats", type=int, help="timed runs per measurement (default 10; quick 5; tiny 2)")
    p.add_argument("--warmup", type=int, help="untimed runs first (default 3; quick 2; tiny 1)")
    p.add_argument("--budget-s", type=float,
                   help=f"skip rows not started after this many seconds (quick {QUICK_BUDGET_S})")
    p.add_argument("--hard-limit-s", type=float,
                   help=f"stop a row still running after this many seconds of the run (quick {QUICK_HARD_S})")
    p.add_argument("--device", help="default cuda (tiny: cpu)")
    p.add_argument("--threads", type=int, help="torch CPU threads (tiny default 1)")
    p.add_argument("--out", type=Path, help="folder of the report (.md + .jsonl; default bench/results/, "
                                            "tiny: out/gpu_flux_dev/)")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = fill_defaults(parser.parse_args(argv))
    problem = argument_problem(args)
    if problem is not None:
        parser.error(problem)
    return args


def fill_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The run kind's default for every option not given (an explicit 0 stays, to be refused)."""
    tiny, quick = args.tiny, args.quick
    args.resolutions = args.resolutions or ([64] if tiny else [512] if quick else [512, 1024])
    if args.image_resolutions is None:
        args.image_resolutions = [min(args.resolutions)]
    if args.presets is None:
        args.presets = QUICK_PRESETS if quick else list(PRESETS)
    if args.throughput_batches is None:
        args.throughput_batches = [1, 2] if tiny else [1, 4] if quick else [1, 2, 4, 8]
    if args.layers is None:
        args.layers = [1, 2] if tiny else [1, 4, 19] if quick else [1, 4, 19, 38]
    args.dtype = args.dtype or ("fp32" if tiny else "bf16")
    args.repeats = _given(args.repeats, 2 if tiny else 5 if quick else 10)
    args.warmup = _given(args.warmup, 1 if tiny else 2 if quick else 3)
    args.image_steps = _given(args.image_steps, 4 if tiny else PUBLISHED_STEPS)
    args.budget_s = _given(args.budget_s, QUICK_BUDGET_S if quick else None)
    if args.hard_limit_s is None and quick:
        args.hard_limit_s = max(QUICK_HARD_S, args.budget_s + 15)
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.threads = _given(args.threads, 1 if tiny else None)
    args.reference_images = not (quick or args.no_reference)
    return args


def _given(value, default):
    return default if value is None else value


def argument_problem(args: argparse.Namespace) -> str | None:
    """The first bad option as one line naming it (None: all fine); checked before a model is built."""
    blocks = (TINY if args.tiny else FLUX_DEV).layers
    counts = [("--batch-size", args.batch_size, 1), ("--repeats", args.repeats, 1), ("--warmup", args.warmup, 0),
              ("--image-steps", args.image_steps, 1), ("--threads", args.threads, 1),
              ("--budget-s", args.budget_s, 0), ("--hard-limit-s", args.hard_limit_s, 0)]
    for option, value, least in counts:
        if value is not None and value < least:
            return f"{option} must be {'positive' if least else 'zero or more'}, got {value:g}"
    if any(b < 1 for b in args.throughput_batches):
        return f"--throughput-batches must be positive, got {' '.join(map(str, args.throughput_batches))}"
    bad_layers = [k for k in args.layers if not 1 <= k <= blocks]
    if bad_layers:
        return f"--layers {bad_layers[0]}: the transformer has {blocks} blocks; choose 1 to {blocks}"
    for side in args.resolutions + args.image_resolutions:
        if side <= 0 or side % 16:
            return f"resolution {side} is not a positive multiple of 16 (VAE factor 8 x 2x2 packing)"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        return "no CUDA device here: run on a machine with a CUDA GPU, or use --tiny for a CPU smoke run"
    return engine_problem(args) or out_problem(args)


def engine_problem(args: argparse.Namespace) -> str | None:
    """Why ``--engine`` cannot run on ``--device`` in ``--dtype`` (a CUDA engine on the CPU, ...)."""
    try:
        check_engine_request(args.engine, args.device, DTYPES[args.dtype])
    except EngineError as error:
        return f"--engine {args.engine}: {error}"
    return None


def out_problem(args: argparse.Namespace) -> str | None:
    """Why the report cannot be written under ``--out`` (None: it can): refused before minutes of
    measuring, as the other bench scripts refuse their ``--json``."""
    from l2s.cli.checks import check_output_file
    from l2s.errors import UsageError

    try:
        arch = TINY if args.tiny else FLUX_DEV
        check_output_file(report_path(args, arch.name, torch.device(args.device)), "--out")
    except UsageError as error:
        return str(error)
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def versions(device: torch.device) -> str:
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


def report_path(args, arch_name: str, device: torch.device) -> Path:
    folder = args.out or (CPU_RESULTS if args.tiny else GPU_RESULTS)
    name = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    model = "tiny" if args.tiny else "flux-dev"
    return Path(folder) / f"{model}_{name}_{stamp}{'_quick' if args.quick else ''}.md"


def header(args, arch, device: torch.device, resident: int | None, calibration: str, argv: Sequence[str]) -> str:
    t = arch.transformer
    memory = f" ({resident / 2**30:.1f} GiB resident on the GPU)" if resident is not None else ""
    return "\n".join([
        f"# Steering benchmark: {arch.name} architecture, random weights",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}; device: {device_name(device)}",
        f"- versions: {versions(device)}; l2s from {Path(l2s.__file__).parent}",
        f"- transformer: {t['num_layers']} double + {t['num_single_layers']} single blocks, {arch.heads} heads x "
        f"{arch.head_dim}, joint attention dim {t['joint_attention_dim']}, random {args.dtype} weights{memory}; "
        f"text {arch.max_sequence_length} T5 tokens; batch {args.batch_size}",
        "- classifier: the published flux-dev sizes, random, with a calibrated responsive term "
        f"(`bench/flux_bench/steering_setup.py`): {calibration}",
        f"- plain-step engine of whole images: {args.engine} in every fast mode (reference mode runs eager); "
        f"capture backend of fast mode: {args.capture_backend}",
        f"- times: median of {args.repeats} runs after {args.warmup} warm-up runs "
        f"({'CUDA events' if device.type == 'cuda' else 'perf_counter'}); whole images (also per batch size): "
        "one run after a warm-up, the denoising loop only (end of prompt encoding to VAE decode); memory: peak "
        "allocated above the level before the measurement",
        "- speed-up: the named row's time / this row's time, same run; each row changes one thing from it",
        f"- command: `python bench/gpu_flux_dev.py {' '.join(argv)}`"
        + (f"; time budget {args.budget_s:.0f} s" if args.budget_s else "")
        + (f"; hard limit {args.hard_limit_s:.0f} s" if args.hard_limit_s else ""),
    ])
