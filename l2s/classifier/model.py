"""The relation classifier: reads the spatial relation of two objects from their attention maps.

The architecture follows the published Learn-to-Steer code module for module (same submodule
names, same buffers), so a published ``.pth`` checkpoint loads with ``strict=True``:

* ``object_extractor`` (shared by subject and object) turns the ``C`` maps of one object into a
  single ``map_size x map_size`` map: every map is a token, projected, given a sinusoidal position
  (its channel index) and the step-index embedding (re-added before *every* encoder layer), run
  through a pre-norm transformer, and pooled by attention from one learned query.
* ``relation_classifier`` flattens the two extracted maps, projects them to one token, runs a
  pre-norm transformer on that length-1 sequence, appends a small step embedding and classifies
  with an MLP.

Our own on-disk format is a directory with ``model.safetensors`` and ``config.json``; published
pickles are read with ``torch.load(weights_only=True)`` only and can be converted to it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from l2s.errors import ClassifierMismatchError, ModelLoadError
from l2s.relations import PUBLISHED_CLASSES

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

MODEL_FAMILIES = ("flux-dev", "flux-schnell", "sd14", "sd21", "custom")
# Channels per object: FLUX 57 blocks x 24 heads; SD1.4 16 layers x 8 heads; SD2.1 heads vary per level.
FAMILY_CHANNELS = {"flux-dev": 1368, "flux-schnell": 1368, "sd14": 128, "sd21": 195}
# The published code sizes the extractor's positional encoding by 57*24 for every model.
PUBLISHED_PE_LENGTH = 1368
# The head's positional encoding: the published code builds max_len 256 and uses position 0 only.
HEAD_PE_LENGTH = 256
DEV_TIMESTEPS = (5, 10, 15, 20, 25, 49)
SCHNELL_TIMESTEPS = (1, 3)


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild a classifier and to check that it fits a diffusion model."""

    channels: int  # maps per object the diffusion model provides
    class_names: tuple[str, ...] = PUBLISHED_CLASSES
    map_size: int = 16
    orig_map_size: int | None = None  # attention grid the maps came from; informational
    timesteps: tuple[int, ...] = DEV_TIMESTEPS  # step indices the classifier was trained on
    num_timesteps: int = 50  # rows of the step-index embeddings
    d_model: int = 256
    pe_length: int = PUBLISHED_PE_LENGTH
    extractor_layers: int = 4
    extractor_heads: int = 4
    extractor_ff: int = 512
    pool_heads: int = 4
    head_layers: int = 4
    head_heads: int = 8
    head_ff: int = 512
    step_embedding_dim: int = 16
    dropout: float = 0.3
    model_family: str = "flux-dev"
    layer_layout: list | None = None  # [[layer_name, heads, resolution], ...] making up the channels
    fc_dims: tuple[int, ...] = (256, 128)  # hidden sizes of the head's MLP (published: 256, 128)

    def __post_init__(self) -> None:
        self.class_names = tuple(str(n) for n in self.class_names)
        self.timesteps = tuple(int(t) for t in self.timesteps)
        self.fc_dims = tuple(int(d) for d in self.fc_dims)
        if self.channels < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.channels > self.pe_length:
            raise ValueError(f"channels ({self.channels}) exceed the positional encoding length "
                             f"({self.pe_length})")
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"need at least two distinct class names, got {self.class_names}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for the sinusoidal encoding, got {self.d_model}")
        for name in ("extractor_heads", "pool_heads", "head_heads"):
            if self.d_model % getattr(self, name):
                raise ValueError(f"d_model ({self.d_model}) is not divisible by {name} "
                                 f"({getattr(self, name)})")
        if not self.timesteps or any(not 0 <= t < self.num_timesteps for t in self.timesteps):
            raise ValueError(f"trained timesteps {self.timesteps} must lie in [0, {self.num_timesteps})")
        if self.model_family not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {self.model_family!r} "
                             f"(expected one of {', '.join(MODEL_FAMILIES)})")
        if self.layer_layout is not None:
            self.layer_layout = [list(entry) for entry in self.layer_layout]
            total = sum(_head_count(entry) for entry in self.layer_layout)
            if total != self.channels:
                raise ValueError(f"layer_layout describes {total} channels but channels is {self.channels}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (tuples become lists) including the format version."""
        data = dataclasses.asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        data["format_version"] = FORMAT_VERSION
        return data

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ClassifierConfig":
        """Inverse of :meth:`to_json`; raises ``ModelLoadError`` for a malformed config."""
        if not isinstance(d, Mapping):
            raise ModelLoadError(f"classifier config must be a JSON object, got {type(d).__name__}")
        data = dict(d)
        version = data.pop("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ModelLoadError(f"unsupported classifier format version {version!r} "
                                 f"(this l2s reads version {FORMAT_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelLoadError(f"unknown classifier config keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as error:
            raise ModelLoadError(f"invalid classifier config: {error}") from None


def _head_count(entry: list) -> int:
    """Heads one ``layer_layout`` entry contributes: a count or a list of head indices."""
    if len(entry) < 2:
        raise ValueError(f"layer_layout entry {entry!r} is not [layer_name, heads, resolution]")
    heads = entry[1]
    return len(heads) if isinstance(heads, (list, tuple)) else int(heads)


_FLUX_SIZES: dict[str, Any] = {}  # FLUX uses the dataclass defaults
_SD_SIZES = dict(extractor_layers=2, extractor_heads=2, extractor_ff=128, pool_heads=2,
                 head_layers=2, head_heads=4, head_ff=128)
_PRESETS: dict[str, dict[str, Any]] = {
    "flux-dev": dict(_FLUX_SIZES, timesteps=DEV_TIMESTEPS, num_timesteps=50, orig_map_size=32),
    "flux-schnell": dict(_FLUX_SIZES, timesteps=SCHNELL_TIMESTEPS, num_timesteps=4, orig_map_size=16),
    "sd14": dict(_SD_SIZES, timesteps=DEV_TIMESTEPS, num_timesteps=50, orig_map_size=16),
    "sd21": dict(_SD_SIZES, timesteps=DEV_TIMESTEPS, num_timesteps=50, orig_map_size=16),
}
_PRESET_ALIASES = {"sd2": "sd21", "sd1.4": "sd14", "sd2.1": "sd21", "dev": "flux-dev",
                   "schnell": "flux-schnell"}


def _family_name(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return _PRESET_ALIASES.get(key, key)


def preset(name: str, channels: int | None = None, **overrides: Any) -> ClassifierConfig:
    """The published configuration for ``name`` ("flux-dev", "flux-schnell", "sd14", "sd21").

    ``channels`` defaults to the family's map count; ``overrides`` replace any other field.
    """
    family = _family_name(name)
    if family not in _PRESETS:
        raise ValueError(f"unknown classifier preset {name!r} (expected one of {', '.join(_PRESETS)})")
    fields = dict(_PRESETS[family], model_family=family)
    fields.update(overrides)
    return ClassifierConfig(channels=FAMILY_CHANNELS[family] if channels is None else channels, **fields)


def step_index_for(step: int, trained: tuple[int, ...]) -> int:
    """The step index the classifier is given at sampling step ``step``.

    The next trained index at or after ``step`` (dev/SD: 0-5 -> 5, 6-10 -> 10, ..., 26-49 -> 49;
    schnell (1, 3): 0-1 -> 1, 2-3 -> 3); steps past the last trained index map to the last.
    """
    if not trained:
        raise ValueError("no trained timesteps given")
    if step < 0:
        raise ValueError(f"sampling step must be non-negative, got {step}")
    ordered = sorted(trained)
    return next((t for t in ordered if t >= step), ordered[-1])


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sin/cos encoding stored as the persistent buffer ``pe`` of shape (1, length, d_model)."""

    def __init__(self, d_model: int, length: int) -> None:
        super().__init__()
        position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(length, d_model)
        pe[:, 0::2] = torch.sin(position * frequency)
        pe[:, 1::2] = torch.cos(position * frequency)
        # Persistent: the published checkpoints carry it, and strict loading expects it.
        self.register_buffer("pe", pe.unsqueeze(0))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.pe[:, : x.size(1)]


def _pre_norm_encoder(d_model: int, heads: int, ff: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, activation="relu",
                                       batch_first=True, norm_first=True)
    # Nested tensors do not apply to norm_first layers; disabling them avoids a warning.
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class ObjectMapExtractor(nn.Module):
    """C maps of one object -> one map; published as ``CrossAttentionExtractor``."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        pixels, d = config.map_size ** 2, config.d_model
        self.map_size = config.map_size
        self.input_projection = nn.Linear(pixels, d)
        self.positional_encoding = SinusoidalPositionalEncoding(d, config.pe_length)
        self.timestep_embedding = nn.Embedding(config.num_timesteps, d)
        self.transformer = _pre_norm_encoder(d, config.extractor_heads, config.extractor_ff,
                                             config.extractor_layers, config.dropout)
        self.query_vector = nn.Parameter(torch.randn(1, 1, d))
        self.layer_attention = nn.MultiheadAttention(d, config.pool_heads, batch_first=True)
        self.output_projection = nn.Linear(d, pixels)

    def forward(self, maps: Tensor, step_index: Tensor) -> Tensor:
        """maps (B, C, m, m), step_index (B,) long -> (B, m, m)."""
        batch, channels = maps.shape[:2]
        x = self.positional_encoding(self.input_projection(maps.reshape(batch, channels, -1)))
        step = self.timestep_embedding(step_index).unsqueeze(1)  # broadcast over the C tokens
        # Published mode "mid": the step embedding is re-added before every encoder layer.
        for layer in self.transformer.layers:
            x = layer(x + step)
        query = self.query_vector.expand(batch, -1, -1)
        pooled, _ = self.layer_attention(query, x, x, need_weights=False)
        return self.output_projection(pooled).view(batch, self.map_size, self.map_size)


class RelationHead(nn.Module):
    """Two extracted maps -> class logits; published as ``RelationClassifierTransformer``."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        d = config.d_model
        self.projection = nn.Linear(2 * config.map_size ** 2, d)
        self.positional_encoding = SinusoidalPositionalEncoding(d, HEAD_PE_LENGTH)
        self.transformer = _pre_norm_encoder(d, config.head_heads, config.head_ff,
                                             config.head_layers, config.dropout)
        self.timestep_embedding = (nn.Embedding(config.num_timesteps, config.step_embedding_dim)
                                   if config.step_embedding_dim > 0 else None)
        layers: list[nn.Module] = []
        width = d + max(config.step_embedding_dim, 0)
        for hidden in config.fc_dims:
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.LeakyReLU(0.1),
                       nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, config.num_classes))
        self.fc = nn.Sequential(*layers)

    def forward(self, extracted: Tensor, step_index: Tensor) -> Tensor:
        """extracted (B, 2, m, m), step_index (B,) long -> logits (B, classes)."""
        x = self.projection(extracted.reshape(extracted.size(0), -1)).unsqueeze(1)  # one token
        x = self.transformer(self.positional_encoding(x)).squeeze(1)
        if self.timestep_embedding is not None:
            x = torch.cat([x, self.timestep_embedding(step_index)], dim=1)
        return self.fc(x)


class RelationClassifier(nn.Module):
    """Classifies the relation between a subject and an object from their attention maps."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.object_extractor = ObjectMapExtractor(config)
        self.relation_classifier = RelationHead(config)

    def forward(self, maps: Tensor, step_index: Tensor) -> Tensor:
        """Logits (B, num_classes) for maps (B, 2, C, m, m) (subject, object) at ``step_index``.

        ``step_index`` is the trained step index (see :func:`step_index_for`), shape (B,), (B, 1)
        or a scalar, any numeric dtype. Maps are cast to the classifier's dtype, so bf16 maps from
        the diffusion model keep their gradient path.
        """
        c = self.config
        expected = (2, c.channels, c.map_size, c.map_size)
        if maps.dim() != 5 or tuple(maps.shape[1:]) != expected:
            raise ClassifierMismatchError(
                f"classifier expects maps of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(maps.shape)}")
        batch = maps.size(0)
        step_index = torch.as_tensor(step_index, device=maps.device).reshape(-1).long()
        if step_index.numel() == 1:
            step_index = step_index.expand(batch)
        elif step_index.numel() != batch:
            raise ClassifierMismatchError(
                f"got {step_index.numel()} step indices for a batch of {batch} map pairs")
        maps = maps.to(self.object_extractor.input_projection.weight.dtype)
        subject = self.object_extractor(maps[:, 0], step_index)
        obj = self.object_extractor(maps[:, 1], step_index)
        return self.relation_classifier(torch.stack([subject, obj], dim=1), step_index)

    def step_index(self, step: int) -> int:
        """The step index to pass to :meth:`forward` at sampling step ``step``."""
        return step_index_for(step, self.config.timesteps)

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu",
             channels: int | None = None) -> "RelationClassifier":
        """Load a classifier in eval mode from our directory format or a published ``.pth``.

        ``path`` may be the directory, a file inside it, or a published checkpoint file (detected
        automatically; ``channels`` then applies as in :func:`load_published_checkpoint`).
        Raises ``ModelLoadError`` for missing or corrupt files and mismatched weights.
        """
        path = Path(path)
        if not path.exists():
            raise ModelLoadError(f"classifier not found: {path}")
        if path.is_file() and path.name not in (WEIGHTS_FILE, CONFIG_FILE):
            return load_published_checkpoint(path, map_location=map_location, channels=channels)
        directory = path if path.is_dir() else path.parent
        return _load_directory(directory, map_location)


def _load_directory(directory: Path, map_location: str | torch.device) -> RelationClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise ModelLoadError(f"classifier directory {directory} has no {required.name}")
    try:
        config_data = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {config_path}: {error}") from None
    config = ClassifierConfig.from_json(config_data)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelLoadError(f"corrupt classifier weights {weights_path}: {error}") from None
    return _build(config, state, str(weights_path)).to(map_location)


def _build(config: ClassifierConfig, state: Mapping[str, Tensor], source: str) -> RelationClassifier:
    """A classifier for ``config`` with ``state`` loaded strictly, in eval mode."""
    model = RelationClassifier(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ModelLoadError(f"classifier weights in {source} do not match its config; "
                             + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model.eval()


# --- published checkpoints ----------------------------------------------------------------------

_PUBLISHED_KEYS = ("model_state_dict", "config", "training_config")
_EXP_NAME_FAMILY = {"flux_dev": "flux-dev", "flux_schnell": "flux-schnell", "sd14": "sd14",
                    "sd2": "sd21", "sd21": "sd21"}


def load_published_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                              channels: int | None = None) -> RelationClassifier:
    """Load a published ``.pth`` checkpoint (the official training code's format), in eval mode.

    Read with ``torch.load(weights_only=True)`` only: a file that needs any other object
    unpickled is refused. ``channels`` (maps per object) is not stored in the published files;
    by default it follows the model family, found from ``training_config["exp_name"]``, the file
    name or the architecture (FLUX: 1368; SD1.4 and SD2.1 cannot be told apart by weights).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"classifier checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
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
    return _build(config, state, str(path)).to(map_location)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no details"


def _config_from_published(checkpoint: dict, path: Path,
                           channels: int | None) -> ClassifierConfig:
    model_cfg, training_cfg = checkpoint["config"], checkpoint["training_config"]
    if not isinstance(model_cfg, dict) or not isinstance(training_cfg, dict):
        raise TypeError("config and training_config must be dicts")
    extractor, head = model_cfg["extractor"], model_cfg["classifier"]
    step_mode = extractor.get("timestep_embedding", {"enable": True, "mode": "mid"})
    if not step_mode.get("enable", True) or step_mode.get("mode", "mid") != "mid":
        raise ValueError(f"only the published 'mid' step embedding is supported, got {step_mode}")
    if extractor.get("use_mean", False):
        raise ValueError("the 'use_mean' extractor variant is not supported")

    class_names = _published_class_names(checkpoint)
    num_timesteps = int(model_cfg.get("num_timesteps", training_cfg.get("num_timesteps", 50)))
    pe_length = int(checkpoint.get("input_channels", PUBLISHED_PE_LENGTH))
    family = _published_family(training_cfg, path, model_cfg, num_timesteps)
    if channels is not None and family is not None and channels != FAMILY_CHANNELS[family]:
        family = None  # e.g. a per-layer-mean variant: not the family's standard map layout
    if channels is None:
        if family is None:
            raise ValueError("the map channels are not recorded (SD1.4 or SD2.1? a custom model?); "
                             "pass channels= (128 for SD1.4, 195 for SD2.1)")
        channels = FAMILY_CHANNELS[family]
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


def convert_published_checkpoint(pth_path: str | Path, out_dir: str | Path,
                                 channels: int | None = None) -> Path:
    """Convert a published ``.pth`` to our ``model.safetensors`` + ``config.json`` directory."""
    model = load_published_checkpoint(pth_path, channels=channels)
    out_dir = Path(out_dir)
    model.save(out_dir)
    return out_dir
