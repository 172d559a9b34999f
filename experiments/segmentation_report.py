"""Word-level scores of dictionary segmentation and trained taggers on IV and OOV test words.

  python experiments/segmentation_report.py --workdir runs/segment [--workdir runs/segment_gru] [--split test]

Prints a markdown table: precision, recall and F1 over all words, and F1 and
recall restricted to in-vocabulary and out-of-vocabulary words (definitions in
jaxdl.segment.score). The dictionary is the set of words of the training split
of the word_segmentation dataset; the held-out test words are never in it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from jaxdl import segment
except ImportError:
    # Run from a checkout that is not pip-installed: the repository root is then missing from sys.path.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from jaxdl import segment

from jaxdl.data import word_segmentation as ws  # noqa: E402


def report(workdirs: Sequence[str], split: str = "test") -> str:
    """The markdown table for `split`, one row per dictionary segmenter and per tagger workdir."""
    corpus = ws.load_corpus()
    dictionary = segment.Dictionary(corpus.dictionary)
    gold = corpus.splits[split]
    texts = ["".join(words) for words in gold]
    rows = {}
    for name, segmenter in segment.SEGMENTERS.items():
        rows[f"dictionary ({name} matching)"] = segment.score(
            gold, [segmenter(t, dictionary) for t in texts], dictionary
        )
    for workdir in workdirs:
        tagger = segment.Tagger(workdir)
        label = f"tagger: {tagger.config.model.name} ({Path(workdir).name}, step {tagger.step})"
        rows[label] = segment.score(gold, tagger.segment(texts), dictionary)
    counts = next(iter(rows.values()))
    summary = (
        f"{split}: {len(texts)} chunks, {counts['all'].gold} gold words, "
        f"{counts['oov'].gold} out of vocabulary ({counts['oov'].gold / counts['all'].gold:.1%}); "
        f"dictionary: {len(dictionary)} training words"
    )
    return summary + "\n\n" + segment.format_table(rows)


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
