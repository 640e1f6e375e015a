"""The relation classifier: reads the spatial relation of two objects from their attention maps.

The architecture matches the published Learn-to-Steer code module for module (same submodule
names, same buffers), so a published ``.pth`` checkpoint loads with ``strict=True``:

* ``object_extractor`` (shared by subject and object) turns the ``C`` maps of one object into a
  single ``map_size x map_size`` map: every map is a token, projected, given a sinusoidal position
  (its channel index) and the step-index embedding (re-added before *every* encoder layer), run
  through a pre-norm transformer, and pooled by attention from one learned query.
* ``relation_classifier`` flattens the two extracted maps, projects them to one token, runs a
  pre-norm transformer on that length-1 sequence, appends a small step embedding and classifies
  with an MLP.

Our own on-disk format is a directory with ``model.safetensors`` and ``config.json``;
``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` add the hub's terms (:mod:`.hub`).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from l2s.errors import ClassifierMismatchError, ModelLoadError
from l2s.files import atomic_write_bytes

from .config import FAMILY_CHANNELS, ClassifierConfig, step_index_for
from .hub import ClassifierHubMixin, cache_entry_note, looks_like_hub_id, read_training_record
from .published import read_published_checkpoint

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# The head's positional encoding: the published code builds max_len 256 and uses position 0 only.
HEAD_PE_LENGTH = 256


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


class RelationClassifier(nn.Module, ClassifierHubMixin):
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

    @property
    def device(self) -> torch.device:
        """Where the weights are (what diffusers pipelines ask of their components)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def step_index(self, step: int) -> int:
        """The step index to pass to :meth:`forward` at sampling step ``step``."""
        return step_index_for(step, self.config.timesteps)

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed)."""
        from safetensors.torch import save

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        # Bytes written by l2s, not safetensors' save_file: the file then respects the umask (not 0600).
        atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu",
             channels: int | None = None) -> "RelationClassifier":
        """Load a classifier in eval mode from our directory format, a published ``.pth``, or a
        hub id already in the local Hugging Face cache (never downloaded: :meth:`from_pretrained` does).

        ``path`` may be the directory, a file inside it, or a published checkpoint file (detected
        automatically; ``channels`` then applies as in :func:`load_published_checkpoint`).
        Raises ``ModelLoadError`` for missing or corrupt files and mismatched weights.
        """
        path = Path(path)
        if not path.exists():
            if looks_like_hub_id(str(path)):
                try:
                    return cls.from_pretrained(str(path), local_files_only=True, map_location=map_location)
                except ModelLoadError:
                    if not Path(str(path).split("/")[0]).is_dir():
                        raise
            # "runs/clf" whose folder "runs" is here: a misspelt path more likely than a hub id not cached
            raise ModelLoadError(f"classifier not found: {path}")
        if path.is_file() and path.name not in (WEIGHTS_FILE, CONFIG_FILE):
            return load_published_checkpoint(path, map_location=map_location, channels=channels)
        directory = path if path.is_dir() else path.parent
        return load_classifier_folder(directory, map_location)


def load_classifier_folder(directory: Path, map_location: str | torch.device = "cpu") -> RelationClassifier:
    """A classifier folder (``model.safetensors`` + ``config.json``; ``training.json`` when recorded)."""
    model = _load_directory(Path(directory), map_location)
    model.training_record = read_training_record(directory)
    return model


def _load_directory(directory: Path, map_location: str | torch.device) -> RelationClassifier:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            if (directory / "best" / CONFIG_FILE).is_file():
                raise ModelLoadError(f"{directory} is a training run, not a classifier: use {directory / 'best'} "
                                     f"(the best epoch's weights) or {directory / 'last'}")
            raise ModelLoadError(f"classifier directory {directory} has no {required.name}"
                                 f"{cache_entry_note(directory)}")
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


def load_published_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                              channels: int | None = None) -> RelationClassifier:
    """Load a published ``.pth`` checkpoint (the official training code's format), in eval mode.

    Read with ``torch.load(weights_only=True)`` only: a file that needs any other object
    unpickled is refused. ``channels`` (maps per object) is not stored in the published files;
    by default it follows the model family, found from ``training_config["exp_name"]``, the file
    name or the architecture (FLUX: 1368; SD1.4 and SD2.1 cannot be told apart by weights).
    """
    config, state = read_published_checkpoint(path, channels)
    model = _build(config, state, str(Path(path))).to(map_location)
    model.training_record = _published_record(Path(path), config)
    return model


def _published_record(path: Path, config: ClassifierConfig) -> dict:
    """What a published checkpoint says of its training: its file, and the model family whose maps
    trained it where known (steering the other FLUX model then says so)."""
    record = {"source": f"the published Learn-to-Steer checkpoint {path.name}"}
    if config.model_family in FAMILY_CHANNELS:
        record["model_family"] = config.model_family
    return record


def convert_published_checkpoint(pth_path: str | Path, out_dir: str | Path,
                                 channels: int | None = None) -> Path:
    """Convert a published ``.pth`` to a classifier folder (``model.safetensors``, ``config.json``, a
    model card): what :meth:`RelationClassifier.from_pretrained` and ``push_to_hub`` take."""
    model = load_published_checkpoint(pth_path, channels=channels)   # its training record names the file
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    return out_dir
