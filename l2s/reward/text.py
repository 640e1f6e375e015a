"""Prompts as a SpatialScore reads them: token ids, and for the relational design each relation
clause's subject and object token positions and its relation (from :func:`l2s.parsing.parse_prompt`).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from l2s.errors import L2SError
from l2s.relations import DIAGONAL, DIRECTIONAL

RELATIONS = DIRECTIONAL + DIAGONAL   # the relational head's classes


@dataclass
class PromptBatch:
    """``ids`` (B, T); ``phrases`` (B, C, 2, T): per clause, the subject's and the object's token
    weights (1/n on their n tokens); ``relations`` (B, C): the clause's class, -1 for no clause."""

    ids: torch.Tensor
    phrases: torch.Tensor
    relations: torch.Tensor

    def to(self, device) -> PromptBatch:
        return PromptBatch(self.ids.to(device), self.phrases.to(device), self.relations.to(device))

    def __getitem__(self, index) -> PromptBatch:
        return PromptBatch(self.ids[index], self.phrases[index], self.relations[index])

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @staticmethod
    def cat(parts: Sequence[PromptBatch]) -> PromptBatch:
        width = max(p.relations.shape[1] for p in parts)
        return PromptBatch(torch.cat([p.ids for p in parts]), torch.cat([_pad(p.phrases, width, 0.0) for p in parts]),
                           torch.cat([_pad(p.relations, width, -1) for p in parts]))


def _pad(tensor: torch.Tensor, width: int, value) -> torch.Tensor:
    extra = width - tensor.shape[1]
    if extra == 0:
        return tensor
    return torch.cat([tensor, tensor.new_full((tensor.shape[0], extra, *tensor.shape[2:]), value)], dim=1)


def tokenize(tokenizer, prompts: Sequence[str], length: int) -> torch.Tensor:
    """(B, length) ids, padded; a prompt longer than ``length`` tokens is an error, not a silent cut."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=False,
                    return_tensors="pt").input_ids
    if ids.shape[1] > length:
        longest = max(prompts, key=lambda p: len(tokenizer(p).input_ids))
        raise L2SError(f"a prompt needs {ids.shape[1]} tokens; the reward model reads at most {length} "
                       f"(e.g. {longest!r})")
    return ids


@functools.lru_cache(maxsize=65536)
def _clauses(tokenizer, prompt: str, length: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...], int], ...]:
    """(subject token positions, object token positions, class) per directional clause."""
    from l2s.parsing import parse_prompt
    from l2s.tokens import phrase_token_indices

    return tuple((phrase_token_indices(tokenizer, prompt, t.subject_span, length),
                  phrase_token_indices(tokenizer, prompt, t.object_span, length), RELATIONS.index(t.relation))
                 for t in parse_prompt(prompt).triplets if t.relation in RELATIONS)


def _named(tokenizer, prompt: str, length: int):
    """:func:`_clauses`, its error naming the prompt (one of thousands, in a pair set)."""
    try:
        return _clauses(tokenizer, prompt, length)
    except L2SError as error:
        raise type(error)(f"reward prompt {prompt!r}: {error}") from None


def prompt_batch(tokenizer, prompts: Sequence[str], length: int, clauses: bool = True) -> PromptBatch:
    """The :class:`PromptBatch` of ``prompts``; ``clauses=False``: ids only (the joint design)."""
    ids = tokenize(tokenizer, prompts, length)
    found = [_named(tokenizer, p, length) for p in prompts] if clauses else [() for _ in prompts]
    width = max((len(c) for c in found), default=0)
    phrases = torch.zeros(len(prompts), width, 2, ids.shape[1])
    relations = torch.full((len(prompts), width), -1, dtype=torch.long)
    for i, clause_list in enumerate(found):
        for c, (subject, obj, relation) in enumerate(clause_list):
            phrases[i, c, 0, list(subject)] = 1 / len(subject)
            phrases[i, c, 1, list(obj)] = 1 / len(obj)
            relations[i, c] = relation
    return PromptBatch(ids, phrases, relations)
