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
Names load with their module on first use (PEP 562), so ``import l2s.grpo`` and the command
line's ``--help`` stay fast.
"""
from __future__ import annotations

from l2s.lazy import lazy_names

# name -> the submodule that defines it
_WHERE = {
    "STD_MODES": "settings",
    "centred_rewards": "advantages",
    "group_advantages": "advantages",
    "top_k_mask": "advantages",
    "AdapterEMA": "ema",
    "LORA_TARGETS": "lora",
    "adapter_dir": "lora",
    "adapter_parameters": "lora",
    "add_lora": "lora",
    "apply_lora": "lora",
    "LossTerms": "objective",
    "grpo_loss": "objective",
    "Conditioning": "rollout",
    "Rollout": "rollout",
    "Schedule": "rollout",
    "decode": "rollout",
    "encode_prompts": "rollout",
    "flow_schedule": "rollout",
    "predict_velocity": "rollout",
    "sample": "rollout",
    "GRPOResult": "run",
    "epoch_prompts": "run",
    "evaluate": "run",
    "run_epoch": "run",
    "train_grpo": "run",
    "SDEStep": "sde",
    "noise_scale": "sde",
    "sde_step": "sde",
    "step_kl": "sde",
    "MIN_GROUP": "settings",
    "GRPOSettings": "settings",
    "GRPOTrainer": "trainer",
    "seeds_for": "trainer",
}

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

__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())
