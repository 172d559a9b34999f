"""TrainedRun: best vs latest checkpoint, the EMA, class names from the dataset; and no task is named by a string."""

import json
import re

import pytest

from jaxdl import checkpoint, tasks
from jaxdl.trained import TrainedRun
from tests import helpers
from tests.test_ema import EMA_RUN


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """The tiny CNN with an EMA, 10 steps, validated at 5 and 10 (test_ema's run, trained once per session)."""
    return helpers.shared_run(tmp_path_factory, "ema", helpers.tiny_cnn(**EMA_RUN))


def test_best_and_latest_hold_the_ema_params_of_their_checkpoints(ema_run):
    workdir, results = ema_run
    best, latest = TrainedRun.open(workdir), TrainedRun.open(workdir, which="latest")
    assert best.uses_ema and latest.uses_ema
    assert (best.step, latest.step) == (results["best_step"], results["final_step"]) and latest.step == 10
    with checkpoint.Checkpoints(workdir) as checkpoints:
        for run, kind in ((best, "best"), (latest, "latest")):
            tree, _, _ = checkpoints.restore_any(kinds=(kind,))
            helpers.assert_trees_close(run.variables["params"], tree["ema_params"], rtol=0, atol=0)
            helpers.assert_trees_close(run.variables["batch_stats"], tree["batch_stats"], rtol=0, atol=0)


def test_evaluate_gives_the_run_test_metrics_with_the_ema(ema_run):
    """The test metrics of results.json came from the best checkpoint's EMA params: evaluate() repeats them."""
    workdir, results = ema_run
    assert TrainedRun.open(workdir).evaluate() == results["test"]


def test_class_names_come_from_the_dataset(tmp_path):
    """A ClassLabel's names (breast_cancer); none for a task without classes (sunspots forecasting)."""
    for name, expected in (("breast_cancer_logreg", ("malignant", "benign")), ("sunspots_lstm", None)):
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / "config.json").write_text(json.dumps(helpers.config(name).to_dict()))
        assert TrainedRun.open(workdir).class_names == expected


# A task named by a string: `task.name == ...`, `task.name in (...)`, or a task's name compared as a literal.
_TASK_NAMES = "|".join(tasks.list_tasks())
_NAME_COMPARISON = re.compile(
    rf"task\.name\s*(==|!=|\bin\b|\bnot\s+in\b)"
    rf"|\.name\s*(==|!=)\s*[\"']({_TASK_NAMES})[\"']"
    rf"|[\"']({_TASK_NAMES})[\"']\s*(==|!=|\bin\b|\bnot\s+in\b)"
)


def _task_name_comparisons(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if _NAME_COMPARISON.search(line)]


def test_no_module_compares_a_task_name_to_a_string():
    """What differs between tasks is the task's own method or attribute, not a branch on its name elsewhere."""
    # The check finds what predict.py did before describe_prediction.
    assert _task_name_comparisons('        if self.config.task.name == "detection":')
    assert _task_name_comparisons('    if name not in TASKS and config.task.name in ("classification",):')
    assert _task_name_comparisons('    if cfg.task.name != "tagging":')
    found = {}
    for path in sorted((helpers.ROOT / "jaxdl").rglob("*.py")):
        lines = _task_name_comparisons(path.read_text())
        if lines:
            found[str(path.relative_to(helpers.ROOT))] = lines
    assert not found, f"task names compared as strings: {found}"
