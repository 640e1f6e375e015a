"""The classifier's configuration: sizes, classes, trained step indices, and the published presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from l2s.errors import ModelLoadError
from l2s.relations import PUBLISHED_CLASSES

from .layouts import first_blocks, flux_layout, layout_channels_count

FORMAT_VERSION = 1

MODEL_FAMILIES = ("flux-dev", "flux-schnell", "sd14", "sd21", "custom")
# Channels per object: FLUX 57 blocks x 24 heads; SD1.4 16 layers x 8 heads; SD2.1 heads vary per level.
FAMILY_CHANNELS = {"flux-dev": 1368, "flux-schnell": 1368, "sd14": 128, "sd21": 195}
# The published code sizes the extractor's positional encoding by 57*24 for every model.
PUBLISHED_PE_LENGTH = 1368
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
        self._check_sizes()
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

    def _check_sizes(self) -> None:
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


def preset(name: str, channels: int | None = None, layers: int | None = None, **overrides: Any) -> ClassifierConfig:
    """The published configuration for ``name`` ("flux-dev", "flux-schnell", "sd14", "sd21").

    ``channels`` defaults to the family's map count; ``overrides`` replace any other field.
    ``layers=K`` (FLUX families): a classifier of the first K of the transformer's 57 blocks
    (``layer_layout`` names them, ``channels`` is 24 K), so steering cuts the forward after block K.
    """
    family = _family_name(name)
    if family not in _PRESETS:
        raise ValueError(f"unknown classifier preset {name!r} (expected one of {', '.join(_PRESETS)})")
    fields = dict(_PRESETS[family], model_family=family)
    fields.update(overrides)
    if layers is not None:
        fields["layer_layout"], channels = _first_flux_blocks(family, layers, channels, fields["orig_map_size"])
    return ClassifierConfig(channels=FAMILY_CHANNELS[family] if channels is None else channels, **fields)


def _first_flux_blocks(family: str, layers: int, channels: int | None, grid: int | None) -> tuple[list, int]:
    """The layout of FLUX's first ``layers`` blocks and its channel count (checked against ``channels``)."""
    if not family.startswith("flux"):
        raise ValueError(f"layers= is defined for the FLUX presets, not {family!r}: give layer_layout instead")
    side = grid or 32
    layout = first_blocks(flux_layout(grid=(side, side)), layers)
    count = layout_channels_count(layout)
    if channels is not None and channels != count:
        raise ValueError(f"the first {layers} FLUX blocks give {count} channels, not {channels}")
    return layout, count


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
