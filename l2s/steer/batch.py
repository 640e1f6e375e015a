"""One steering plan per image of a batch: images of different prompts steered in one pass.

The token groups of every plan are merged into one list (a group two prompts share is computed
once), so one map capture serves the whole batch; each image then reads its own relation's pair
of groups and class. At iteration ``k`` of a step image ``i`` optimises its relation
``k mod n_i``, exactly as it would alone; an image with no relation is never updated.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .plan import SteeringPlan


@dataclass
class BatchPlan:
    """The plans of a batch's images, in batch order, and their merged token groups."""

    plans: list[SteeringPlan]
    token_indices: list[tuple[int, ...]] = field(init=False)
    _columns: list[list[int]] = field(init=False, repr=False)   # per image: its groups' merged index

    def __post_init__(self) -> None:
        if not self.plans:
            raise ValueError("a batch plan needs at least one image")
        self.token_indices, self._columns = [], []
        for plan in self.plans:
            columns = []
            for group in plan.token_indices:
                if group not in self.token_indices:
                    self.token_indices.append(group)
                columns.append(self.token_indices.index(group))
            self._columns.append(columns)

    @classmethod
    def of(cls, plan: SteeringPlan | BatchPlan, batch: int) -> BatchPlan:
        """``plan`` itself, or one prompt's plan for each of ``batch`` images."""
        if isinstance(plan, BatchPlan):
            if len(plan) != batch:
                raise ValueError(f"the batch plan has {len(plan)} images, the latent {batch}")
            return plan
        return cls([plan] * batch)

    def __len__(self) -> int:
        return len(self.plans)

    @property
    def counts(self) -> list[int]:
        """Relations per image (0: the image is not steered)."""
        return [len(plan.pairs) for plan in self.plans]

    @property
    def steered(self) -> bool:
        return any(self.counts)

    def rows(self, relations: Sequence[int]) -> tuple[list[tuple[int, int]], list[int]]:
        """Per image, its relation's (subject, object) columns in the merged groups and its class;
        an image without relations reads column 0 twice and class 0 (it is never updated)."""
        pairs, classes = [], []
        for plan, columns, relation in zip(self.plans, self._columns, relations):
            if not plan.pairs:
                pairs.append((0, 0))
                classes.append(0)
                continue
            subject, obj = plan.pairs[relation]
            pairs.append((columns[subject], columns[obj]))
            classes.append(plan.class_indices[relation])
        return pairs, classes
