"""A saved SpatialScore as a reward callable: ``scorer(images, prompts) -> (B,) mean scores``.

A reward-model folder holds the model (``config.json``, ``model.safetensors``) and the tokenizer
it reads prompts with (``tokenizer/``), so it loads with nothing else: :func:`load_reward_model`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from l2s.errors import L2SError, ModelLoadError

from .identity import TOKENIZER_DIR, reward_model_folder
from .model import SpatialScore
from .protocol import Images
from .text import PromptBatch, prompt_batch



def images_to_tensor(images: Images, size: int | None = None) -> torch.Tensor:
    """(B, 3, S, S) float in [0, 1] from PIL images, (B, H, W, 3) uint8 or (B, 3, H, W) float tensors;
    resized to ``size`` (bilinear) when it differs."""
    if isinstance(images, torch.Tensor):
        x = images
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float() / 255 if x.shape[-1] == 3 else x.float() / 255
        x = x.float()
    else:
        images = list(images)
        if not images:
            raise L2SError("no images to score")
        if len({image.size for image in images}) > 1:   # several sizes: brought to one before stacking
            side = size or max(images[0].size)
            images = [_square(image, side) for image in images]
        arrays = [np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    if x.ndim != 4 or x.shape[1] != 3:
        raise L2SError(f"images must be RGB, got a tensor of shape {tuple(x.shape)}")
    if size is not None and x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def _square(image, side: int):
    """``image`` at ``side`` x ``side`` (bilinear, antialiased), itself when it is that size already."""
    return image if image.size == (side, side) else image.resize((side, side), Image.BILINEAR)


class SpatialScorer:
    """A :class:`~l2s.reward.RewardFn`: the model's mean score of each image under its prompt."""

    def __init__(self, model: SpatialScore, tokenizer, batch_size: int = 256) -> None:
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def score(self, images: Images, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_var), each (B,) float32 on the CPU."""
        x = images_to_tensor(images, self.model.config.image_size)
        if x.shape[0] != len(prompts):
            raise L2SError(f"{x.shape[0]} images but {len(prompts)} prompts")
        batch = self.prompt_batch(prompts)
        means, log_vars = [], []
        for start in range(0, x.shape[0], self.batch_size):
            part = slice(start, start + self.batch_size)
            mean, log_var = self.model(x[part].to(self.device), batch[part].to(self.device))
            means.append(mean.float().cpu())
            log_vars.append(log_var.float().cpu())
        return torch.cat(means), torch.cat(log_vars)

    def prompt_batch(self, prompts: Sequence[str]) -> PromptBatch:
        """``prompts`` as the model reads them (parsed into clauses for the relational design)."""
        config = self.model.config
        return prompt_batch(self.tokenizer, prompts, config.text_len, clauses=config.design == "relational")

    def __call__(self, images: Images, prompts: Sequence[str]) -> torch.Tensor:
        return self.score(images, prompts)[0]

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(str(folder / TOKENIZER_DIR))
        return folder


def check_reward_model_folder(folder: str | Path) -> Path:
    """The folder a reward model loads from (``folder`` or its ``best/``), or a ``ModelLoadError``
    saying what is there instead; nothing is loaded."""
    folder = reward_model_folder(folder)
    if not (folder / TOKENIZER_DIR).is_dir():
        raise ModelLoadError(f"no reward model at {folder}: {_what_is_there(folder)}")
    return folder


def load_reward_model(folder: str | Path, device: str | torch.device = "cpu") -> SpatialScorer:
    """The :class:`SpatialScorer` saved in ``folder``, or in its ``best/`` (a ``l2s shapes
    train-reward`` run folder: the model with the best validation accuracy)."""
    from transformers import AutoTokenizer

    folder = check_reward_model_folder(folder)
    model = SpatialScore.from_pretrained(folder, device=device)
    return SpatialScorer(model, AutoTokenizer.from_pretrained(str(folder / TOKENIZER_DIR), local_files_only=True))


def _what_is_there(folder: Path) -> str:
    """Why ``folder`` is no reward model, in words: another command's output, or what is missing."""
    from l2s.files import KIND_FILE, OUTPUT_KINDS

    try:
        kind = (folder / KIND_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        kind = None
    if kind in OUTPUT_KINDS and kind != "train-reward":
        return f"it holds {OUTPUT_KINDS[kind]}; give a 'l2s shapes train-reward' folder"
    if not folder.is_dir():
        return "not a folder" if folder.exists() else "no such folder"
    if kind == "train-reward":
        return "this train-reward run has saved no model yet (rerun its command to train it)"
    return f"{TOKENIZER_DIR}/ missing (not a saved SpatialScore)"
