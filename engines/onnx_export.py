"""ONNX export of the FLUX transformer (static shapes, cached on disk) and an onnxruntime runner.

The export is the input of the TensorRT build; the onnxruntime runner (CPU) exists to verify an
export against PyTorch where no GPU is at hand. torch 2.13's dynamo exporter handles FLUX at
opset 19 (it decomposes ``aten::rms_norm``); the legacy TorchScript exporter has no opset-19
symbolic for ``rms_norm`` and is kept as an explicit choice and a second try.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import torch

from .base import (
    EngineError,
    InputSignature,
    model_dtype,
    reject_attention_kwargs,
    tensor_inputs,
)
from .cache import default_cache_dir, entry_complete, model_cache_key, read_meta, staged_entry, write_meta

logger = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"  # every weight in one external file, as TensorRT's parser likes
OUTPUT_NAME = "sample"
# NVIDIA's FLUX TensorRT demo exports at opset 19; newer opsets add ops TensorRT may not parse.
DEFAULT_OPSET = 19
Exporter = Literal["auto", "dynamo", "legacy"]
EXPORTERS: tuple[str, ...] = get_args(Exporter)


class PositionalSampleModule(torch.nn.Module):
    """The transformer with positional tensor inputs (``input_names`` order) returning only the sample.

    Exporters and TensorRT speak positional tensors; ``return_dict=False`` keeps the output a plain
    tensor.
    """

    def __init__(self, transformer: torch.nn.Module, input_names: tuple[str, ...]) -> None:
        super().__init__()
        self.transformer = transformer
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.transformer(**dict(zip(self.input_names, tensors)), return_dict=False)[0]


@dataclass(frozen=True)
class OnnxExport:
    """A cached ONNX export: where it is, what it was built for, and how."""

    path: Path
    key: str
    signature: InputSignature
    exporter: str
    opset: int
    reused: bool
    seconds: float
    failed_exporters: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        return self.path.parent


def onnx_cache_entry(transformer: torch.nn.Module, signature: InputSignature,
                     cache_dir: str | Path | None, opset: int = DEFAULT_OPSET) -> tuple[str, Path]:
    """(key, directory) of the cached export of ``transformer`` for ``signature`` (present or not)."""
    # The exporter is not part of the key: both give the same function, verified at build time.
    key = model_cache_key(transformer, signature, {"artefact": "onnx", "opset": opset})
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return key, root / f"onnx-{key}"


def export_transformer_onnx(
    transformer: torch.nn.Module,
    example_inputs: Mapping[str, Any],
    cache_dir: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "auto",
) -> OnnxExport:
    """Export ``transformer`` for the static shapes of ``example_inputs``, reusing a cached export.

    The graph's inputs are the present FLUX tensor arguments, named as in ``forward``, and its one
    output is ``sample``. Weights go to ``model.onnx.data`` beside ``model.onnx``. ``exporter="auto"``
    tries the dynamo exporter, then the legacy one; the one used is recorded in the result.
    """
    if exporter not in EXPORTERS:
        raise EngineError(f"unknown ONNX exporter {exporter!r}: use {', '.join(EXPORTERS)}")
    inputs = tensor_inputs(example_inputs)
    signature = InputSignature.from_inputs(inputs)
    key, entry = onnx_cache_entry(transformer, signature, cache_dir, opset)
    if entry_complete(entry, (ONNX_FILE,)):
        meta = read_meta(entry)
        logger.info("reusing ONNX export %s", entry)
        return OnnxExport(
            entry / ONNX_FILE, key, signature, meta.get("exporter", "unrecorded"), opset, True, 0.0,
            tuple(meta.get("failed_exporters", ())),
        )

    require_packages(*export_packages(exporter))
    order = ("dynamo", "legacy") if exporter == "auto" else (exporter,)
    failures: list[str] = []
    start = time.perf_counter()
    with staged_entry(entry, (ONNX_FILE,)) as scratch:
        for name in order:
            try:
                _export(transformer, inputs, scratch / ONNX_FILE, opset, name)
            except Exception as error:  # exporters raise many types; all mean "this one failed"
                failures.append(f"{name}: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}")
                for leftover in scratch.iterdir():
                    leftover.unlink()
                continue
            write_meta(scratch, {
                "key": key, "exporter": name, "opset": opset, "inputs": signature.describe(),
                "model_dtype": str(model_dtype(transformer)), "failed_exporters": failures,
            })
            break
        else:
            raise EngineError("ONNX export failed with every exporter tried: " + "; ".join(failures))
    seconds = time.perf_counter() - start
    logger.info("exported ONNX (%s, opset %d) to %s in %.1f s", name, opset, entry, seconds)
    return OnnxExport(entry / ONNX_FILE, key, signature, name, opset, False, seconds, tuple(failures))


def _export(
    transformer: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    path: Path,
    opset: int,
    exporter: str,
) -> None:
    import onnx

    module = PositionalSampleModule(transformer, tuple(inputs)).eval()
    args = tuple(inputs.values())
    common = dict(input_names=list(inputs), output_names=[OUTPUT_NAME], opset_version=opset)
    # The exporters print progress lines, and torch's own deprecation notices (not the user's to
    # act on); the caller logs one line instead.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if exporter == "dynamo":
            torch.onnx.export(module, args, str(path), dynamo=True, external_data=True, **common)
        elif exporter == "legacy":
            torch.onnx.export(module, args, str(path), dynamo=False, do_constant_folding=True, **common)
        else:
            raise EngineError(f"unknown ONNX exporter {exporter!r}: use 'dynamo', 'legacy' or 'auto'")
    # Normalise the layout: the exporters differ (inline weights, one file per tensor, other
    # names); TensorRT and onnxruntime want one graph file plus one data file. The dynamo
    # exporter already writes that, and re-saving a 24 GB model is not free.
    if {p.name for p in path.parent.iterdir()} == {ONNX_FILE, ONNX_DATA_FILE}:
        return
    model = onnx.load(str(path), load_external_data=True)
    for stale in path.parent.iterdir():
        stale.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
        location=ONNX_DATA_FILE, size_threshold=1024,
    )


def require_packages(*names: str) -> None:
    """One line naming the extra that installs the missing ones of ``names`` (checked before any
    export work)."""
    from importlib.util import find_spec

    missing = [name for name in names if find_spec(name) is None]
    if missing:
        raise EngineError(f"ONNX engines need {', '.join(missing)}, not installed here: pip install 'l2s[onnx]'")


def export_packages(exporter: str) -> tuple[str, ...]:
    """What an export with ``exporter`` imports (the legacy TorchScript exporter needs no onnxscript)."""
    return ("onnx",) if exporter == "legacy" else ("onnx", "onnxscript")


class OnnxRuntimeEngine:
    """Runs an exported transformer with onnxruntime (default: CPU) for verification and benchmarks.

    Static shapes: calls must match the export's signature. onnxruntime's CPU provider has no
    bfloat16 kernels, so verify a float32 export.
    """

    kind = "onnxruntime"

    def __init__(
        self,
        export: OnnxExport,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        reason: str = "requested explicitly",
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime
        except ImportError as error:
            raise EngineError(f"the onnxruntime engine needs onnxruntime ({error}): pip install 'l2s[onnx]'") from error
        unsupported = [s.name for s in export.signature.specs if s.dtype not in _NUMPY_DTYPES]
        if unsupported:
            raise EngineError(
                f"onnxruntime cannot take {', '.join(unsupported)} as "
                f"{export.signature.describe()}: numpy has no bfloat16; verify a float32 export"
            )
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(export.path), options, providers=list(providers))
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise EngineError(f"onnxruntime cannot load {export.path}: {str(error)[:300]}") from error
        self.export = export
        self.signature = export.signature
        self.name = f"onnxruntime[{','.join(providers)}]"
        self.reason = reason

    def __call__(self, **transformer_kwargs: Any) -> torch.Tensor:
        reject_attention_kwargs(transformer_kwargs, self.name)
        inputs = tensor_inputs(transformer_kwargs)
        self.signature.check(inputs, self.name)
        devices = {t.device.type for t in inputs.values()}
        if devices != {"cpu"}:
            raise EngineError(f"{self.name} takes CPU tensors, got tensors on {sorted(devices)}")
        feeds = {name: t.detach().contiguous().numpy() for name, t in inputs.items()}
        (sample,) = self.session.run([OUTPUT_NAME], feeds)
        return torch.from_numpy(sample)


_NUMPY_DTYPES = {torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.bool}
