"""The byte tokenizer follows ByT5's id layout exactly."""

import pytest
import torch
from transformers import ByT5Tokenizer

from imuru_pl.errors import UserError
from imuru_pl.models.tokenizer import EOS_ID, PAD_ID, VOCAB_SIZE, decode_ids, encode_text, encode_texts

TEXTS = ["Hello, world!", "", "naïve café €5", "日本語", "a\tb\nc"]


def test_ids_match_transformers_byt5():
    reference = ByT5Tokenizer()
    assert VOCAB_SIZE == len(reference) == 384
    for text in TEXTS:
        assert encode_text(text) == reference(text)["input_ids"], text


def test_byte_plus_three_and_eos():
    assert encode_text("A") == [ord("A") + 3, EOS_ID]
    assert encode_text("") == [EOS_ID]
    assert max(max(encode_text(t)) for t in TEXTS) < VOCAB_SIZE


def test_batch_is_right_padded_with_mask():
    ids, mask = encode_texts(["abc", "a", "é"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (3, 4)
    assert ids[0].tolist() == [100, 101, 102, EOS_ID]
    assert ids[1].tolist() == [100, EOS_ID, PAD_ID, PAD_ID]
    assert mask.sum(1).tolist() == [4, 2, 3]  # "é" is two UTF-8 bytes
    assert bool((ids[~mask] == PAD_ID).all())


def test_decode_round_trip():
    ids, _ = encode_texts(TEXTS)
    assert [decode_ids(row) for row in ids] == TEXTS


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError):
        encode_texts("not a list")
    with pytest.raises(UserError):
        encode_texts([])
    with pytest.raises(UserError):
        encode_texts(["ok", 3])
