"""Byte-level tokenizer with the ByT5 id layout, built offline.

Every UTF-8 byte is one token (id = byte + 3), so any text in any script can be written without a
vocabulary file; ids 0, 1 and 2 are pad, end-of-sequence and unknown, and 125 extra ids follow the
256 byte ids, which makes 384 ids in all (the T5 embedding size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from imuru_pl.errors import UserError

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BYTE_OFFSET = 3  # id of byte b is b + 3
NUM_EXTRA_IDS = 125
VOCAB_SIZE = BYTE_OFFSET + 256 + NUM_EXTRA_IDS  # 384


def encode_text(text: str) -> list[int]:
    """Ids of one text: its UTF-8 bytes shifted by 3, then EOS (as ByT5 does)."""
    if not isinstance(text, str):
        raise UserError(f"A text to write must be a string, got {type(text).__name__}: {text!r}.")
    return [byte + BYTE_OFFSET for byte in text.encode("utf-8")] + [EOS_ID]


def encode_texts(texts: Sequence[str], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Right-padded ids (B, L) long and their mask (B, L) bool, L = longest text in bytes + 1 (EOS)."""
    if isinstance(texts, str):
        raise UserError("encode_texts expects a list of texts, got a single string.")
    if len(texts) == 0:
        raise UserError("encode_texts needs at least one text.")
    encoded = [encode_text(t) for t in texts]
    length = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), length), PAD_ID, dtype=torch.long)
    for row, seq in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    mask = torch.arange(length)[None, :] < torch.tensor([len(seq) for seq in encoded])[:, None]
    return ids.to(device), mask.to(device)


def decode_ids(ids: Sequence[int] | Tensor) -> str:
    """Text of a sequence of ids; stops at EOS, skips pad and special ids (for logs and checks)."""
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    data = bytearray()
    for value in values:
        if value == EOS_ID:
            break
        if BYTE_OFFSET <= value < BYTE_OFFSET + 256:
            data.append(value - BYTE_OFFSET)
    return data.decode("utf-8", errors="replace")
