"""experiments/results_table.py on fake finished runs (no training)."""

import json

from jaxdl import configuration
from tests import helpers

results_table = helpers.load_experiment("results_table")


def _run(root, name, *, lr, seed, accuracy, loss):
    """A fake finished workdir: config.json and results.json."""
    workdir = root / name
    workdir.mkdir()
    configuration.save_config(helpers.tiny_cnn(optimizer__learning_rate=lr, seed=seed), workdir / "config.json")
    results = {"test": {"accuracy": accuracy, "loss": loss}, "best_step": 10}
    (workdir / "results.json").write_text(json.dumps(results))
    return workdir


def _runs(tmp_path):
    runs = [
        _run(tmp_path, "a0", lr=0.01, seed=0, accuracy=0.9, loss=0.3),
        _run(tmp_path, "a1", lr=0.01, seed=1, accuracy=0.8, loss=0.5),
        _run(tmp_path, "b0", lr=0.1, seed=0, accuracy=0.7, loss=0.2),
    ]
    (tmp_path / "unfinished").mkdir()
    return [str(r) for r in runs] + [str(tmp_path / "unfinished")]


def test_markdown_mean_and_std_over_seeds(tmp_path, capsys):
    assert results_table.main(_runs(tmp_path)) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "| run | n | test/accuracy | test/loss |",
        "|---|---:|---:|---:|",
        "| optimizer.learning_rate=0.01 | 2 | 0.8500 ± 0.0707 | 0.4000 ± 0.1414 |",
        "| optimizer.learning_rate=0.1 | 1 | 0.7000 | 0.2000 |",
    ]
    assert "unfinished: no results.json" in captured.err


def test_latex_and_chosen_metrics(tmp_path, capsys):
    assert (
        results_table.main([*_runs(tmp_path), "--latex", "--metrics", "test/accuracy,best_step", "--digits", "2"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "\\begin{tabular}{l r r r }" and lines[-1] == "\\end{tabular}"
    assert "run & $n$ & test/accuracy & best\\_step \\\\" in lines
    assert "optimizer.learning\\_rate=0.01 & 2 & 0.85 $\\pm$ 0.07 & 10.00 $\\pm$ 0.00 \\\\" in lines


def test_a_metric_no_run_has_is_one_line(tmp_path, capsys):
    assert results_table.main([*_runs(tmp_path), "--metrics", "test/miou"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "results_table: error: --metrics: 'test/miou' is in no run's results.json; "
        "test metrics there: test/accuracy, test/loss"
    )


def test_markdown_escapes_a_pipe_in_a_row_name():
    rows = [{"label": "dataset.train_transforms=rescale()|random_flip()", "n": 1, "cells": {"m": (0.5, None)}}]
    assert results_table.markdown(rows, ["m"], 2).splitlines()[-1] == (
        "| dataset.train_transforms=rescale()\\|random_flip() | 1 | 0.50 |"
    )
