"""Reading the published ``.pth`` checkpoints (the official training code's format).

They are read with ``torch.load(weights_only=True)`` only: a file that needs any other object
unpickled is refused. The map count per object is not stored in them, so it is inferred from the
model family when the file allows it.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import Tensor

from l2s.errors import ModelLoadError

from .config import FAMILY_CHANNELS, PUBLISHED_PE_LENGTH, ClassifierConfig, preset

_PUBLISHED_KEYS = ("model_state_dict", "config", "training_config")
_EXP_NAME_FAMILY = {"flux_dev": "flux-dev", "flux_schnell": "flux-schnell", "sd14": "sd14",
                    "sd2": "sd21", "sd21": "sd21"}


def read_published_checkpoint(path: str | Path,
                              channels: int | None = None) -> tuple[ClassifierConfig, dict[str, Tensor]]:
    """The config and state dict of a published checkpoint; ``ModelLoadError`` if unusable.

    ``channels`` (maps per object) defaults to the model family's, found from
    ``training_config["exp_name"]``, the file name or the architecture (FLUX: 1368; SD1.4 and SD2.1
    cannot be told apart by weights).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"classifier checkpoint not found: {path}")
    checkpoint = _load_weights_only(path)
    if not isinstance(checkpoint, dict):
        raise ModelLoadError(f"{path} is not a classifier checkpoint (top level is "
                             f"{type(checkpoint).__name__}, expected a dict)")
    missing = [k for k in _PUBLISHED_KEYS if k not in checkpoint]
    if missing:
        raise ModelLoadError(f"{path} is not a classifier checkpoint (missing {', '.join(missing)})")
    state = checkpoint["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: model_state_dict is not a dict of tensors")
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        config = _config_from_published(checkpoint, path, channels)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{path}: unusable classifier config ({type(error).__name__}: "
                             f"{_first_line(error)})") from None
    return config, state


def _load_weights_only(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        if refused:  # the weights-only unpickler met a class or function it will not import
            raise ModelLoadError(f"refusing to load {path}: it needs the Python object "
                                 f"{refused.group(1)}, and only tensors and plain containers "
                                 f"are read from classifier checkpoints") from None
        raise ModelLoadError(f"cannot read classifier checkpoint {path}: not a valid "
                             f"PyTorch file") from None
    except Exception as error:  # torch raises many types for a damaged file
        raise ModelLoadError(f"cannot read classifier checkpoint {path}: "
                             f"{type(error).__name__}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _config_from_published(checkpoint: dict, path: Path,
                           channels: int | None) -> ClassifierConfig:
    model_cfg, training_cfg = checkpoint["config"], checkpoint["training_config"]
    if not isinstance(model_cfg, dict) or not isinstance(training_cfg, dict):
        raise TypeError("config and training_config must be dicts")
    extractor, head = model_cfg["extractor"], model_cfg["classifier"]
    _check_variant(extractor)
    class_names = _published_class_names(checkpoint)
    num_timesteps = int(model_cfg.get("num_timesteps", training_cfg.get("num_timesteps", 50)))
    pe_length = int(checkpoint.get("input_channels", PUBLISHED_PE_LENGTH))
    family, channels = _family_and_channels(training_cfg, path, model_cfg, num_timesteps, channels)
    default = preset(family).orig_map_size if family else None
    orig_map_size = training_cfg.get("orig_map_size", default)
    return ClassifierConfig(
        channels=channels,
        class_names=class_names,
        map_size=int(model_cfg.get("map_size", 16)),
        orig_map_size=None if orig_map_size is None else int(orig_map_size),
        timesteps=tuple(int(t) for t in training_cfg["timesteps"]),
        num_timesteps=num_timesteps,
        d_model=int(model_cfg.get("d_model", 256)),
        pe_length=pe_length,
        extractor_layers=int(extractor["num_layers"]),
        extractor_heads=int(extractor["nhead"]),
        extractor_ff=int(extractor["dim_feedforward"]),
        pool_heads=int(extractor["layer_attn_nheads"]),
        head_layers=int(head["num_layers"]),
        head_heads=int(head["nhead"]),
        head_ff=int(head["dim_feedforward"]),
        step_embedding_dim=int(head.get("timestep_embedding_dim", 16)),
        dropout=float(extractor.get("dropout", 0.3)),
        model_family=family or "custom",
    )


def _check_variant(extractor: dict) -> None:
    """Refuse extractor variants the architecture here does not implement."""
    step_mode = extractor.get("timestep_embedding", {"enable": True, "mode": "mid"})
    if not step_mode.get("enable", True) or step_mode.get("mode", "mid") != "mid":
        raise ValueError(f"only the published 'mid' step embedding is supported, got {step_mode}")
    if extractor.get("use_mean", False):
        raise ValueError("the 'use_mean' extractor variant is not supported")


def _family_and_channels(training_cfg: dict, path: Path, model_cfg: dict, num_timesteps: int,
                         channels: int | None) -> tuple[str | None, int]:
    family = _published_family(training_cfg, path, model_cfg, num_timesteps)
    if channels is not None and family is not None and channels != FAMILY_CHANNELS[family]:
        family = None  # e.g. a per-layer-mean variant: not the family's standard map layout
    if channels is None:
        if family is None:
            raise ValueError("the map channels are not recorded (SD1.4 or SD2.1? a custom model?); "
                             "pass channels= (128 for SD1.4, 195 for SD2.1)")
        channels = FAMILY_CHANNELS[family]
    return family, channels


def _published_class_names(checkpoint: dict) -> tuple[str, ...]:
    """Class names in index order, from ``idx_to_rel_name`` or else ``rel_name_to_idx``."""
    by_index: dict[int, str] = {}
    if isinstance(checkpoint.get("idx_to_rel_name"), dict):
        by_index = {int(i): str(n) for i, n in checkpoint["idx_to_rel_name"].items()}
    elif isinstance(checkpoint.get("rel_name_to_idx"), dict):
        by_index = {int(i): str(n) for n, i in checkpoint["rel_name_to_idx"].items()}
    if not by_index:
        raise KeyError("idx_to_rel_name / rel_name_to_idx")
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"class indices are not 0..{len(by_index) - 1}: {sorted(by_index)}")
    names = tuple(by_index[i] for i in range(len(by_index)))
    if isinstance(checkpoint.get("rel_name_to_idx"), dict):
        forward = {str(n): int(i) for n, i in checkpoint["rel_name_to_idx"].items()}
        if forward != {n: i for i, n in enumerate(names)}:
            raise ValueError("rel_name_to_idx and idx_to_rel_name disagree")
    return names


def _published_family(training_cfg: dict, path: Path, model_cfg: dict, num_timesteps: int) -> str | None:
    """The model family of a published checkpoint, or None when SD1.4 vs SD2.1 is undecidable."""
    exp_name = str(training_cfg.get("exp_name", "")).lower()
    if exp_name in _EXP_NAME_FAMILY:
        return _EXP_NAME_FAMILY[exp_name]
    flux_sized = int(model_cfg["extractor"]["num_layers"]) == 4  # the SD checkpoints use 2 layers
    if flux_sized and int(model_cfg.get("d_model", 256)) == 256:
        return "flux-schnell" if num_timesteps == 4 else "flux-dev"
    stem = path.stem.lower()  # the released files are named sd14.pth and sd2.pth
    if "sd14" in stem or "sd1_4" in stem:
        return "sd14"
    if "sd2" in stem:
        return "sd21"
    return None
