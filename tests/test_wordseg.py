"""Tests for word segmentation: the ORCHID corpus and its OOV split, dictionary segmenters,
word-level scores, the tagging task, and a short train + `jaxdl-wordseg` run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdl import experiment, tasks, wordseg
from jaxdl.data import datasets
from jaxdl.data import word_segmentation as ws
from tests import helpers

# --- dictionary segmenters ---------------------------------------------------------


def test_maximal_matching_prefers_fewest_words_where_longest_matching_is_greedy():
    dictionary = wordseg.Dictionary(["ab", "abc", "cd", "e"])
    # Longest matching takes "abc" and is left with an uncovered "d"; maximal matching
    # covers every character with dictionary words.
    assert wordseg.longest_matching("abcd", dictionary) == ["abc", "d"]
    assert wordseg.maximal_matching("abcd", dictionary) == ["ab", "cd"]
    # Fewest words among full covers; ties go to the longer first word.
    assert wordseg.maximal_matching("abce", ["a", "b", "c", "e", "ab", "bc", "bce"]) == ["a", "bce"]
    assert wordseg.maximal_matching("abc", ["a", "bc", "ab", "c"]) == ["ab", "c"]


def test_unknown_characters_form_one_run_per_gap():
    dictionary = ["ไป", "มา", "กิน"]
    for segmenter in (wordseg.maximal_matching, wordseg.longest_matching):
        assert segmenter("ไปxyzมา", dictionary) == ["ไป", "xyz", "มา"]
        assert segmenter("xyz", dictionary) == ["xyz"]
        assert segmenter("", dictionary) == []
        assert segmenter("กินข้าวไป", dictionary) == ["กิน", "ข้าว", "ไป"]


def test_dictionary_segmentation_of_thai_and_its_oov_failure():
    dictionary = ["ภาษา", "ไทย", "ภาษาไทย", "เขียน", "ติด", "กัน", "ตา", "ตาก", "กลม", "ลม"]
    assert wordseg.maximal_matching("ภาษาไทยเขียน", dictionary) == ["ภาษาไทย", "เขียน"]
    # "ตากลม" is both ตาก|ลม and ตา|กลม: two words either way, the longer first word wins.
    assert wordseg.maximal_matching("ตากลม", dictionary) == ["ตาก", "ลม"]
    # "ติดกัน" (adjacent) is not in the dictionary: both segmenters cut it into the
    # dictionary words it contains, so the gold word is never recovered.
    gold = ["ภาษาไทย", "เขียน", "ติดกัน"]
    for segmenter in (wordseg.maximal_matching, wordseg.longest_matching):
        predicted = segmenter("".join(gold), dictionary)
        assert predicted == ["ภาษาไทย", "เขียน", "ติด", "กัน"]
        counts = wordseg.score([gold], [predicted], dictionary)
        assert counts["oov"].gold == 1 and counts["oov"].correct == 0
        assert counts["iv"].recall == 1.0


# --- scores ------------------------------------------------------------------------


def test_word_scores_match_a_hand_computed_case():
    dictionary = {"a", "b", "ab", "e"}
    gold = [["ab", "cd", "e"], ["xy"]]
    predicted = [["a", "b", "cd", "e"], ["xy"]]
    counts = wordseg.score(gold, predicted, dictionary)
    # Correct: cd, e and xy. Predicted: a b cd e xy; gold: ab cd e xy.
    assert (counts["all"].correct, counts["all"].predicted, counts["all"].gold) == (3, 5, 4)
    assert counts["all"].precision == pytest.approx(3 / 5)
    assert counts["all"].recall == pytest.approx(3 / 4)
    assert counts["all"].f1 == pytest.approx(2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4))
    # IV: predicted a, b, e; gold ab, e; only e is right.
    assert (counts["iv"].correct, counts["iv"].predicted, counts["iv"].gold) == (1, 3, 2)
    assert counts["iv"].f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    # OOV: cd and xy, both found.
    assert (counts["oov"].correct, counts["oov"].predicted, counts["oov"].gold) == (2, 2, 2)
    assert counts["oov"].f1 == 1.0
    # A word is right only if both boundaries match: shifting one boundary loses two words.
    shifted = wordseg.score([["abc", "de"]], [["ab", "cde"]], dictionary)["all"]
    assert (shifted.correct, shifted.f1) == (0, 0.0)
    with pytest.raises(ValueError, match="different texts"):
        wordseg.score([["ab"]], [["a", "c"]], dictionary)
    table = wordseg.format_table({"x": counts})
    assert table.splitlines()[2].startswith("| x | 0.6000 | 0.7500 |")


def test_tags_and_words_round_trip():
    words = ["ภาษาไทย", " ", "ABC", "ติดกัน"]
    text = "".join(words)
    tags = ws.tags_of(words)
    assert tags.tolist() == [1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert wordseg.words_from_tags(text, tags) == words
    # The first character always starts a word, whatever its tag.
    assert wordseg.words_from_tags("abc", [0, 1, 0]) == ["a", "bc"]
    assert wordseg.spans(words) == [(0, 7), (7, 8), (8, 11), (11, 17)]
    ids = ws.encode(text + "é")
    assert ids.dtype == np.uint8 and ids.max() < ws.VOCAB_SIZE and ids.min() >= ws.UNKNOWN_ID
    assert ids[-1] == ws.UNKNOWN_ID
    assert ws.decode(np.concatenate([ids, [0, 5]])) == text + "\ufffd"


# --- corpus ------------------------------------------------------------------------

ORCHID_SAMPLE = """%TTitle: test
#P1
#1
ตา กลม \\\\
(ไป)//
ตา/NCMN
<space>/PUNC
กลม/ADJ
<left_parenthesis>/PUNC
ไป/VACT
<right_parenthesis>/PUNC
//
#2
1/2//
1<slash>2/NCNM
//
#P2
#1
<b> ok//
<b>/PUNC
<space>/PUNC
ok/FWN
//
"""


def test_parse_orchid_reads_words_symbols_and_multiline_sentences():
    paragraphs = ws.parse_orchid(ORCHID_SAMPLE.splitlines())
    assert paragraphs == [[["ตา", " ", "กลม", "(", "ไป", ")"], ["1/2"]], [["<b>", " ", "ok"]]]
    chunks = ws.chunk_paragraph(paragraphs[0], max_len=8)
    assert chunks == [["ตา", " ", "กลม", "("], ["ไป", ")", " ", "1/2"]]
    assert all(len("".join(c)) <= 8 for c in chunks)
    # A word longer than the chunk is dropped and cuts the text there.
    assert ws.chunk_paragraph([["ab", "abcdef", "c"]], max_len=4) == [["ab"], ["c"]]


@pytest.fixture(scope="module")
def corpus():
    return ws.load_corpus()


def test_test_split_holds_oov_words_that_never_reach_the_dictionary(corpus):
    dictionary = corpus.dictionary
    splits = corpus.splits
    words = {name: {w for chunk in chunks for w in chunk} for name, chunks in splits.items()}
    assert dictionary == words["train"]
    held_test, held_val = corpus.held_out["test"], corpus.held_out["validation"]
    assert len(held_test) > 300 and len(held_val) > 100 and not held_test & held_val
    # Held-out types are in no training chunk, so the dictionary never has them.
    assert not held_test & dictionary and not held_val & dictionary
    assert not held_test & words["validation"]
    # Every test held-out type is in the test split (each occurs somewhere in ORCHID).
    assert held_test <= words["test"]
    test_tokens = [w for chunk in splits["test"] for w in chunk]
    oov = [w for w in test_tokens if w not in dictionary]
    assert len(oov) / len(test_tokens) > 0.05
    assert sum(w in held_test for w in oov) > 1000
    sizes = {name: len(chunks) for name, chunks in splits.items()}
    assert sizes["train"] > 20000 and sizes["test"] > 2000 and sizes["validation"] > 1000
    assert all(0 < len("".join(c)) <= ws.MAX_LEN for chunks in splits.values() for c in chunks)
    # Deterministic: the same split again.
    again = ws.split_chunks([c for name in ("train", "validation", "test") for c in splits[name]])
    assert again.held_out == corpus.held_out


def test_dictionary_segmenter_fails_on_held_out_words(corpus):
    dictionary = wordseg.Dictionary(corpus.dictionary)
    gold = corpus.splits["test"][:300]
    predicted = [wordseg.maximal_matching("".join(words), dictionary) for words in gold]
    counts = wordseg.score(gold, predicted, dictionary)
    assert counts["oov"].gold > 20
    assert counts["oov"].recall < 0.1 < 0.8 < counts["iv"].recall


def test_builder_records_match_the_corpus(corpus):
    for split in ("train", "validation", "test"):
        source = datasets.load_source("word_segmentation", split)
        chunks = corpus.splits[split]
        assert len(source) == len(chunks)
        for i in (0, len(chunks) // 2, len(chunks) - 1):
            record = source[i]
            text = "".join(chunks[i])
            assert record["characters"].dtype == np.uint8 and record["characters"].shape == (ws.MAX_LEN,)
            assert ws.decode(record["characters"]) == text
            tags = record["tags"]
            np.testing.assert_array_equal(tags[: len(text)], ws.tags_of(chunks[i]))
            assert (tags[len(text) :] == ws.PAD_TAG).all()
            assert (record["characters"][len(text) :] == ws.PAD_ID).all()


# --- tagging task ------------------------------------------------------------------


def _reference(logits, targets):
    """Per-example masked cross-entropy and accuracy in numpy (float64)."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    losses, accuracies = [], []
    for b in range(len(targets)):
        valid = [t for t in range(targets.shape[1]) if targets[b, t] >= 0]
        if not valid:
            losses.append(0.0)
            accuracies.append(0.0)
            continue
        losses.append(np.mean([-log_probs[b, t, targets[b, t]] for t in valid]))
        accuracies.append(np.mean([np.argmax(logits[b, t]) == targets[b, t] for t in valid]))
    return np.array(losses), np.array(accuracies)


def test_tagging_task_masks_padding():
    task = tasks.build_task(helpers.config("wordseg_bilstm"))
    assert isinstance(task, tasks.Tagging) and task.num_outputs == 2
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 2)).astype(np.float32) * 3
    targets = rng.integers(0, 2, size=(4, 7)).astype(np.int8)
    targets[0, 5:] = ws.PAD_TAG
    targets[1, 1:] = ws.PAD_TAG
    targets[3, :] = ws.PAD_TAG  # No real character at all.
    prepared = task.prepare_targets(jnp.asarray(targets))
    assert prepared.dtype == jnp.int32
    metrics = task.metrics(jnp.asarray(logits), prepared)
    loss, accuracy = _reference(logits, targets)
    np.testing.assert_allclose(np.asarray(metrics["loss"]), loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(task.loss(jnp.asarray(logits), prepared)), loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["accuracy"]), accuracy, rtol=1e-6)
    # Padded positions neither change the loss nor receive a gradient.
    changed = logits.copy()
    changed[targets < 0] = 100.0
    np.testing.assert_allclose(np.asarray(task.loss(jnp.asarray(changed), prepared)), loss, rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda x: task.loss(x, prepared).sum())(jnp.asarray(logits))
    assert np.all(np.asarray(grads)[targets < 0] == 0) and np.any(np.asarray(grads)[targets >= 0] != 0)
    with pytest.raises(ValueError, match="num_classes"):
        tasks.Tagging(num_classes=1)


def test_wordseg_config_validates_and_has_the_agreed_shapes():
    for name in ("lstm", "gru"):
        config = helpers.config("wordseg_bilstm", model__name=name)
        run = experiment.Experiment(config)
        model = run.model
        assert run.sample_input.dtype == np.uint8  # Character ids stay integers through the pipeline.
        x = jax.ShapeDtypeStruct((2, ws.MAX_LEN), jnp.int32)
        variables = jax.eval_shape(lambda x, model=model: model.init(jax.random.key(0), x), x)
        out = jax.eval_shape(lambda v, x, model=model: model.apply(v, x), variables, x)
        assert out.shape == (2, ws.MAX_LEN, 2)


# --- end to end --------------------------------------------------------------------


@pytest.mark.slow
def test_short_training_then_wordseg_cli(tmp_path, capsys):
    from jaxdl import train

    workdir = tmp_path / "run"
    config = helpers.config(
        "wordseg_bilstm",
        model__kwargs=f"{{'vocab_size': {ws.VOCAB_SIZE}, 'embed_dim': 8, 'hidden_size': 8, "
        "'bidirectional': True, 'output': 'sequence'}",
        training__batch_size=64,
        training__num_steps=4,
        training__eval_every_steps=0,  # Only at the end: the eval passes cost more than the steps.
        training__checkpoint_every_steps=2,
        training__log_every_steps=2,
        optimizer__learning_rate=0.01,
        parallel__num_devices=1,
    )
    result = train.train_and_evaluate(config, workdir)
    assert 0.0 <= result["test"]["accuracy"] <= 1.0 and np.isfinite(result["test"]["loss"])
    assert result["best_step"] == 4
    capsys.readouterr()

    texts = ["ภาษาไทยเขียนติดกัน", "ประเทศไทยได้มีการปรับเปลี่ยนโครงสร้าง"]
    assert wordseg.wordseg_cli([f"--workdir={workdir}", "--dictionary", *texts]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    dictionary = wordseg.Dictionary(ws.load_corpus().dictionary)
    # The tagger's line: the tags of the best checkpoint's model, recomputed here.
    params, step = helpers.saved_params(workdir, "best")
    assert step == result["best_step"]
    model = experiment.build_model(config, tasks.build_task(config))
    for k, text in enumerate(texts):
        tagger_line, dictionary_line = lines[2 * k], lines[2 * k + 1]
        assert tagger_line.startswith("tagger: ") and dictionary_line.startswith("dictionary: ")
        ids = jnp.asarray(ws.encode(text)[None].astype(np.int32))
        logits = np.asarray(model.apply({"params": params}, ids))[0]
        words = tagger_line[len("tagger: ") :].split(" | ")
        assert "".join(words) == text
        # Word starts where the model says so (near-ties, after 4 steps, may go either way).
        sure = np.abs(logits[:, 1] - logits[:, 0]) > 1e-3
        sure[0] = False  # The first character always starts a word.
        np.testing.assert_array_equal(ws.tags_of(words)[sure], np.argmax(logits, axis=-1)[sure])
        assert sure.sum() > len(text) // 2
        assert dictionary_line[len("dictionary: ") :].split(" | ") == wordseg.maximal_matching(text, dictionary)

    assert wordseg.wordseg_cli([f"--workdir={tmp_path / 'missing'}", texts[0]]) == 2
    assert "no config.json" in capsys.readouterr().err
    # The dictionary alone needs no workdir and prints unlabelled lines.
    assert wordseg.wordseg_cli(["--dictionary", "--separator=/", texts[0]]) == 0
    assert capsys.readouterr().out == "/".join(wordseg.maximal_matching(texts[0], dictionary)) + "\n"
    with pytest.raises(SystemExit):
        wordseg.wordseg_cli([texts[0]])

    # The report scores the dictionary and the tagger on the same test words.
    report = helpers.load_experiment("wordseg_report").report([str(workdir)], split="test")
    rows = [line for line in report.splitlines() if line.startswith("| dictionary") or line.startswith("| tagger")]
    assert len(rows) == 3 and "run, step 4" in rows[-1]


def test_the_old_name_jaxdl_segment_says_the_new_one_then_runs(capsys):
    text = "ภาษาไทยเขียนติดกัน"
    assert wordseg.segment_cli(["--dictionary", "--separator=/", text]) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        "jaxdl-segment is now jaxdl-wordseg; the old name goes in the next release"
    ]
    assert captured.out == "/".join(wordseg.maximal_matching(text, ws.load_corpus().dictionary)) + "\n"
    # Both console scripts are declared: the new name and, for one release, the old one.
    setup = (helpers.ROOT / "setup.py").read_text()
    assert '"jaxdl-wordseg=jaxdl.wordseg:wordseg_cli"' in setup and '"jaxdl-segment=jaxdl.wordseg:segment_cli"' in setup


def test_a_workdir_of_another_task_is_one_line(tmp_path, capsys):
    workdir = tmp_path / "digits"
    workdir.mkdir()
    (workdir / "config.json").write_text(helpers.tiny_cnn().to_json())
    assert wordseg.wordseg_cli([f"--workdir={workdir}", "ภาษา"]) == 2
    assert capsys.readouterr().err == (
        f"jaxdl-wordseg: error: {workdir} was trained for task 'classification', not 'tagging'\n"
    )
