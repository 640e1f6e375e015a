"""What the parser returns: triplets (steered), non-directional relations (reported) and the prompt's
parse as a whole."""
from __future__ import annotations

from dataclasses import dataclass, field

CharSpan = tuple[int, int]


@dataclass(frozen=True)
class _RelationPhrases:
    """Subject, relation and object as found in a prompt, each with its ``[start, end)`` character
    range in the original prompt; ``subject``/``object`` are phrases as written (article removed,
    adjectives kept)."""

    subject: str
    relation: str
    object: str
    subject_span: CharSpan
    relation_span: CharSpan
    object_span: CharSpan

    def to_dict(self) -> dict:
        """``{"subject", "relation", "object"}``: what ``l2s parse --json`` prints."""
        return {"subject": self.subject, "relation": self.relation, "object": self.object}


@dataclass(frozen=True)
class Triplet(_RelationPhrases):
    """One steerable relation: ``subject`` is ``relation`` (canonical) of ``object``."""


@dataclass(frozen=True)
class NonDirectional(_RelationPhrases):
    """A relation without direction ("a cat next to a dog"): reported, never steered.

    ``relation`` is the phrase as written in the prompt ("next to", "on side of").
    """


@dataclass(frozen=True)
class Coordinated:
    """An object joined by "and" or listed by a comma to a steered relation's subject or object ("a cat
    and a dog left of a tree", "a cat, a dog left of a tree"): a plain list may mean either reading,
    so it is kept out of the relation, and said."""

    phrase: str            # "cat": in no relation
    span: CharSpan
    joined_to: str         # "dog": the triplet's subject or object
    word: str              # "and" or ",", as written
    triplet: Triplet

    def warning(self) -> str:
        t = self.triplet
        return (f"{self.phrase!r} is joined to {self.joined_to!r} by {self.word!r}: only "
                f"'{t.subject} {t.relation} {t.object}' is steered, not {self.phrase!r}; give the relations "
                f"(--relations, or relations= in Python) to steer both")


@dataclass
class ParsedPrompt:
    """Everything the parser found in one prompt."""

    prompt: str
    triplets: list[Triplet] = field(default_factory=list)
    non_directional: list[NonDirectional] = field(default_factory=list)
    coordinated: list[Coordinated] = field(default_factory=list)   # objects the relations leave out

    @property
    def steerable(self) -> bool:
        """True when the prompt has at least one directional or diagonal relation."""
        return bool(self.triplets)

    def unsteered_reason(self) -> str | None:
        """Why nothing can be steered (one wording for generate and make-data): "no directional
        relation found (non-directional, not steered: cat near dog)" or "no spatial relation found";
        None when a relation can be."""
        if self.triplets:
            return None
        ignored = self.not_steered()
        return (f"no directional relation found (non-directional, not steered: {ignored})" if ignored
                else "no spatial relation found")

    def coordination_warnings(self) -> list[str]:
        """One line per object joined by "and" (or listed by a comma) to a steered one but in no relation itself."""
        return [c.warning() for c in self.coordinated]

    def triplet_dicts(self) -> list[dict]:
        """What ``l2s parse --json`` prints: ``[{"subject", "relation", "object"}, ...]``."""
        return [t.to_dict() for t in self.triplets]

    def not_steered(self) -> str:
        """The non-directional relations in one line ("cat near dog; cup next to book"), "" for none."""
        return "; ".join(f"{r.subject} {r.relation} {r.object}" for r in self.non_directional)

    def describe(self) -> str:
        """One human-readable line saying what will be steered."""
        if not self.triplets:
            return f"{self.unsteered_reason()}: generating unsteered"
        ignored = self.not_steered()
        count = len(self.triplets)
        steered = "; ".join(f"{t.subject} {t.relation} {t.object}" for t in self.triplets)
        line = f"steering {count} relation{'s' if count > 1 else ''}: {steered}"
        return f"{line} (not steered: {ignored})" if ignored else line
