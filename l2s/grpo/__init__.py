"""l2s.grpo: GRPO fine-tuning of flow-matching text-to-image models (Flow-GRPO's algorithm).

Model-agnostic: it takes any diffusers :class:`~diffusers.FluxPipeline` and any reward callable
``reward(images, prompts) -> (B,) float tensor``; a LoRA adapter (peft) is trained and saved,
and :func:`apply_lora` loads one onto a pipeline. Parts, in the order a run uses them:

* :mod:`.sde` — the sampler's SDE step with its Gaussian log-density, and the step KL;
* :mod:`.rollout` — sampling a FluxPipeline with log-probabilities (true CFG, per-image seeds);
* :mod:`.advantages` — top-k filtering and group-relative advantages;
* :mod:`.objective` — the clipped ratio objective with the KL penalty;
* :mod:`.lora`, :mod:`.ema` — the adapter and its moving average;
* :mod:`.trainer`, :mod:`.run` — epochs, data parallelism (accelerate), checkpoints, the log.
"""

from .advantages import STD_MODES, centred_rewards, group_advantages, top_k_mask
from .ema import AdapterEMA
from .lora import LORA_TARGETS, adapter_dir, adapter_parameters, add_lora, apply_lora
from .objective import LossTerms, grpo_loss
from .rollout import (
    Conditioning,
    Rollout,
    Schedule,
    decode,
    encode_prompts,
    flow_schedule,
    predict_velocity,
    sample,
)
from .run import GRPOResult, epoch_prompts, evaluate, run_epoch, train_grpo
from .sde import SDEStep, noise_scale, sde_step, step_kl
from .settings import MIN_GROUP, GRPOSettings
from .trainer import GRPOTrainer, seeds_for

__all__ = [
    "LORA_TARGETS",
    "MIN_GROUP",
    "STD_MODES",
    "AdapterEMA",
    "Conditioning",
    "GRPOResult",
    "GRPOSettings",
    "GRPOTrainer",
    "LossTerms",
    "Rollout",
    "SDEStep",
    "Schedule",
    "adapter_dir",
    "adapter_parameters",
    "add_lora",
    "apply_lora",
    "centred_rewards",
    "decode",
    "encode_prompts",
    "epoch_prompts",
    "evaluate",
    "flow_schedule",
    "group_advantages",
    "grpo_loss",
    "noise_scale",
    "predict_velocity",
    "run_epoch",
    "sample",
    "sde_step",
    "seeds_for",
    "step_kl",
    "top_k_mask",
    "train_grpo",
]
