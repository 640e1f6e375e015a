"""SpatialScore: a small reward model that reads an image and a prompt and returns a Gaussian score.

Two designs (``SpatialScoreConfig.design``): "joint" (below) and "relational"
(:mod:`.relational`: parsed clauses look up their objects' places; a head reads the relation).
The image goes through a CNN with coordinate channels (where things are is the whole point) to a
grid of tokens with learned positions; the prompt's token ids through an embedding and a small
transformer. With ``grounding_layers`` > 0 each text token then looks up what it names in the
image (:class:`Grounding`: cross-attention that also returns, per head, the attended grid
position), so relation words can compare the places of their objects. A learned reward token
attends, with every image and text token, in a few joint transformer layers, and a head reads it
out as (mean, log-variance). The mean is the reward.
Weights save as safetensors beside a ``config.json`` (:meth:`SpatialScore.save_pretrained`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from l2s.errors import L2SError, ModelLoadError
from l2s.files import atomic_write_bytes

from .relational import RelationalHead, grid_places
from .text import PromptBatch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LOG_VAR_RANGE = (-8.0, 8.0)   # keeps the spread finite whatever the loss pushes it to
DESIGNS = ("joint", "relational")


@dataclass
class SpatialScoreConfig:
    vocab_size: int = 128
    pad_token_id: int = 0
    text_len: int = 32
    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64, 64)   # conv widths; all but the first halve the grid
    d_model: int = 64
    heads: int = 4
    text_layers: int = 2
    joint_layers: int = 2
    grounding_layers: int = 0   # text -> image lookups before the joint layers (0: none)
    design: str = "joint"       # "joint": reward token over all tokens; "relational": parsed clauses
    presence: bool = False      # relational: the head also reads how well each phrase matches
    ff_mult: int = 4
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)   # free-form notes kept with the weights

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise L2SError(f"unknown SpatialScore design {self.design!r} (choose {', '.join(DESIGNS)})")
        if self.design == "relational" and self.grounding_layers:
            raise L2SError("grounding layers belong to the joint design; the relational one looks places up itself")
        if self.presence and self.design != "relational":
            raise L2SError("presence belongs to the relational design (its head reads it per phrase)")
        halvings = 2 ** (len(self.channels) - 1)
        if not self.channels or self.image_size % halvings or self.image_size // halvings < 1:
            raise L2SError(f"{len(self.channels)} conv widths halve a {self.image_size}-px image "
                           f"{len(self.channels) - 1} times: that is no whole grid (use fewer widths)")

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** (len(self.channels) - 1)

    @classmethod
    def from_dict(cls, data: dict) -> SpatialScoreConfig:
        data = dict(data)
        data["channels"] = tuple(data.get("channels", cls.channels))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _layers(config: SpatialScoreConfig, count: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(config.d_model, config.heads, config.d_model * config.ff_mult,
                                       config.dropout, activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, count, enable_nested_tensor=False)


class ImageEncoder(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, grid**2, d) tokens; x/y coordinate channels are added first."""

    def __init__(self, config: SpatialScoreConfig) -> None:
        super().__init__()
        blocks, width = [], 5
        for i, out in enumerate(config.channels):
            blocks += [nn.Conv2d(width, out, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, out), nn.GELU()]
            width = out
        self.convs = nn.Sequential(*blocks)
        self.project = nn.Linear(width, config.d_model)
        self.position = nn.Parameter(torch.randn(config.grid ** 2, config.d_model) * 0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        ys = torch.linspace(-1, 1, h, device=images.device).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=images.device).view(1, 1, 1, w).expand(b, 1, h, w)
        x = self.convs(torch.cat([images * 2 - 1, xs, ys], dim=1))
        return self.project(x.flatten(2).transpose(1, 2)) + self.position


class Grounding(nn.Module):
    """Text tokens attend over image tokens; each gets back the content it found and, per head,
    the expected (x, y) of where it looked: an explicit place, not one the layers must decode."""

    def __init__(self, config: SpatialScoreConfig) -> None:
        super().__init__()
        d, self.heads = config.d_model, config.heads
        self.norm_text, self.norm_image = nn.LayerNorm(d), nn.LayerNorm(d)
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d + 2 * self.heads, d)
        self.register_buffer("places", grid_places(config.grid), persistent=False)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        (b, t, d), h = text.shape, self.heads
        split = lambda x: x.view(b, x.shape[1], h, d // h).transpose(1, 2)   # noqa: E731
        q, image_n = split(self.query(self.norm_text(text))), self.norm_image(image)
        weights = torch.softmax(q @ split(self.key(image_n)).transpose(-1, -2) / (d // h) ** 0.5, dim=-1)
        content = (weights @ split(self.value(image_n))).transpose(1, 2).reshape(b, t, d)
        places = (weights @ self.places).transpose(1, 2).reshape(b, t, 2 * h)
        return text + self.out(torch.cat([content, places], dim=-1))


class SpatialScore(nn.Module):
    """``model(images, prompts) -> (mean, log_var)``, each (B,)."""

    def __init__(self, config: SpatialScoreConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.image = ImageEncoder(config)
        self.embed = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.text_position = nn.Parameter(torch.randn(config.text_len, d) * 0.02)
        self.text = _layers(config, config.text_layers)
        if config.design == "relational":
            self.relational = RelationalHead(d, config.heads, config.grid, presence=config.presence)
            return
        self.kind = nn.Parameter(torch.randn(3, d) * 0.02)       # reward, text, image token types
        self.reward_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.grounding = nn.ModuleList(Grounding(config) for _ in range(config.grounding_layers))
        self.joint = _layers(config, config.joint_layers)
        self.head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2))

    def encode_text(self, prompts: torch.Tensor | PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(text tokens, padding mask) of ``prompts`` (ids or a :class:`PromptBatch`); trailing
        columns of padding are dropped."""
        input_ids = prompts.ids if isinstance(prompts, PromptBatch) else prompts
        ids = input_ids[:, :self.config.text_len]
        used = int((ids != self.config.pad_token_id).any(dim=0).nonzero().max()) + 1 if ids.numel() else 1
        ids = ids[:, :max(used, 1)]
        pad = ids == self.config.pad_token_id
        return self.text(self.embed(ids) + self.text_position[:ids.shape[1]], src_key_padding_mask=pad), pad

    def forward(self, images: torch.Tensor, prompts: torch.Tensor | PromptBatch | None = None,
                text: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score ``images`` against ``prompts`` (token ids, or a :class:`PromptBatch` for the
        relational design), reusing ``text`` (an :meth:`encode_text` result) when given."""
        text, pad = text if text is not None else self.encode_text(prompts)
        pictures = self.image(images)
        if self.config.design == "relational":
            if not isinstance(prompts, PromptBatch):
                raise L2SError("the relational SpatialScore reads a PromptBatch (prompt_batch(...)), not bare ids")
            mean, log_var = self.relational(text, pictures, prompts)
            return mean, log_var.clamp(*LOG_VAR_RANGE)
        for layer in self.grounding:
            text = layer(text, pictures)
        reward = self.reward_token.expand(images.shape[0], -1, -1)
        tokens = torch.cat([reward + self.kind[0], text + self.kind[1], pictures + self.kind[2]], dim=1)
        never = torch.zeros_like(pad[:, :1])
        mask = torch.cat([never, pad, never.expand(-1, pictures.shape[1])], dim=1)
        out = self.head(self.joint(tokens, src_key_padding_mask=mask)[:, 0])
        return out[:, 0], out[:, 1].clamp(*LOG_VAR_RANGE)

    # ---- persistence -------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_NAME).write_text(json.dumps({"model_type": "l2s-spatial-score", **asdict(self.config)},
                                                     indent=2) + "\n", encoding="utf-8")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(folder / WEIGHTS_NAME, save(state))   # not save_file: that one ignores the umask (0600)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device = "cpu") -> SpatialScore:
        folder = Path(folder)
        try:
            config = SpatialScoreConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")))
            model = cls(config)
            model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
        except (OSError, ValueError, RuntimeError, TypeError, SafetensorError) as error:
            raise ModelLoadError(f"no SpatialScore model at {folder} ({str(error).splitlines()[0][:200]})") from None
        return model.to(device).eval()
