"""LoRA adapters (peft) on a FluxTransformer2DModel: add, save, load onto a pipeline.

The adapter covers the attention projections (image and text streams: q, k, v, outputs) and the
feed-forward projections of every double-stream block, and the q, k, v, MLP-in and output
projections of every single-stream block; the embeddings, norms and the final projection stay
frozen. A saved adapter is a peft folder (``adapter_config.json`` + ``adapter_model.safetensors``);
:func:`apply_lora` merges it into the pipeline's transformer, so the pipeline stays a plain
diffusers pipeline (steering, capture and engines see ordinary Linear layers).
"""
from __future__ import annotations

from pathlib import Path

import torch

from l2s.errors import ModelLoadError, UsageError

# peft matches a string pattern against whole module names (re.fullmatch).
LORA_TARGETS = (r".*(transformer_blocks|single_transformer_blocks)\.\d+\."
                r"(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
                r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)")
ADAPTER_CONFIG = "adapter_config.json"


def add_lora(transformer, rank: int, alpha: float, seed: int = 0):
    """Wrap ``transformer`` in a :class:`peft.PeftModel` with a fresh adapter (A Gaussian, B zero,
    so it starts as the base model; A drawn from ``seed`` so every process starts identical)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, init_lora_weights="gaussian",
                        lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(transformer, config)


def adapter_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The trainable (adapter) parameters of a peft model, by name."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def lora_digest(folder: str | Path) -> str | None:
    """The fingerprint of the adapter ``folder`` loads (its ``adapter/`` for a GRPO run folder, not
    the run's checkpoint and log); None where there is no adapter."""
    from l2s.files import weights_digest

    try:
        return weights_digest(adapter_dir(folder))
    except ModelLoadError:
        return None


def adapter_dir(folder: str | Path) -> Path:
    """``folder`` when it holds an adapter, else its ``adapter/`` (a GRPO run's output folder)."""
    folder = Path(folder)
    for candidate in (folder, folder / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    why = f"{ADAPTER_CONFIG} missing" if folder.is_dir() else "not a folder" if folder.exists() else "no such folder"
    raise ModelLoadError(f"no LoRA adapter at {folder} ({why}); "
                         "a GRPO run writes it to OUT/adapter (`l2s shapes grpo --out OUT`)")


def apply_lora(pipe, folder: str | Path):
    """Load the adapter in ``folder`` onto ``pipe.transformer`` and merge it into the weights.

    Returns ``pipe`` (modified in place); its transformer is again a plain diffusers model.
    """
    from peft import PeftModel

    if getattr(pipe, "transformer", None) is None:
        raise UsageError("a LoRA adapter from l2s.grpo applies to FLUX pipelines (a transformer denoiser)")
    path = adapter_dir(folder)
    try:
        model = PeftModel.from_pretrained(pipe.transformer, str(path), is_trainable=False)
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        raise ModelLoadError(f"the LoRA adapter in {path} does not fit this model ({_first_problem(error)}); "
                             "it was trained for another one") from None
    pipe.transformer = model.merge_and_unload()
    return pipe


def _first_problem(error: Exception) -> str:
    """peft's error in one line: its first specific line (a size mismatch), and how many more."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = [line for line in lines[1:] if not line.startswith("Error(s)")] or lines or [type(error).__name__]
    more = f"; {len(detail) - 1} more like it" if len(detail) > 1 else ""
    return detail[0].rstrip(".") + more
