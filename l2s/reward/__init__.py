"""l2s.reward: rewards for spatial fine-tuning, and a small learned one.

A reward is any callable ``reward(images, prompts) -> (B,) float32 tensor``, higher is better
(:class:`RewardFn`). This package is model-agnostic; the shapes world supplies its pairs and its
exact rule (:mod:`l2s.shapes.reward_data`, :mod:`l2s.shapes.rule_reward`). Parts:

* :mod:`.pairs` — preference pairs on disk (sharded, atomic) and in memory (:class:`PairSet`);
* :mod:`.model` — :class:`SpatialScore`: image + prompt -> Gaussian score (mean, log-variance);
* :mod:`.losses` — the uncertainty-aware Bradley-Terry loss and plain Bradley-Terry;
* :mod:`.train` — resumable training with validation-based selection;
* :mod:`.scorer` — a saved model as a reward callable (:func:`load_reward_model`);
* :mod:`.evaluate` — pairwise accuracy of any judge, by flips and by prompt pattern.
"""

from .evaluate import accuracy, evaluate_judge, pair_scores
from .losses import LOSSES, bradley_terry_loss, pair_loss, uncertainty_loss, win_probability
from .model import SpatialScore, SpatialScoreConfig
from .pairs import PairSet, load_pairs
from .protocol import Images, RewardFn
from .scorer import SpatialScorer, images_to_tensor, load_reward_model
from .train import RewardTrainSettings, train_reward_model, validation_split

__all__ = [
    "Images",
    "LOSSES",
    "PairSet",
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
    "train_reward_model",
    "uncertainty_loss",
    "validation_split",
    "win_probability",
]
