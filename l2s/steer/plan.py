"""What a prompt asks to steer: its relations, the token groups of their objects, their classes."""
from __future__ import annotations

from dataclasses import dataclass, field

from l2s.parsing import ParsedPrompt, parse_prompt
from l2s.relations import class_index
from l2s.tokens import check_prompt_length, token_groups


@dataclass
class SteeringPlan:
    """What will be steered: relations, the token groups of their objects, and class indices."""

    parsed: ParsedPrompt
    phrases: list[str] = field(default_factory=list)
    token_indices: list[tuple[int, ...]] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)       # (subject group, object group) per relation
    class_indices: list[int] = field(default_factory=list)

    @classmethod
    def from_prompt(cls, prompt: str, tokenizer, max_length: int,
                    class_names: tuple[str, ...]) -> "SteeringPlan":
        """Parse ``prompt``, map each object phrase to the tokens of ``tokenizer`` (the one whose
        tokens the maps are read over), and each relation to its index in ``class_names``."""
        parsed = parse_prompt(prompt)
        check_prompt_length(tokenizer, prompt, max_length)
        plan = cls(parsed=parsed)
        if not parsed.steerable:
            return plan
        phrases: list[str] = []
        for t in parsed.triplets:
            for phrase in (t.subject, t.object):
                if phrase not in phrases:
                    phrases.append(phrase)
        groups = token_groups(tokenizer, prompt, phrases, max_length)
        plan.phrases = phrases
        plan.token_indices = [g.indices for g in groups]
        plan.pairs = [(phrases.index(t.subject), phrases.index(t.object)) for t in parsed.triplets]
        plan.class_indices = [class_index(t.relation, class_names) for t in parsed.triplets]
        return plan

    @property
    def steered(self) -> bool:
        return bool(self.pairs)

    def to_json(self) -> dict:
        return {
            "relations": [t.to_dict() for t in self.parsed.triplets],
            "non_directional": [{"subject": n.subject, "relation": n.relation, "object": n.object}
                                for n in self.parsed.non_directional],
            "token_indices": {p: list(ix) for p, ix in zip(self.phrases, self.token_indices)},
            "class_indices": self.class_indices,
            "steered": self.steered,
            "note": self.parsed.describe(),
        }
