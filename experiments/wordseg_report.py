"""Word-level scores of dictionary segmentation and trained taggers on IV and OOV test words.

  python experiments/wordseg_report.py --workdir runs/wordseg [--workdir runs/wordseg_gru] [--split test]

Prints a markdown table: precision, recall and F1 over all words, and F1 and
recall restricted to in-vocabulary and out-of-vocabulary words (definitions in
jaxdl.wordseg.score). The dictionary is the set of words of the training split
of the word_segmentation dataset; the held-out test words are never in it.

Measured (2-core CPU, shared; `jaxdl-train --config=configs/wordseg_bilstm.py`,
3 epochs, and `--config.model.name=gru`; test split: 2,689 chunks, 34,590 gold
words, 2,682 of them out of vocabulary):

| segmenter | P | R | F1 | IV F1 | OOV F1 | IV recall | OOV recall |
|---|---|---|---|---|---|---|---|
| dictionary (maximal matching) | 0.6970 | 0.8299 | 0.7577 | 0.7871 | 0.0084 | 0.8993 | 0.0045 |
| dictionary (longest matching) | 0.6891 | 0.8262 | 0.7514 | 0.7805 | 0.0084 | 0.8953 | 0.0045 |
| tagger: BiLSTM | 0.8251 | 0.8430 | 0.8340 | 0.8727 | 0.4447 | 0.8698 | 0.5242 |
| tagger: BiGRU | 0.8274 | 0.8412 | 0.8343 | 0.8732 | 0.4433 | 0.8680 | 0.5227 |

The dictionary segmenters recover almost no OOV word (they can only emit
dictionary words, or runs of characters no dictionary word covers); the
taggers recover about half of them, and their IV F1 is higher too (their IV
recall is a little lower: they sometimes split or join known words).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from jaxdl import wordseg
except ImportError:
    # Run from a checkout that is not pip-installed: the repository root is then missing from sys.path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jaxdl import wordseg

from jaxdl.data import word_segmentation as ws  # noqa: E402


def report(workdirs: Sequence[str], split: str = "test") -> str:
    """The markdown table for `split`, one row per dictionary segmenter and per tagger workdir."""
    corpus = ws.load_corpus()
    dictionary = wordseg.Dictionary(corpus.dictionary)
    gold = corpus.splits[split]
    texts = ["".join(words) for words in gold]
    rows = {}
    for name, segmenter in wordseg.SEGMENTERS.items():
        rows[f"dictionary ({name} matching)"] = wordseg.score(
            gold, [segmenter(t, dictionary) for t in texts], dictionary
        )
    for workdir in workdirs:
        tagger = wordseg.Tagger(workdir)
        label = f"tagger: {tagger.run.config.model.name} ({Path(workdir).name}, step {tagger.step})"
        rows[label] = wordseg.score(gold, tagger.segment(texts), dictionary)
    counts = next(iter(rows.values()))
    summary = (
        f"{split}: {len(texts)} chunks, {counts['all'].gold} gold words, "
        f"{counts['oov'].gold} out of vocabulary ({counts['oov'].gold / counts['all'].gold:.1%}); "
        f"dictionary: {len(dictionary)} training words"
    )
    return summary + "\n\n" + wordseg.format_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Parses the flags and prints the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", action="append", default=[], help="a tagging workdir (repeatable)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    args = parser.parse_args(argv)
    print(report(args.workdir, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
