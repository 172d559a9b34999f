"""The by-hand experiments: the LSTM tuning grid and the residual-vs-plain study, in miniature."""

import json

import numpy as np
import pytest

from jaxdl import train
from tests import helpers


@pytest.mark.slow
def test_tune_lstm_writes_table_and_figure_for_each_setting(tmp_path):
    tune = helpers.load_experiment("tune_lstm")
    code = tune.main(
        [
            "--out", str(tmp_path),
            "--epochs", "1",
            "--learning-rates", "0.01",
            "--hidden-sizes", "4", "8",
            "--num-layers", "1",
            "--set", "parallel.num_devices=1",
        ]
    )  # fmt: skip
    assert code == 0
    assert len(json.loads((tmp_path / "sweep.json").read_text())["trials"]) == 2  # The grid ran as a jaxdl sweep.
    table = (tmp_path / "summary.md").read_text()
    assert table.count("\n| ") >= 2  # One row per setting.
    for workdir in [p for p in tmp_path.iterdir() if p.is_dir()]:
        results = json.loads((workdir / "results.json").read_text())
        assert f"{results['test']['rmse']:.3f}"[:4] in table and "baseline" in results
    assert any(p.suffix == ".png" and p.stat().st_size > 10_000 for p in tmp_path.iterdir())


def test_residual_vs_plain_configs_table_and_figure(tmp_path):
    study = helpers.load_experiment("residual_vs_plain")
    for name in study.NETS:
        train.Experiment(study.config_for(name, epochs=1, width=4, seed=0))
    steps = list(range(5, 55, 5))
    results = {
        name: {
            "curves": {"train/loss": (steps, list(np.linspace(2, final, 10))), "val/loss": (steps, [1.0] * 10)},
            "best_val_loss": 1.0,
            "test": {"accuracy": 0.5},
        }
        for name, final in [("plain18", 0.2), ("plain34", 0.9), ("resnet18", 0.3), ("resnet34", 0.1)]
    }
    text = study.table(results)
    assert "deeper plain trains worse; deeper residual trains better." in text
    assert f"| plain34 | {np.mean(np.linspace(2, 0.9, 10)[-5:]):.4f} |" in text  # Mean of the last five logs.
    study.plot(results, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 10_000
