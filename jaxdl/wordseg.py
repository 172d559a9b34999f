"""Word segmentation (`wordseg`): dictionary-based maximal matching, a learned tagger, word-level scores.

Thai is written without spaces between words. A dictionary-based segmenter can
only produce words of its dictionary, so it breaks every out-of-vocabulary (OOV)
word into pieces; a character tagger (`configs/wordseg_bilstm.py`) learns where
words start and can place boundaries around words it has never seen. (Image
segmentation, a class per pixel, is `jaxdl.tasks.segmentation`.)

  jaxdl-wordseg --workdir=runs/wordseg "ภาษาไทยเขียนติดกัน"
  jaxdl-wordseg --workdir=runs/wordseg --dictionary "ภาษาไทยเขียนติดกัน"

prints the tagger's words separated by " | " (with `--dictionary`, a `tagger:`
line and a `dictionary:` line, the latter by maximal matching over the
training words of `jaxdl.data.word_segmentation`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np


class Dictionary:
    """A set of words with the prefix set that lets matching stop early."""

    def __init__(self, words: Iterable[str]):
        self.words = frozenset(w for w in words if w)
        self.prefixes = frozenset(w[:i] for w in self.words for i in range(1, len(w) + 1))

    def __contains__(self, word: str) -> bool:
        return word in self.words

    def __len__(self) -> int:
        return len(self.words)

    def matches(self, text: str, start: int) -> list[int]:
        """Ends `j` of the dictionary words text[start:j], longest first."""
        ends = []
        j = start + 1
        while j <= len(text) and text[start:j] in self.prefixes:
            if text[start:j] in self.words:
                ends.append(j)
            j += 1
        return ends[::-1]


def _as_dictionary(dictionary: Dictionary | Iterable[str]) -> Dictionary:
    return dictionary if isinstance(dictionary, Dictionary) else Dictionary(dictionary)


def _cut(text: str, ends: Sequence[int]) -> list[str]:
    starts = [0, *ends[:-1]]
    return [text[a:b] for a, b in zip(starts, ends, strict=True)]


def maximal_matching(text: str, dictionary: Dictionary | Iterable[str]) -> list[str]:
    """Maximal matching: the segmentation into dictionary words with the fewest words.

    Solved exactly by dynamic programming over positions. Characters that no
    dictionary word covers are unavoidable in real text (OOV words, names,
    numbers): each run of consecutive uncovered characters becomes one unknown
    word. The cost of a segmentation is compared as (uncovered characters,
    words): first as few characters outside dictionary words as possible, then
    as few words as possible. Ties go to the longer first word. An OOV word
    therefore comes out as the dictionary words it contains plus unknown runs,
    never as itself (unless no dictionary word occurs in it at all).
    """
    dictionary = _as_dictionary(dictionary)
    n = len(text)
    # choice[k][i] = (cost of text[i:], end of the next word, whether it is an uncovered
    # character), where k = 1 if the word before position i is an unknown run, which an
    # uncovered character at i then extends at no extra word.
    choice = [[((0, 0), n, False)] * (n + 1) for _ in range(2)]
    for i in range(n - 1, -1, -1):
        words = [((choice[0][j][0][0], choice[0][j][0][1] + 1), j, False) for j in dictionary.matches(text, i)]
        after_unknown = choice[1][i + 1][0]
        for k in (0, 1):
            unknown = ((after_unknown[0] + 1, after_unknown[1] + 1 - k), i + 1, True)
            # min keeps the first of equal costs: dictionary words longest first, then unknown.
            choice[k][i] = min([*words, unknown], key=lambda option: option[0])
    result: list[str] = []
    i, k = 0, 0
    while i < n:
        _, end, unknown = choice[k][i]
        if unknown and k:
            result[-1] += text[i:end]
        else:
            result.append(text[i:end])
        i, k = end, int(unknown)
    return result


def longest_matching(text: str, dictionary: Dictionary | Iterable[str]) -> list[str]:
    """Greedy forward longest matching: at each position take the longest dictionary word.

    Where no dictionary word starts, one character is taken as unknown and merged
    with an unknown run right before it. Faster than maximal matching but
    greedy: an early long match can force bad cuts later.
    """
    dictionary = _as_dictionary(dictionary)
    words: list[str] = []
    unknown_run = False
    i = 0
    while i < len(text):
        ends = dictionary.matches(text, i)
        if ends:
            words.append(text[i : ends[0]])
            i, unknown_run = ends[0], False
        else:
            if unknown_run:
                words[-1] += text[i]
            else:
                words.append(text[i])
            i, unknown_run = i + 1, True
    return words


SEGMENTERS = {"maximal": maximal_matching, "longest": longest_matching}


def spans(words: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans [start, end) of consecutive words."""
    result, start = [], 0
    for word in words:
        result.append((start, start + len(word)))
        start += len(word)
    return result


def words_from_tags(text: str, tags: Sequence[int]) -> list[str]:
    """Words of `text` cut before every character tagged 1 (the first character always starts one)."""
    ends = [i for i in range(1, len(text)) if tags[i] == 1] + [len(text)] if text else []
    return _cut(text, ends)


@dataclasses.dataclass
class Counts:
    """Correct, predicted and gold word counts of one class of words; precision, recall and F1."""

    correct: int = 0
    predicted: int = 0
    gold: int = 0

    @property
    def precision(self) -> float:
        """correct / predicted (0 without predictions)."""
        return self.correct / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        """correct / gold (0 without gold words)."""
        return self.correct / self.gold if self.gold else 0.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall: 2 correct / (predicted + gold)."""
        total = self.predicted + self.gold
        return 2 * self.correct / total if total else 0.0


def score(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], dictionary: Iterable[str] | Dictionary
) -> dict[str, Counts]:
    """Word-level counts over all words ("all"), in-vocabulary ("iv") and out-of-vocabulary ("oov") words.

    `gold[k]` and `predicted[k]` are two segmentations of the same text. A word
    is identified by its character span [start, end) in its text; a predicted
    word is correct when a gold word has the same span (both boundaries match).

    A word, gold or predicted, is in-vocabulary (IV) when its string is in
    `dictionary` (the training words) and out-of-vocabulary (OOV) otherwise. A
    correct word has the gold word's string, so it falls in the same class as
    the gold word it matches. For each class C in {all, iv, oov}:

      precision_C = correct words in C / predicted words in C
      recall_C    = correct words in C / gold words in C
      F1_C        = 2 precision_C recall_C / (precision_C + recall_C)
                  = 2 correct_C / (predicted_C + gold_C)

    recall_oov is the usual OOV recall rate: the fraction of the gold OOV words
    recovered exactly. A dictionary segmenter predicts OOV strings only as runs
    of uncovered characters, so its OOV counts are small and mostly wrong.
    """
    words = dictionary.words if isinstance(dictionary, Dictionary) else frozenset(dictionary)
    counts = {name: Counts() for name in ("all", "iv", "oov")}
    for gold_words, predicted_words in zip(gold, predicted, strict=True):
        if "".join(gold_words) != "".join(predicted_words):
            raise ValueError(f"segmentations of different texts: {''.join(gold_words)!r}")
        gold_spans = set(spans(gold_words))
        for word in gold_words:
            for name in ("all", "iv" if word in words else "oov"):
                counts[name].gold += 1
        for word, span in zip(predicted_words, spans(predicted_words), strict=True):
            for name in ("all", "iv" if word in words else "oov"):
                counts[name].predicted += 1
                counts[name].correct += span in gold_spans
    return counts


def format_table(rows: Mapping[str, Mapping[str, Counts]]) -> str:
    """A markdown table of word-level P/R/F1 (all words) and F1 and recall on IV and OOV words."""
    header = ["segmenter", "P", "R", "F1", "IV F1", "OOV F1", "IV recall", "OOV recall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, c in rows.items():
        values = [c["all"].precision, c["all"].recall, c["all"].f1, c["iv"].f1, c["oov"].f1]
        values += [c["iv"].recall, c["oov"].recall]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


class Tagger:
    """The character tagger of a trained workdir (best checkpoint, else the latest); `run` is its TrainedRun."""

    def __init__(self, workdir: str | Path, batch_size: int = 256):
        # Imported here: the dictionary segmenters and a flag error need no JAX start-up.
        from jaxdl.tasks import Tagging
        from jaxdl.trained import TrainedRun

        self.run = TrainedRun.open(workdir, task_type=Tagging)
        self.step = self.run.step  # Restored now: a workdir without a checkpoint stops here.
        self.batch_size = batch_size

    def tags(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Predicted tags (1: a word starts) of each text's characters."""
        from jaxdl.data import word_segmentation as ws

        result: list[np.ndarray] = []
        for first in range(0, len(texts), self.batch_size):
            batch = texts[first : first + self.batch_size]
            # Lengths rounded up to a multiple of the training length: few shapes to compile.
            width = max(ws.MAX_LEN, -(-max(len(t) for t in batch) // ws.MAX_LEN) * ws.MAX_LEN)
            ids = np.zeros((self.batch_size, width), np.int32)
            for row, text in enumerate(batch):
                ids[row, : len(text)] = ws.encode(text)
            predicted = np.asarray(np.argmax(self.run.outputs(ids), axis=-1))
            result.extend(predicted[row, : len(text)] for row, text in enumerate(batch))
        return result

    def segment(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text cut into words where the tagger predicts a word start."""
        return [words_from_tags(text, tags) for text, tags in zip(texts, self.tags(texts), strict=True)]


def training_dictionary() -> Dictionary:
    """The words of the word_segmentation training split: the dictionary segmenters' lexicon."""
    from jaxdl.data import word_segmentation as ws

    return Dictionary(ws.load_corpus().dictionary)


def wordseg_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-wordseg: prints each text cut into words."""
    parser = argparse.ArgumentParser(
        prog="jaxdl-wordseg",
        description="Cut text into words with a trained character tagger (and, with --dictionary, maximal matching).",
    )
    parser.add_argument("texts", nargs="*", help="texts to segment (default: one per line of standard input)")
    parser.add_argument("--workdir", help="workdir of a run with task 'tagging' (e.g. configs/wordseg_bilstm.py)")
    parser.add_argument("--dictionary", action="store_true", help="also print maximal matching over the training words")
    parser.add_argument("--separator", default=" | ", help="printed between words (default ' | ')")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.workdir is None and not args.dictionary:
        parser.error("give --workdir (the tagger), --dictionary, or both")
    texts = args.texts or [line.rstrip("\n") for line in sys.stdin]
    texts = [t for t in texts if t]
    segmenters = {}
    if args.workdir is not None:
        from jaxdl.cli import report
        from jaxdl.errors import UserError

        try:
            tagger = Tagger(args.workdir)
        except UserError as error:
            return report(parser.prog, error)
        segmenters["tagger"] = tagger.segment(texts)
    if args.dictionary:
        dictionary = training_dictionary()
        segmenters["dictionary"] = [maximal_matching(text, dictionary) for text in texts]
    for k in range(len(texts)):
        for name, segmented in segmenters.items():
            label = f"{name}: " if len(segmenters) > 1 else ""
            print(f"{label}{args.separator.join(segmented[k])}")
    return 0


def segment_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of jaxdl-segment, the old name of jaxdl-wordseg (kept for one release): says so, then runs it."""
    print("jaxdl-segment is now jaxdl-wordseg; the old name goes in the next release", file=sys.stderr)
    return wordseg_cli(argv)


if __name__ == "__main__":
    sys.exit(wordseg_cli())
