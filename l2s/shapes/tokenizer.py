"""The shapes model's T5 tokenizer: one token per word of the shapes world and of relation phrases."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import T5TokenizerFast

from l2s.errors import TokenizationError
from l2s.relations import NON_DIRECTIONAL, PROMPT_PHRASE, PUBLISHED_CLASSES
from l2s.tokenizers import word_t5_tokenizer

from .configs import TEXT_WINDOW
from .scenes import COLOURS, SHAPES


# Relation phrasings of the benchmarks (GenEval, T2I-CompBench) and of l2s.relations, so that
# evaluation prompts tokenise to whole words even when training never used them.
_RELATION_PHRASES = (
    "to the left of", "to the right of", "left of", "right of", "above", "below",
    "on the left of", "on the right of", "on the top of", "on the bottom of", "on top of",
    "under", "over", "beneath", "top left bottom right", "top-left top-right bottom-left bottom-right",
    "next to", "near", "on side of", "beside", "by", "is", "are", "in front of", "behind",
)
_PROMPT_WORDS = "a an the and of photo picture image with there one two three four five"
_PUNCTUATION = ". , ; : ! ? ' \" - ( ) /"
_CAPITALISED = ("a", "an", "the", "one", "two", "there", "photo")


def shapes_vocabulary() -> list[str]:
    """Whole words of the shapes T5 tokenizer, in id order (after ``<pad>``, ``</s>``, ``<unk>``)."""
    phrases = list(_RELATION_PHRASES) + list(NON_DIRECTIONAL) + list(PUBLISHED_CLASSES)
    phrases += list(PROMPT_PHRASE.values())
    words = list(SHAPES) + list(COLOURS) + _PROMPT_WORDS.split()
    words += [w for phrase in phrases for w in phrase.split()]
    words += [str(d) for d in range(10)] + _PUNCTUATION.split()
    return list(dict.fromkeys(words))


def shapes_t5_tokenizer() -> T5TokenizerFast:
    """The word-level T5 tokenizer of the shapes world (sentencepiece-style, reloads offline).

    Every vocabulary word is one ``▁word`` piece; unknown words are spelled as ``▁`` + characters
    (so no prompt fails to tokenise), anything else is ``<unk>``. Appends ``</s>`` like T5.
    """
    return word_t5_tokenizer(shapes_vocabulary(), _CAPITALISED, extra_ids=0)


def tokenize_t5(tokenizer: T5TokenizerFast, captions: Sequence[str], window: int = TEXT_WINDOW) -> torch.Tensor:
    """T5 ids exactly as FluxPipeline makes them (padded to ``window``), erroring on overflow."""
    ids = tokenizer(list(captions), padding="max_length", max_length=window, truncation=False,
                    return_tensors="pt").input_ids
    if ids.shape[1] > window:
        raise TokenizationError(f"a caption needs {ids.shape[1]} T5 tokens; the window is {window}")
    return ids
