"""Object phrase -> positions in the text encoder's token sequence.

Capture and steering read one attention map per text position; an object's map is the mean of the
maps at its token positions. Positions are those of the padded sequence the pipeline feeds the
text encoder: the prompt is tokenised with the tokenizer's own special tokens (CLIP: start token
at position 0 and end token; T5: no start token, ``</s>`` appended), so index ``i`` here is key
``i`` of the cross-attention.

Tokens are matched to words by character offsets rather than by re-tokenising the word and
searching for its ids, so a word whose tokens depend on context (BPE merges across a prefix,
sentencepiece's stray ``▁`` piece) still maps exactly, and an object that is absent or cut off
by truncation is an error instead of a silent wrong index. A phrase that occurs more than once is
steered by occurrence (:func:`mention_groups`), and :func:`mention_warnings` says in one line each
when steering is doubtful (a repeated phrase, words the vocabulary lacks).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from l2s.errors import TokenizationError


@dataclass(frozen=True)
class TokenGroup:
    """The token positions of one object phrase (their maps are averaged downstream)."""

    phrase: str
    indices: tuple[int, ...]  # positions in the (padded) encoder sequence


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    words = phrase.split()
    if not words:
        raise TokenizationError("empty object phrase")
    # Whole words only ("cat" must not match inside "category"); any run of spaces between words.
    body = r"\s+".join(re.escape(word) for word in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def occurrence_spans(prompt: str, phrase: str) -> Iterator[tuple[int, int]]:
    """Character spans ``[start, end)`` of every whole-word, case-insensitive occurrence of
    ``phrase`` in ``prompt``, left to right."""
    for match in _phrase_pattern(phrase).finditer(prompt):
        yield match.span()


def first_occurrence_span(prompt: str, phrase: str) -> tuple[int, int]:
    """The span of the first whole-word, case-insensitive occurrence of ``phrase`` in ``prompt``.

    Raises :class:`TokenizationError` if the phrase does not occur.
    """
    for span in occurrence_spans(prompt, phrase):
        return span
    raise TokenizationError(f"object {phrase!r} does not occur in the prompt {prompt!r}")


def _encode(tokenizer, prompt: str, **kwargs) -> dict:
    # Same special tokens as the pipelines (add_special_tokens defaults to True).
    return tokenizer(
        prompt,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        verbose=False,  # too-long prompts are reported by us, not as a transformers warning
        **kwargs,
    )


def _too_long_message(tokenizer, n_tokens: int, max_length: int) -> str:
    name = type(tokenizer).__name__
    return f"prompt needs {n_tokens} {name} tokens but the text encoder takes at most {max_length}"


def check_prompt_length(tokenizer, prompt: str, max_length: int) -> None:
    """Raise :class:`TokenizationError` when ``prompt`` (special tokens included) needs more than
    ``max_length`` tokens, i.e. when the pipeline would silently truncate it."""
    n_tokens = len(tokenizer(prompt, verbose=False)["input_ids"])
    if n_tokens > max_length:
        raise TokenizationError(_too_long_message(tokenizer, n_tokens, max_length))


def phrase_token_indices(
    tokenizer, prompt: str, char_span: tuple[int, int], max_length: int
) -> tuple[int, ...]:
    """Positions of the tokens of ``prompt`` that cover the characters ``char_span``.

    Special tokens are skipped, and so are pieces that carry no text (sentencepiece's lone ``▁``,
    which reports the offsets of the character after it). Raises :class:`TokenizationError` if no
    token covers the span, or if truncation to ``max_length`` tokens would cut any of them off.
    """
    start, end = char_span
    if not 0 <= start < end <= len(prompt):
        raise TokenizationError(f"character span {char_span} is outside the prompt {prompt!r}")
    full = _encode(tokenizer, prompt)
    indices = []
    for position, ((token_start, token_end), special, token_id) in enumerate(
        zip(full["offset_mapping"], full["special_tokens_mask"], full["input_ids"])
    ):
        if special or token_end <= token_start:
            continue
        if token_start < end and token_end > start and tokenizer.decode([token_id]).strip():
            indices.append(position)
    phrase = prompt[start:end]
    if not indices:
        raise TokenizationError(f"object {phrase!r} is not in the tokenizer output for {prompt!r}")

    # What the pipeline actually sees: truncated (the end token takes the last slot).
    kept = _encode(tokenizer, prompt, truncation=True, max_length=max_length)
    cut = [
        i
        for i in indices
        if i >= len(kept["input_ids"])
        or kept["input_ids"][i] != full["input_ids"][i]
        or tuple(kept["offset_mapping"][i]) != tuple(full["offset_mapping"][i])
    ]
    if cut:
        raise TokenizationError(
            f"object {phrase!r} is cut off: "
            + _too_long_message(tokenizer, len(full["input_ids"]), max_length)
        )
    return tuple(indices)


def _phrase_key(phrase: str) -> str:
    return " ".join(phrase.lower().split())


def token_groups(
    tokenizer, prompt: str, phrases: Sequence[str], max_length: int,
    found_at: dict[str, tuple[int, int]] | None = None,
) -> list[TokenGroup]:
    """One :class:`TokenGroup` per phrase, in the order given.

    Each object maps to the first occurrence of its words, or to ``found_at[phrase]`` (where the
    parser found it) when that is one of its occurrences. The same phrase listed twice (an
    object in two relations: "a cat left of a dog; and the same dog above a cat") gets the same
    group. When one phrase occurs inside another listed phrase ("dog" and "hot dog"), the shorter
    one takes its first occurrence outside the longer one's, if there is one.
    """
    found_at = {_phrase_key(p): tuple(span) for p, span in (found_at or {}).items()}
    spans: dict[str, tuple[int, int]] = {}
    # Longer phrases claim their words first so a contained phrase can avoid them.
    # (sorted is stable: equal lengths keep the caller's order, so the result is deterministic).
    for phrase in sorted(dict.fromkeys(map(_phrase_key, phrases)), key=len, reverse=True):
        occurrences = list(occurrence_spans(prompt, phrase))
        if not occurrences:
            raise TokenizationError(f"object {phrase!r} does not occur in the prompt {prompt!r}")
        claimed = spans.values()
        free = [s for s in occurrences if all(s[1] <= c[0] or s[0] >= c[1] for c in claimed)]
        spans[phrase] = found_at[phrase] if found_at.get(phrase) in free else (free or occurrences)[0]
    return [
        TokenGroup(phrase, phrase_token_indices(tokenizer, prompt, spans[_phrase_key(phrase)], max_length))
        for phrase in phrases
    ]


def mention_groups(
    tokenizer, prompt: str, mentions: Sequence[tuple[str, tuple[int, int]]], max_length: int
) -> tuple[list[TokenGroup], list[int]]:
    """Token groups of object mentions ``(phrase, character span where it was found)``, and the
    index of each mention's group.

    Steered by occurrence: a phrase mentioned at two or more occurrences ("a red circle left of a
    red circle") gets one group per occurrence, its own tokens, labelled ``"red circle"``,
    ``"red circle #2"``, ... in text order; mentions of one occurrence (the middle of a chain, "a
    frog above a cat below a dog") share a group. Any other phrase maps as :func:`token_groups`
    does, at its mention's span when that holds the phrase (relations given without positions
    carry first occurrences: the same as before).
    """
    spans: dict[str, list[tuple[int, int]]] = {}
    for phrase, span in mentions:
        key, (start, end) = _phrase_key(phrase), span
        if 0 <= start < end <= len(prompt) and _phrase_key(prompt[start:end]) == key:
            spans.setdefault(key, [])
            if tuple(span) not in spans[key]:
                spans[key].append(tuple(span))
    repeated = {key: sorted(found) for key, found in spans.items() if len(found) > 1}
    single = list(dict.fromkeys(p for p, _ in mentions if _phrase_key(p) not in repeated))
    # A phrase met once keeps where it was found ("a hot dog stand, a dog left of a cat": the second dog).
    found_at = {key: found[0] for key, found in spans.items() if key not in repeated}
    groups_of_single = token_groups(tokenizer, prompt, single, max_length, found_at)
    by_phrase = dict(zip(map(_phrase_key, single), groups_of_single))
    groups: list[TokenGroup] = []
    where: dict[tuple, int] = {}
    index = []
    for phrase, span in mentions:
        key = _phrase_key(phrase)
        slot = (key, tuple(span)) if key in repeated else (key,)
        if slot not in where:
            where[slot] = len(groups)
            groups.append(by_phrase[key] if key not in repeated else _occurrence_group(
                tokenizer, prompt, phrase, repeated[key], tuple(span), max_length))
        index.append(where[slot])
    return groups, index


def _occurrence_group(tokenizer, prompt: str, phrase: str, occurrences: list[tuple[int, int]],
                      span: tuple[int, int], max_length: int) -> TokenGroup:
    n = occurrences.index(span) + 1
    label = phrase if n == 1 else f"{phrase} #{n}"
    return TokenGroup(label, phrase_token_indices(tokenizer, prompt, span, max_length))


def unrepresented_words(tokenizer, prompt: str, char_span: tuple[int, int]) -> list[tuple[str, str]]:
    """``(word, why)`` for each word of ``prompt[char_span]`` that the tokenizer has no token for:
    ``"unknown token"`` (``<unk>``: emoji in a sentencepiece vocabulary), ``"spelled letter by
    letter"`` (a word of two or more characters cut into one-character pieces: a word the
    vocabulary lacks) or ``"split into bytes"`` (byte-level pieces that are no text on their own).
    Maps read at such tokens do not name the object."""
    start, end = char_span
    full = _encode(tokenizer, prompt)
    unknown = getattr(tokenizer, "unk_token_id", None)
    problems = []
    for word in re.finditer(r"\S+", prompt[start:end]):
        first, last = start + word.start(), start + word.end()
        pieces = [(s, e, token_id) for (s, e), special, token_id in
                  zip(full["offset_mapping"], full["special_tokens_mask"], full["input_ids"])
                  if (not special or token_id == unknown) and s < last and e > first and e > s]
        texts = [tokenizer.decode([token_id]) for _, _, token_id in pieces]
        if any(token_id == unknown for _, _, token_id in pieces):
            problems.append((word.group(), "unknown token"))
        elif any("\ufffd" in text for text in texts):
            problems.append((word.group(), "split into bytes"))
        else:
            letters = [(s, e) for (s, e, _), text in zip(pieces, texts) if text.strip()]
            if last - first > 1 and len(letters) > 1 and all(e - s == 1 for s, e in letters):
                problems.append((word.group(), "spelled letter by letter"))
    return problems


def mention_warnings(
    tokenizer, prompt: str, mentions: Sequence[tuple[str, tuple[int, int]]], index: Sequence[int]
) -> list[str]:
    """One line per kind of doubtful steering in :func:`mention_groups`' result: a phrase steered at
    several occurrences, a relation whose two objects are one group, words the tokenizer lacks."""
    lines = []
    occurrences: dict[str, set[int]] = {}
    for (phrase, _), group in zip(mentions, index):
        occurrences.setdefault(_phrase_key(phrase), set()).add(group)
    repeated = [f"{phrase!r} occurs {len(found)} times" for phrase, found in occurrences.items() if len(found) > 1]
    if repeated:
        lines.append(f"{', '.join(repeated)} in the prompt: each mention is steered on the tokens of its "
                     "own occurrence (the n-th mention on the n-th occurrence)")
    selves = [mentions[2 * k][0] for k in range(len(index) // 2) if index[2 * k] == index[2 * k + 1]]
    if selves:
        lines.append(f"{', '.join(map(repr, selves))} is related to itself (both objects are the same "
                     "tokens): that relation's steering means nothing")
    found: dict[str, str] = {}
    for phrase, span in mentions:
        if not (0 <= span[0] < span[1] <= len(prompt)) or _phrase_key(prompt[span[0]:span[1]]) != _phrase_key(phrase):
            span = first_occurrence_span(prompt, phrase)
        found.update(unrepresented_words(tokenizer, prompt, span))
    if found:
        words = ", ".join(f"{word!r} ({why})" for word, why in found.items())
        lines.append(f"the model's tokenizer has no token for {words}: steering reads maps of tokens "
                     "that do not name these objects")
    return lines
