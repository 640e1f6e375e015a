"""Tokenizers built in code: a sentencepiece-style T5 tokenizer from a word list, a byte-level CLIP one.

Built in code so that everything runs offline: the demo pipelines (:mod:`l2s.demo`) and the shapes
model (:mod:`l2s.shapes`) build theirs from these. Both are transformers' fast tokenizers and
survive ``save_pretrained``/``from_pretrained``.
"""
from __future__ import annotations

import string
from collections.abc import Iterable

from transformers import CLIPTokenizer, T5TokenizerFast

CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
# Unigram log-probabilities: a known word always beats spelling it out, so only unknown words
# fall back to the stray "▁" piece + characters, like sentencepiece does for rare words.
WORD_SCORE, SPACE_SCORE, CHAR_SCORE = -8.0, -10.0, -12.0


def sentencepiece_t5_tokenizer(pieces: dict[str, float], extra_ids: int = 100,
                               model_max_length: int = T5_MAX_LENGTH) -> T5TokenizerFast:
    """A T5 tokenizer (sentencepiece-style Unigram model, ``▁`` marks a word start) built in code.

    ``<pad>``=0, ``</s>``=1, ``<unk>``=2 as in T5, then ``pieces`` (piece -> log-probability) in
    the given order, then ``extra_ids`` sentinel tokens. It appends ``</s>``, has no start token,
    reports exact character offsets and survives ``save_pretrained``/``from_pretrained``.
    (A ``tokenizers`` WordLevel model wrapped in T5TokenizerFast tokenises the same way but does
    not reload: transformers 5's T5Tokenizer rebuilds a Unigram model from the saved vocabulary.)
    """
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece, score) for piece, score in pieces.items() if piece not in {"<pad>", "</s>", "<unk>"}]
    return T5TokenizerFast(vocab=vocab, extra_ids=extra_ids, model_max_length=model_max_length)


def word_pieces(words: Iterable[str], capitalised: Iterable[str] = ()) -> dict[str, float]:
    """Unigram pieces of a word-level vocabulary: one ``▁word`` piece per word (and per capitalised
    sentence starter), then the stray ``▁`` and single ASCII characters to spell any other word."""
    pieces: dict[str, float] = {"▁": SPACE_SCORE}
    for word in list(words) + [w.capitalize() for w in capitalised]:
        pieces.setdefault("▁" + word, WORD_SCORE)
    for char in string.ascii_letters + string.digits + string.punctuation:
        pieces.setdefault(char, CHAR_SCORE)
    return pieces


def word_t5_tokenizer(words: Iterable[str], capitalised: Iterable[str] = (), extra_ids: int = 100,
                      model_max_length: int = T5_MAX_LENGTH) -> T5TokenizerFast:
    """A T5 tokenizer whose vocabulary words are whole tokens (:func:`word_pieces`); unknown words are
    spelled as ``▁`` + characters, anything else is ``<unk>``. Appends ``</s>`` like T5."""
    return sentencepiece_t5_tokenizer(word_pieces(words, capitalised), extra_ids=extra_ids,
                                      model_max_length=model_max_length)


def byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's table).

    transformers 5 no longer exports this helper, hence the local copy.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values = printable[:]
    code_points = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            byte_values.append(byte)
            code_points.append(256 + shift)
            shift += 1
    return [chr(c) for _, c in sorted(zip(byte_values, code_points))]


def byte_level_clip_tokenizer(merges: list[tuple[str, str]] | None = None, max_vocab_size: int | None = None,
                              model_max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (transformers' fast, ``tokenizers``-backed CLIPTokenizer).

    Vocabulary: the 256 byte-level characters, the same with the ``</w>`` end-of-word suffix, then
    ``<|startoftext|>`` (512) and ``<|endoftext|>`` (513, also padding). As in real CLIP the two
    special tokens have the highest ids, which the text model's legacy pooling (``eos_token_id=2``:
    arg-max of the ids) relies on to find the end token. With no merges every character is one
    token, so a word like "teddy bear" spans many tokens.

    ``merges``: optional BPE merges, e.g. ``[("t", "e"), ("te", "d")]``; each merge result is
    appended to the vocabulary (ids from 514 on) so real sub-word tokens can be tested.
    ``max_vocab_size``: the text model's embedding count, which the vocabulary must fit.
    """
    alphabet = byte_level_alphabet()
    vocab: dict[str, int] = {}
    for token in alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    merges = list(merges or [])
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    if max_vocab_size is not None and len(vocab) > max_vocab_size:
        raise ValueError(f"CLIP vocabulary of {len(vocab)} exceeds the text model's {max_vocab_size}")
    # model_max_length must be set: the default (a huge int) overflows when truncating.
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
