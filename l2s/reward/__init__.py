"""l2s.reward: rewards for spatial fine-tuning, and a small learned one.

A reward is any callable ``reward(images, prompts) -> (B,) float32 tensor``, higher is better
(:class:`RewardFn`). This package is model-agnostic; the shapes world supplies its pairs and its
exact rule (:mod:`l2s.shapes.reward_data`, :mod:`l2s.shapes.rule_reward`). Parts:

* :mod:`.pairs` — preference pairs on disk (sharded, atomic) and in memory (:class:`PairSet`);
* :mod:`.model` — :class:`SpatialScore`: image + prompt -> Gaussian score (mean, log-variance);
* :mod:`.relational` — its relational design: parsed clauses look up their objects' places;
* :mod:`.text` — prompts as the model reads them (:class:`PromptBatch`: ids, clause phrases, relations);
* :mod:`.losses` — the uncertainty-aware Bradley-Terry loss and plain Bradley-Terry;
* :mod:`.train` — resumable training with validation-based selection;
* :mod:`.scorer` — a saved model as a reward callable (:func:`load_reward_model`);
* :mod:`.evaluate` — pairwise accuracy of any judge, by flips (or dropped or duplicated object) and by prompt pattern;
* :mod:`.settings` — the loss names and :class:`RewardTrainSettings` (no torch).

Names load with their module on first use (PEP 562), so ``import l2s.reward`` and the command
line's ``--help`` stay fast.
"""
from __future__ import annotations

from l2s.lazy import lazy_names

# name -> the submodule that defines it
_WHERE = {
    "accuracy": "evaluate",
    "evaluate_judge": "evaluate",
    "pair_scores": "evaluate",
    "bradley_terry_loss": "losses",
    "pair_loss": "losses",
    "uncertainty_loss": "losses",
    "win_probability": "losses",
    "SpatialScore": "model",
    "SpatialScoreConfig": "model",
    "PairSet": "pairs",
    "load_pairs": "pairs",
    "Images": "protocol",
    "RewardFn": "protocol",
    "SpatialScorer": "scorer",
    "PromptBatch": "text",
    "prompt_batch": "text",
    "images_to_tensor": "scorer",
    "load_reward_model": "scorer",
    "LOSSES": "settings",
    "RewardTrainSettings": "settings",
    "train_reward_model": "train",
    "validation_split": "train",
}


__getattr__, __dir__ = lazy_names(__name__, _WHERE, globals())

__all__ = [
    "Images",
    "LOSSES",
    "PairSet",
    "PromptBatch",
    "RewardFn",
    "RewardTrainSettings",
    "SpatialScore",
    "SpatialScoreConfig",
    "SpatialScorer",
    "accuracy",
    "bradley_terry_loss",
    "evaluate_judge",
    "images_to_tensor",
    "load_pairs",
    "load_reward_model",
    "pair_loss",
    "pair_scores",
    "prompt_batch",
    "train_reward_model",
    "uncertainty_loss",
    "validation_split",
    "win_probability",
]
