"""The steering classifier as a judge of finished images: how sure it is of the prompted relations
(the judge `reward_model_eval.py` sets beside the reward models).

The classifier reads attention maps, not pixels, so an image is first inverted with its prompt
exactly as the classifier's training images were (RF-Inversion, closed form: one transformer
forward per stored step; :func:`l2s.training.invert_and_capture`), and its maps recorded at the
steps the classifier was trained on. The score of (image, prompt) is the log-probability of each
chained pair's prompted relation, summed over the pairs and averaged over the stored steps.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from l2s.relations import class_index

from l2s.shapes.model import image_size, token_grid
from l2s.shapes.recipes import SHAPES_STEPS, SHAPES_STORE_STEPS
from l2s.shapes.reward_prompts import parse_chain
from l2s.shapes.rule_reward import to_pil


class ClassifierJudge:
    """``judge(images, prompts) -> (B,)``: summed log p(prompted relation) of the steering classifier."""

    def __init__(self, pipe, classifier, *, steps: int = SHAPES_STEPS,
                 store_steps: Sequence[int] = SHAPES_STORE_STEPS, seed: int = 0) -> None:
        self.pipe, self.classifier = pipe, classifier.eval()
        self.steps, self.store_steps, self.seed = steps, tuple(store_steps), seed

    @torch.no_grad()
    def score(self, image, prompt: str, capture) -> float:
        from l2s.training import invert_and_capture

        chain = parse_chain(prompt)
        result = invert_and_capture(self.pipe, image, prompt, chain.pairs(), steps=self.steps,
                                    store_steps=self.store_steps, seed=self.seed, size=image_size(self.pipe),
                                    map_size=token_grid(self.pipe), capture=capture)
        classes = torch.tensor([class_index(r, self.classifier.config.class_names) for r in chain.relations])
        total = 0.0
        for step, maps in result.maps.items():
            logits = self.classifier(maps.to(self.classifier_device), self.classifier.step_index(step))
            total += float(logits.log_softmax(-1).cpu()[torch.arange(len(classes)), classes].sum())
        return total / len(result.maps)

    @property
    def classifier_device(self) -> torch.device:
        return next(self.classifier.parameters()).device

    def __call__(self, images, prompts: Sequence[str]) -> torch.Tensor:
        from l2s.capture import AttentionCapture
        from l2s.pipelines.families import denoiser

        capture = AttentionCapture(denoiser(self.pipe))
        try:
            return torch.tensor([self.score(image, prompt, capture) for image, prompt in zip(to_pil(images), prompts)],
                                dtype=torch.float32)
        finally:
            capture.remove()
