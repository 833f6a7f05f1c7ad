"""Line texts: real English words by frequency (wordfreq), or windows of a user's own text file.

Both sources draw from a numpy Generator handed in by the caller, so a line's text is fixed by its seed.
A source only writes characters of its `alphabet`; a text a given font cannot draw is re-drawn by the caller.
"""

from __future__ import annotations

import string
import unicodedata
from pathlib import Path
from typing import Protocol

import numpy as np
from wordfreq import top_n_list, word_frequency

from imuru_pl.errors import UserError

DEFAULT_CHARSET = string.ascii_letters + string.digits + " .,;:!?'\"-()"

# How often capitals, digits and punctuation enter a wordfreq line (per word unless said otherwise).
CAPITALISE_FIRST = 0.5  # per line: sentence-like lines start with a capital
TITLE_CASE = 0.06  # names, titles
ALL_CAPS = 0.015
NUMBER = 0.06  # a word replaced by a number, year, time or decimal
COMMA_LIKE = 0.07  # , ; : after a word
LINE_END = 0.35  # per line: . ! ? at the end
QUOTED = 0.02  # "word" or (word)
HYPHENATED = 0.02  # word-word

# Frequent words kept out of the demo data: sample images end up in logs, READMEs and talks.
BLOCKED_WORDS = frozenset(
    """ass asshole bitch bullshit cock crap damn dick fuck fucked fuckin fucking lmao lol
    naked porn pissed pussy rape sexy shit wtf""".split()
)


class TextSource(Protocol):
    alphabet: str  # every character the source may write (besides the space)

    def sample(self, rng: np.random.Generator, words: int) -> str:
        """A line of about `words` words."""
        ...


class WordSource:
    """Frequency-weighted English words with capitals, digits and punctuation mixed in.

    `frequency_power` flattens Zipf's law (1 = true word frequencies, 0 = uniform over the vocabulary) so
    lines are not mostly "the of and", while common words stay common.
    """

    def __init__(
        self, vocabulary_size: int = 5000, frequency_power: float = 0.5, charset: str = DEFAULT_CHARSET
    ):
        if vocabulary_size < 10:
            raise UserError(f"data.vocabulary_size must be at least 10 words; got {vocabulary_size}.")
        allowed = set(charset)
        words = [_fix_case(w) for w in top_n_list("en", vocabulary_size)]
        words = [w for w in words if (w.isalpha() or "'" in w) and len(w) > 1 or w in ("a", "I")]
        self.words = [w for w in words if set(w) <= allowed and w.lower() not in BLOCKED_WORDS]
        if not self.words:
            raise UserError("data.charset leaves no English word to write; include the letters a-z.")
        freq = np.array([word_frequency(w, "en") for w in self.words], dtype=np.float64) ** frequency_power
        self.probabilities = freq / freq.sum()
        self.punctuation = {
            kind: "".join(c for c in chars if c in allowed)
            for kind, chars in (("comma", ",,,;:"), ("end", "...!?"), ("quote", '"('), ("hyphen", "-"))
        }
        self.numbers = set(string.digits + ".:") <= allowed
        produced = set("".join(self.words)) | {c.upper() for c in "".join(self.words)}
        produced |= set("".join(self.punctuation.values())) | {")"}
        if self.numbers:
            produced |= set(string.digits + ".:")
        self.alphabet = "".join(sorted(produced & allowed - {" "}))

    def sample(self, rng: np.random.Generator, words: int) -> str:
        picks = rng.choice(len(self.words), size=words, p=self.probabilities)
        tokens = [self._decorate(self.words[i], rng) for i in picks]
        if rng.random() < CAPITALISE_FIRST and tokens[0][:1].islower():
            tokens[0] = tokens[0][0].upper() + tokens[0][1:]
        for i in range(len(tokens) - 1):
            if self.punctuation["comma"] and rng.random() < COMMA_LIKE and tokens[i][-1:].isalnum():
                tokens[i] += rng.choice(list(self.punctuation["comma"]))
        if self.punctuation["end"] and rng.random() < LINE_END and tokens[-1][-1:].isalnum():
            tokens[-1] += rng.choice(list(self.punctuation["end"]))
        return " ".join(tokens)

    def _decorate(self, word: str, rng: np.random.Generator) -> str:
        roll = rng.random()
        if self.numbers and roll < NUMBER:
            return _number(rng)
        roll = rng.random()
        if roll < ALL_CAPS and set(word.upper()) <= set(self.alphabet):
            word = word.upper()
        elif roll < ALL_CAPS + TITLE_CASE and word[0].upper() in self.alphabet:
            word = word[0].upper() + word[1:]
        roll = rng.random()
        if roll < QUOTED and self.punctuation["quote"]:
            opener = rng.choice(list(self.punctuation["quote"]))
            closer = ")" if opener == "(" else opener
            if closer in self.alphabet:
                word = f"{opener}{word}{closer}"
        elif roll < QUOTED + HYPHENATED and self.punctuation["hyphen"]:
            word = f"{word}-{self.words[rng.integers(len(self.words))]}"
        return word


def _fix_case(word: str) -> str:
    """wordfreq lower-cases everything; the pronoun "I" and its contractions are always capital."""
    return "I" + word[1:] if word == "i" or word.startswith("i'") else word


def _number(rng: np.random.Generator) -> str:
    kind = rng.integers(5)
    if kind == 0:
        return str(int(rng.integers(1800, 2030)))  # a year
    if kind == 1:
        return f"{int(rng.integers(1, 13))}:{int(rng.integers(0, 60)):02d}"  # a time
    if kind == 2:
        return f"{int(rng.integers(0, 100))}.{int(rng.integers(0, 100)):02d}"  # a decimal
    return str(int(rng.integers(1, 10 ** int(rng.integers(1, 4)))))  # a count


class FileSource:
    """Windows of consecutive words from a user's UTF-8 text file, so lines read like the user's own text."""

    def __init__(self, path: str | Path):
        file = Path(path).expanduser()
        if not file.is_file():
            raise UserError(f"The text file {path} in data.text_file does not exist.")
        try:
            content = unicodedata.normalize("NFC", file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise UserError(f"The text file {path} in data.text_file is not UTF-8 text.") from err
        self.words = [w for w in content.split() if w.isprintable()]
        if not self.words:
            raise UserError(f"The text file {path} in data.text_file holds no words.")
        self.path = str(file)
        self.alphabet = "".join(sorted(set("".join(self.words))))

    def sample(self, rng: np.random.Generator, words: int) -> str:
        words = min(words, len(self.words))
        start = int(rng.integers(0, len(self.words) - words + 1))
        return " ".join(self.words[start : start + words])


def build_text_source(
    text_file: str | None, vocabulary_size: int, frequency_power: float, charset: str
) -> TextSource:
    """The user's text file when one is named, else English words from wordfreq."""
    if text_file:
        return FileSource(text_file)
    return WordSource(vocabulary_size, frequency_power, charset)


def drop_last_word(text: str) -> str | None:
    """The text without its last word, or None when a single word is left (used to fit a width)."""
    head, _, _ = text.rpartition(" ")
    return head or None
