"""Object phrase -> token positions, on character-level CLIP, word-level T5 and real sub-words."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import string

import pytest

from l2s.errors import TokenizationError
from l2s.demo import tiny_clip_tokenizer, tiny_t5_tokenizer
from l2s.tokenizers import sentencepiece_t5_tokenizer
from l2s.tokens import (
    TokenGroup,
    check_prompt_length,
    first_occurrence_span,
    mention_groups,
    mention_warnings,
    occurrence_spans,
    phrase_token_indices,
    token_groups,
    unrepresented_words,
)

CLIP_LEN, T5_LEN = 77, 512


@pytest.fixture(scope="module")
def clip():
    return tiny_clip_tokenizer()


@pytest.fixture(scope="module")
def t5():
    return tiny_t5_tokenizer()


def decoded(tokenizer, prompt, indices, max_length):
    """Decode the tokens at ``indices`` of the padded sequence the pipeline would build."""
    ids = tokenizer(prompt, padding="max_length", max_length=max_length, truncation=True)["input_ids"]
    assert len(ids) == max_length
    return [tokenizer.decode([ids[i]]) for i in indices]


# ---- first occurrence -------------------------------------------------------------------------


def test_first_occurrence_is_case_insensitive_and_whole_word():
    prompt = "A Category card: the CAT sits left of a cat"
    assert first_occurrence_span(prompt, "cat") == (21, 24)
    assert list(occurrence_spans(prompt, "cat")) == [(21, 24), (40, 43)]


def test_first_occurrence_of_multi_word_phrase_allows_extra_spaces():
    prompt = "a teddy   bear and a teddy bear"
    assert first_occurrence_span(prompt, "Teddy Bear") == (2, 14)


def test_missing_phrase_raises():
    with pytest.raises(TokenizationError, match="giraffe"):
        first_occurrence_span("a cat left of a dog", "giraffe")
    with pytest.raises(TokenizationError):
        first_occurrence_span("a cat left of a dog", "   ")


# ---- CLIP, character level ----------------------------------------------------------------------


def test_clip_char_level_multi_token_object_offset_by_start_token(clip):
    prompt = "a teddy bear to the left of a cat"
    (teddy, cat) = token_groups(clip, prompt, ["teddy bear", "cat"], CLIP_LEN)
    assert teddy == TokenGroup("teddy bear", tuple(range(2, 11)))  # BOS at 0, "a" at 1
    assert "".join(decoded(clip, prompt, teddy.indices, CLIP_LEN)) == "teddybear"
    assert "".join(decoded(clip, prompt, cat.indices, CLIP_LEN)) == "cat"
    n = len(clip(prompt)["input_ids"])
    assert cat.indices == (n - 4, n - 3, n - 2)  # the last word, just before the end token


def test_clip_repeated_phrase_maps_to_first_occurrence(clip):
    prompt = "a cat left of a dog; and the same dog above a cat"
    groups = token_groups(clip, prompt, ["cat", "dog", "dog"], CLIP_LEN)
    assert [g.phrase for g in groups] == ["cat", "dog", "dog"]
    assert groups[0].indices == (2, 3, 4)
    assert groups[1].indices == (12, 13, 14)  # "a cat left of a " = 1 + 11 tokens before "dog"
    assert groups[2] == groups[1]


def test_clip_too_long_prompt(clip):
    prompt = "a cat left of " + "a very " * 14 + "dog"
    assert len(clip(prompt)["input_ids"]) > CLIP_LEN
    with pytest.raises(TokenizationError, match=r"\b77\b"):
        check_prompt_length(clip, prompt, CLIP_LEN)
    with pytest.raises(TokenizationError, match="'dog' is cut off"):
        token_groups(clip, prompt, ["cat", "dog"], CLIP_LEN)
    # An object before the cut is still usable.
    assert phrase_token_indices(clip, prompt, first_occurrence_span(prompt, "cat"), CLIP_LEN) == (2, 3, 4)
    check_prompt_length(clip, "a cat left of a dog", CLIP_LEN)  # short enough: no error


def test_clip_last_slot_belongs_to_end_token(clip):
    # 75 content characters fit (BOS + 75 + EOS = 77); the 76th would be replaced by the end token.
    fits = "x" * 70 + " abcd"  # 74 characters + one "</w>" per word, no space tokens
    assert len(clip(fits)["input_ids"]) == 2 + 74
    phrase_token_indices(clip, fits, first_occurrence_span(fits, "abcd"), CLIP_LEN)
    over = "x" * 72 + " abcd"
    assert len(clip(over)["input_ids"]) == 78
    with pytest.raises(TokenizationError, match="78 .* 77"):
        phrase_token_indices(clip, over, first_occurrence_span(over, "abcd"), CLIP_LEN)


def test_clip_real_bpe_merges():
    merges = [("t", "e"), ("te", "d"), ("d", "y</w>"), ("c", "a"), ("ca", "t</w>")]
    clip = tiny_clip_tokenizer(merges=merges)
    prompt = "A teddy left of a cat"
    pieces = clip.convert_ids_to_tokens(clip(prompt)["input_ids"])
    assert pieces[2:4] == ["ted", "dy</w>"] and "cat</w>" in pieces
    teddy, cat = token_groups(clip, prompt, ["teddy", "cat"], CLIP_LEN)
    assert teddy.indices == (2, 3)
    assert decoded(clip, prompt, teddy.indices, CLIP_LEN) == ["ted", "dy"]
    assert len(cat.indices) == 1 and decoded(clip, prompt, cat.indices, CLIP_LEN) == ["cat"]


# ---- T5 -----------------------------------------------------------------------------------------


def test_t5_word_level_no_start_token(t5):
    prompt = "a photo of a teddy bear to the left of a cat"
    teddy, cat = token_groups(t5, prompt, ["teddy bear", "cat"], T5_LEN)
    assert teddy.indices == (4, 5)  # "a photo of a" are positions 0-3: no start token
    assert decoded(t5, prompt, teddy.indices, T5_LEN) == ["teddy", "bear"]
    assert cat.indices == (11,) and t5(prompt)["input_ids"][12] == t5.eos_token_id


def test_t5_repeated_phrase_and_contained_phrase(t5):
    prompt = "a cat left of a dog; and the same dog above a cat"
    cat, dog = token_groups(t5, prompt, ["cat", "dog"], T5_LEN)
    assert (cat.indices, dog.indices) == ((1,), (5,))
    # "dog" also occurs inside "hot dog": it takes its first occurrence outside it.
    prompt = "a hot dog to the left of a dog"
    hot_dog, dog = token_groups(t5, prompt, ["hot dog", "dog"], T5_LEN)
    assert hot_dog.indices == (1, 2) and dog.indices == (8,)
    # ...but falls back to the first occurrence when there is no other.
    (dog,) = token_groups(t5, "a hot dog", ["dog"], T5_LEN)
    assert dog.indices == (2,)


def test_t5_unknown_word_spelled_out_without_stray_space_piece(t5):
    prompt = "a Zorb above a cat"
    pieces = t5.convert_ids_to_tokens(t5(prompt)["input_ids"])
    assert pieces[1:6] == ["▁", "Z", "o", "r", "b"]
    (zorb,) = token_groups(t5, prompt, ["zorb"], T5_LEN)
    assert zorb.indices == (2, 3, 4, 5)  # the lone "▁" carries no text and is left out


def test_t5_too_long_prompt(t5):
    prompt = "a cat " + "very " * 600 + "left of a dog"
    with pytest.raises(TokenizationError, match="607 .* 512"):
        check_prompt_length(t5, prompt, T5_LEN)
    with pytest.raises(TokenizationError, match="cut off"):
        token_groups(t5, prompt, ["cat", "dog"], T5_LEN)
    # A shorter max_sequence_length (FLUX schnell uses 256) counts too.
    with pytest.raises(TokenizationError, match="cut off"):
        token_groups(t5, "a cat " + "very " * 10 + "left of a dog", ["dog"], 12)


def test_sentencepiece_sub_word_pieces():
    pieces = {"▁": -10.0, "▁a": -5.0, "▁ted": -6.0, "dy": -6.0, "▁bear": -5.0, "▁left": -5.0, "▁of": -5.0}
    pieces |= {c: -12.0 for c in string.ascii_letters}
    tokenizer = sentencepiece_t5_tokenizer(pieces, extra_ids=0)
    prompt = "a teddy bear left of a teddy"
    assert tokenizer.convert_ids_to_tokens(tokenizer(prompt)["input_ids"])[1:4] == ["▁ted", "dy", "▁bear"]
    (teddy_bear,) = token_groups(tokenizer, prompt, ["teddy bear"], T5_LEN)
    assert teddy_bear.indices == (1, 2, 3)
    assert decoded(tokenizer, prompt, teddy_bear.indices, T5_LEN) == ["ted", "dy", "bear"]


# ---- input checks -------------------------------------------------------------------------------


def test_span_without_tokens_or_outside_prompt_raises(clip, t5):
    prompt = "a cat  left"
    for tokenizer in (clip, t5):
        with pytest.raises(TokenizationError, match="not in the tokenizer output"):
            phrase_token_indices(tokenizer, prompt, (5, 7), 77)  # the two spaces
        with pytest.raises(TokenizationError, match="outside"):
            phrase_token_indices(tokenizer, prompt, (5, 40), 77)
    with pytest.raises(TokenizationError, match="giraffe"):
        token_groups(t5, prompt, ["cat", "giraffe"], T5_LEN)


# ---- mentions: repeated phrases by occurrence, words the vocabulary lacks ----------------------


def _mentions(prompt):
    from l2s.parsing import parse_prompt

    return [m for t in parse_prompt(prompt).triplets
            for m in ((t.subject, t.subject_span), (t.object, t.object_span))]


def test_a_repeated_phrase_is_steered_by_occurrence(t5):
    prompt = "a red circle left of a red circle"
    mentions = _mentions(prompt)
    groups, index = mention_groups(t5, prompt, mentions, T5_LEN)
    assert [g.phrase for g in groups] == ["red circle", "red circle #2"] and index == [0, 1]
    assert [decoded(t5, prompt, g.indices, T5_LEN) for g in groups] == [["red", "circle"]] * 2
    assert groups[0].indices != groups[1].indices        # two circles, two maps
    (line,) = mention_warnings(t5, prompt, mentions, index)
    assert "'red circle' occurs 2 times" in line and "n-th mention on the n-th occurrence" in line


def test_one_occurrence_mentioned_twice_is_one_group(t5):
    prompt = "a frog above a cat below a dog"                   # "cat" is one object in two relations
    mentions = _mentions(prompt)
    groups, index = mention_groups(t5, prompt, mentions, T5_LEN)
    assert index == [0, 1, 1, 2] and [g.phrase for g in groups] == ["frog", "cat", "dog"]
    assert not any("occurs" in line for line in mention_warnings(t5, prompt, mentions, index))


def test_a_phrase_mentioned_once_maps_where_the_parser_found_it(t5):
    prompt = "a hot dog stand, a dog left of a cat"             # the steered dog is the second one
    groups, index = mention_groups(t5, prompt, _mentions(prompt), T5_LEN)
    dog = first_occurrence_span(prompt[10:], "dog")
    assert groups[0].indices == phrase_token_indices(t5, prompt, (dog[0] + 10, dog[1] + 10), T5_LEN)
    assert groups[0].indices != token_groups(t5, prompt, ["dog"], T5_LEN)[0].indices

def test_relations_given_without_positions_map_as_before_and_a_self_relation_is_named(t5):
    prompt = "a red circle left of a red circle"
    span = first_occurrence_span(prompt, "red circle")
    mentions = [("red circle", span), ("red circle", span)]
    groups, index = mention_groups(t5, prompt, mentions, T5_LEN)
    assert index == [0, 0] and groups[0].indices == (1, 2)
    (line,) = mention_warnings(t5, prompt, mentions, index)
    assert "'red circle' is related to itself" in line


def test_words_the_vocabulary_lacks_are_named(t5):
    prompt = "a zorb left of a \U0001F992 and a cat"
    assert unrepresented_words(t5, prompt, first_occurrence_span(prompt, "zorb")) == [
        ("zorb", "spelled letter by letter")]
    assert unrepresented_words(t5, prompt, first_occurrence_span(prompt, "\U0001F992")) == [
        ("\U0001F992", "unknown token")]
    assert unrepresented_words(t5, prompt, first_occurrence_span(prompt, "cat")) == []
    short = "a zorb left of a \U0001F992"
    lines = mention_warnings(t5, short, _mentions(short), [0, 1])
    assert lines == ["the model's tokenizer has no token for 'zorb' (spelled letter by letter), "
                     "'\U0001F992' (unknown token): steering reads maps of tokens that do not name these objects"]
