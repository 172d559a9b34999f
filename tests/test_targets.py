"""Target kinds are registered classes: a new one rides the pipeline and its flips; tasks name the kinds they take."""

import re

import numpy as np
import pytest

from jaxdl import tasks
from jaxdl.data import pipeline, targets, transforms
from jaxdl.errors import ConfigError
from tests import helpers

SIZES = (16, 8, 8)
WIDTH = 64  # shapes' images are 64 x 64.


class FirstBox(targets.TargetKind):
    """A toy kind: a shapes record's first object, as its class `target` [B], `boxes` [B, 1, 4] and `box_valid`.

    It also makes a `record` key (each example's record index, moved by nothing)
    so the test can find the record of every example after a shuffle.
    """

    bounded_ids = True

    @classmethod
    def feature_keys(cls, config):
        return ("target_key", "boxes_key", "box_valid_key")

    @classmethod
    def batch_kinds(cls, config):
        return {"target": "other", "boxes": transforms.BOXES, "box_valid": transforms.BOX_VALID, "record": "other"}

    def __init__(self, config, split, num_classes=None):
        super().__init__(config, split, num_classes)
        self.boxes_key, self.valid_key, self.offset = config.boxes_key, config.box_valid_key, config.box_class_offset

    def _first(self, classes, boxes, valid, indices):
        j = np.argmax(np.asarray(valid) != 0, axis=1)  # The first valid slot.
        rows = np.arange(len(j))
        return {
            "target": (np.asarray(classes)[rows, j] - self.offset).astype(np.int32),
            "boxes": np.asarray(boxes, np.float32)[rows, j][:, None, :],
            "box_valid": np.ones((len(j), 1), np.uint8),
            "record": np.asarray(indices, np.int64),
        }

    def read_columns(self, source, indices, batch):
        columns = [source.column(k)[indices] for k in (self.key, self.boxes_key, self.valid_key)]
        return self._first(*columns, indices)

    def read_records(self, records, indices, batch):
        columns = [np.stack([r[k] for r in records]) for k in (self.key, self.boxes_key, self.valid_key)]
        return self._first(*columns, indices)

    def check_batch(self, batch, indices):
        np.testing.assert_array_equal(batch["record"], indices)  # The indices reach the check, in order.
        if self.num_classes is not None and (batch["target"] >= self.num_classes).any():
            b = int(np.argmax(batch["target"] >= self.num_classes))
            raise ConfigError(f"config.dataset.target_key: {self.where(indices[b])} has class {batch['target'][b]}")


@pytest.fixture
def first_box(monkeypatch):
    """FirstBox registered as target_kind 'first_box' for one test only."""
    monkeypatch.setattr(targets, "_REGISTRY", dict(targets._REGISTRY))
    return targets.register("first_box")(FirstBox)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


def _config(data_dir, **values):
    """shapes_yolov8n's dataset section on a small shapes build with the toy kind, plus `values`."""
    dataset = helpers.config("shapes_yolov8n").dataset
    settings = {
        "data_dir": str(data_dir),
        "split_sizes": SIZES,
        "target_kind": "first_box",
        "train_transforms": "random_flip(p=1.0)",
        "eval_transforms": "",
    }
    for key, value in {**settings, **values}.items():
        dataset[key] = value
    return dataset


def _first_objects(source, index):
    record = source[int(index)]
    j = int(np.argmax(record["box_valid"] != 0))
    return record, record["boxes"][j], int(record["box_classes"][j]) - 1


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_registered_kind_rides_the_pipeline_and_a_flip_moves_its_boxes(first_box, data_dir, in_memory):
    config = _config(data_dir, cache_in_memory=in_memory)
    splits = pipeline.Splits(config, batch_size=8, num_classes=3)
    assert pipeline.kinds(config) == {
        "input": "image",
        "target": "other",
        "boxes": "boxes",
        "box_valid": "box_valid",
        "record": "other",
    }
    source = splits.source("train")
    batch = next(iter(pipeline.train_loader(splits, global_batch_size=8, seed=0)))
    assert set(batch) == {"input", "target", "boxes", "box_valid", "record"}
    assert len(set(batch["record"].tolist())) == 8
    for b, index in enumerate(batch["record"]):
        record, (x0, y0, x1, y1), class_id = _first_objects(source, index)
        np.testing.assert_array_equal(batch["input"][b], record["image"][:, ::-1])  # Flipped, p=1.
        np.testing.assert_allclose(batch["boxes"][b, 0], [WIDTH - x1, y0, WIDTH - x0, y1])
        assert batch["box_valid"][b, 0] == 1 and batch["target"][b] == class_id
    # Evaluation does not flip: the boxes are the records', and padding rows come after the real ones.
    batches = list(pipeline.eval_batches(splits, "test", global_batch_size=8))
    assert [int(b["mask"].sum()) for b in batches] == [8]
    for b, index in enumerate(batches[0]["record"]):
        _, box, class_id = _first_objects(splits.source("test"), index)
        np.testing.assert_array_equal(batches[0]["boxes"][b, 0], box)
        assert batches[0]["target"][b] == class_id


def test_a_kind_with_bounded_ids_checks_them_after_the_transforms(first_box, data_dir):
    splits = pipeline.Splits(_config(data_dir), batch_size=8, num_classes=1)
    with pytest.raises(ConfigError, match=r"config.dataset.target_key: record \d+ of split 'test' of shapes has class"):
        list(pipeline.eval_batches(splits, "test", global_batch_size=8))


def test_a_kind_checks_its_extra_keys_and_features(first_box, data_dir):
    with pytest.raises(ConfigError, match="extra_keys holds 'record', which target_kind='first_box' makes itself"):
        pipeline.Splits(_config(data_dir, extra_keys=("record",)), batch_size=8)
    with pytest.raises(ConfigError, match="config.dataset.boxes_key='bbox' is not a feature of shapes"):
        pipeline.Splits(_config(data_dir, boxes_key="bbox"), batch_size=8)


def test_kinds_are_registered_once_by_name(first_box):
    assert {"label", "mask", "objects", "sequence", "first_box"} <= set(targets.list_kinds())
    assert targets.register("first_box")(FirstBox) is FirstBox  # The same class again is fine.

    class Other(FirstBox):
        """Another class under a taken name."""

    with pytest.raises(ValueError, match="target kind 'first_box' is already registered by"):
        targets.register("first_box")(Other)
    with pytest.raises(ConfigError, match="config.dataset.target_kind='pixels' is not valid"):
        targets.kind_class(_config("unused", target_kind="pixels"))


# --- tasks name the kinds they take ---------------------------------------------------------


def test_every_task_takes_registered_kinds():
    for name, cls in tasks.TASKS.items():
        assert cls.target_kinds and set(cls.target_kinds) <= set(targets.list_kinds()), name


@pytest.mark.parametrize(
    "config, message",
    [
        (
            ("digits_cnn", {"dataset__target_kind": "mask"}),
            "config.task.name='classification' needs label or sequence as targets: "
            "set config.dataset.target_kind='label' or 'sequence' (it is 'mask')",
        ),
        (
            ("digits_cnn", {"task__name": "segmentation"}),
            "config.task.name='segmentation' needs mask as targets: set config.dataset.target_kind='mask' "
            "(it is 'label')",
        ),
        (
            ("shapes_unet", {"task__name": "detection"}),
            "config.task.name='detection' needs objects as targets: set config.dataset.target_kind='objects' "
            "(it is 'mask')",
        ),
        (
            ("shapes_yolov8n", {"dataset__target_kind": "first_box"}),
            "config.task.name='detection' needs objects as targets: set config.dataset.target_kind='objects' "
            "(it is 'first_box')",
        ),
    ],
)
def test_a_task_refuses_a_kind_it_does_not_take_in_one_line(first_box, config, message):
    name, overrides = config
    with pytest.raises(ConfigError) as error:
        tasks.build_task(helpers.config(name, **overrides))
    assert str(error.value) == message


# --- no module compares target_kind to a string ------------------------------------------

# What a string-compared kind looks like: `target_kind == "mask"`, `target_kind in ("mask", ...)`,
# `self.is_mask = ...`, or a kind's name compared to a literal.
_KIND_NAMES = "label|mask|objects|sequence"
_COMPARISONS = [
    re.compile(r"target_kind\w*\s*(==|!=)"),
    re.compile(r"target_kind\w*\s+(not\s+)?in\s+[(\[{\"'A-Z_]"),
    re.compile(r"\bis_(" + _KIND_NAMES + r")\b"),
    re.compile(r"(kind|\.name)\s*(==|!=)\s*[\"'](" + _KIND_NAMES + r")[\"']"),
    re.compile(r"[\"'](" + _KIND_NAMES + r")[\"']\s*(==|!=)\s*\w*kind"),
]


def _string_comparisons(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(rule.search(line) for rule in _COMPARISONS)]


def test_the_scan_finds_the_comparisons_kinds_replaced():
    """Lines of jaxdl before target kinds were classes: each is found."""
    before = [
        'num_classes = config.task.num_classes if config.dataset.target_kind in ("mask", "objects") else None',
        'if dataset.target_kind != "objects":',
        'if config.target_kind == "objects":',
        'self.is_mask = config.target_kind == "mask"',
        "check_choice('dataset.target_kind', config.target_kind, tuple(_TARGET_KINDS)) or config.target_kind in _KINDS",
        'if kind.name == "mask":',
    ]
    assert _string_comparisons("\n".join(before)) == before
    assert _string_comparisons("if target_kind not in accepted:\nkind = targets.kind_class(config)") == []


def test_no_module_compares_target_kind_to_a_string():
    found = {
        str(path.relative_to(helpers.ROOT)): lines
        for path in sorted((helpers.ROOT / "jaxdl").rglob("*.py"))
        if (lines := _string_comparisons(path.read_text()))
    }
    assert found == {}
