"""Tokenizers built in code: word-level T5 (sentencepiece-style) and byte-level CLIP."""
import pytest
from transformers import CLIPTokenizer, T5TokenizerFast

from l2s.tokenizers import (
    CHAR_SCORE,
    SPACE_SCORE,
    WORD_SCORE,
    byte_level_alphabet,
    byte_level_clip_tokenizer,
    word_pieces,
    word_t5_tokenizer,
)


def test_word_pieces_put_words_first_then_the_spelling_alphabet():
    pieces = word_pieces(["red", "circle", "red"], capitalised=["a"])
    assert list(pieces)[:4] == ["▁", "▁red", "▁circle", "▁A"]
    assert pieces["▁"] == SPACE_SCORE and pieces["▁red"] == WORD_SCORE and pieces["z"] == CHAR_SCORE


def test_word_t5_tokenizer_keeps_words_whole_spells_the_rest_and_reloads(tmp_path):
    tokenizer = word_t5_tokenizer(["a", "red", "circle"], capitalised=["a"], extra_ids=0)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.tokenize("A red circle") == ["▁A", "▁red", "▁circle"]
    assert tokenizer.tokenize("a cat") == ["▁a", "▁", "c", "a", "t"]
    ids = tokenizer("a red circle").input_ids
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    tokenizer.save_pretrained(tmp_path)
    reloaded = T5TokenizerFast.from_pretrained(tmp_path)
    assert reloaded("a red cat").input_ids == tokenizer("a red cat").input_ids
    assert len(word_t5_tokenizer(["a"])) == len(word_t5_tokenizer(["a"], extra_ids=0)) + 100  # sentinels


def test_byte_level_clip_tokenizer_layout_and_vocabulary_limit():
    assert len(byte_level_alphabet()) == len(set(byte_level_alphabet())) == 256
    tokenizer = byte_level_clip_tokenizer()
    assert isinstance(tokenizer, CLIPTokenizer) and len(tokenizer) == 514
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (512, 513)
    merged = byte_level_clip_tokenizer([("t", "e")], max_vocab_size=515)
    assert len(merged) == 515
    with pytest.raises(ValueError, match="exceeds"):
        byte_level_clip_tokenizer([("t", "e"), ("te", "d")], max_vocab_size=515)
