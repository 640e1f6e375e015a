"""The relational design of SpatialScore: each clause's subject and object phrases look up where
they are in the image, and a head reads the relation from the two places.

Score = the sum over the prompt's clauses of log p(prompted relation | the two places), a spread
per clause besides. With ``presence`` the head also reads how strongly each phrase matches its
best places, so that an object missing from the image can lower the score. A generic joint
transformer has to discover that binding (which object is the subject, where it is, how the two
places compare) from pairwise preferences alone; with the binding given by the prompt's parse,
only the lookups and the comparison are learned.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .text import RELATIONS, PromptBatch


def grid_places(grid: int) -> torch.Tensor:
    """(grid**2, 2) cell centres (x, y) in [-1, 1], row-major like the image tokens."""
    axis = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2 - 1
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)


class RelationalHead(nn.Module):
    """(text tokens, image tokens, :class:`PromptBatch`) -> (mean, log_var), each (B,)."""

    def __init__(self, d_model: int, heads: int, grid: int, hidden: int = 64, presence: bool = False) -> None:
        super().__init__()
        self.heads, self.presence = heads, presence
        self.norm_image = nn.LayerNorm(d_model)
        self.query, self.key = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        features = (6 if presence else 4) * heads   # two places (x, y) per head, and with presence two matches
        self.head = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, len(RELATIONS) + 1))
        self.base_log_var = nn.Parameter(torch.zeros(()))
        self.register_buffer("places", grid_places(grid), persistent=False)

    def forward(self, text: torch.Tensor, image: torch.Tensor,
                prompts: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        (b, t, d), h = text.shape, self.heads
        clauses = prompts.relations.shape[1]
        phrases = prompts.phrases[..., :t].reshape(b, clauses * 2, t).to(text.dtype) @ text            # (B, 2C, d)
        q = self.query(phrases).view(b, clauses * 2, h, d // h).transpose(1, 2)         # (B, h, 2C, d/h)
        k = self.key(self.norm_image(image)).view(b, -1, h, d // h).transpose(1, 2)    # (B, h, N, d/h)
        logits = q @ k.transpose(-1, -2) / (d // h) ** 0.5                             # (B, h, 2C, N)
        weights = torch.softmax(logits, dim=-1)
        where = (weights @ self.places).permute(0, 2, 1, 3).reshape(b, clauses, 4 * h)  # both phrases' places
        if self.presence:   # how well a phrase matches anywhere: a softmax alone places a missing object too
            match = torch.logsumexp(logits, dim=-1) - math.log(logits.shape[-1])          # (B, h, 2C)
            where = torch.cat([where, match.transpose(1, 2).reshape(b, clauses, 2 * h)], dim=-1)
        out = self.head(where)
        used = prompts.relations >= 0
        log_p = torch.log_softmax(out[..., :-1], dim=-1).gather(-1, prompts.relations.clamp(min=0)[..., None])[..., 0]
        mean = (log_p * used).sum(dim=1)
        # log(exp(base) + sum of the used clauses' exp(s_c)), without overflow or inf * 0
        terms = out[..., -1].masked_fill(~used, float("-inf"))
        return mean, torch.logsumexp(torch.cat([self.base_log_var.expand(b, 1), terms], dim=1), dim=1)
