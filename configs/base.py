"""Shared defaults of every jaxdl experiment; experiment files import and override.

Each key is documented where it is set. Launch an experiment with
`jaxdl-train --config=configs/<experiment>.py --workdir=runs/<name>` and override
any key with `--config.<key>=<value>`.
"""

import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Returns the base config; not an experiment of its own."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Seeds init, dropout and the data order: same seed, same numbers.
    # JAX's persistent compilation cache: a later run of the same config loads its
    # compiled steps instead of compiling them. Default $JAXDL_COMPILATION_CACHE_DIR,
    # else ~/.cache/jaxdl/compilation; "" switches it off. Anyone who can write to it
    # can change what runs: keep it private (see jaxdl.compile_cache).
    config.compilation_cache_dir = os.environ.get("JAXDL_COMPILATION_CACHE_DIR", "~/.cache/jaxdl/compilation")
    # Compute dtype of the model: float32 | bfloat16 (mixed precision: params,
    # optimizer state and the loss stay float32).
    config.dtype = "float32"
    # Rematerialise the model's blocks in the backward pass (less activation memory,
    # more compute): none | full (keep block inputs only) | dots_saveable |
    # dots_with_no_batch_dims_saveable (also keep matmul outputs). Models with a
    # `remat` field only (ViT, ConvNeXt).
    config.remat = "none"
    # Initialise with an `rbg` key derived from config.seed (fast to compile, see
    # jaxdl.experiment.init_key) instead of the seed's threefry key; dropout and data
    # keep threefry either way. False reproduces the init numbers of older runs.
    config.fast_init = True
    # A PyTorch state dict in the reference's naming (torchvision, smp, Ultralytics)
    # to start from instead of a random init: .safetensors, .npz, or a torch.save
    # checkpoint (.pth/.pt/.bin/.ckpt, an Ultralytics .pt included) read without
    # torch and without running its pickle's code; see config.transfer.
    config.init_from = ""

    config.transfer = ml_collections.ConfigDict()
    # Regex over '/'-joined param paths (e.g. "^head/"): these keep their fresh
    # init instead of being loaded. Tensors whose shape differs (a head with a
    # new number of classes) are never loaded.
    config.transfer.exclude = ""
    # Regex over param paths (e.g. "^(features|stem)"): matching params and their
    # BatchNorm statistics are frozen; the rest trains.
    config.transfer.freeze = ""

    config.model = ml_collections.ConfigDict()
    config.model.name = "cnn"  # A name from jaxdl.models.list_models().
    # Keyword arguments of the model constructor (features, dropout_rate, ...).
    config.model.kwargs = ml_collections.ConfigDict()
    # Models with auxiliary outputs in training (GoogLeNet): loss = main + w * sum(aux).
    config.model.aux_loss_weight = 0.3

    config.task = ml_collections.ConfigDict()
    # A name from jaxdl.tasks.list_tasks(): classification | regression | forecasting (time
    # series) | tagging (a label per position) | segmentation (a class per pixel) | detection.
    config.task.name = "classification"
    # Classes (tags) of classification, tagging, segmentation and detection; a classifier
    # of 2 classes has one logit and a sigmoid loss.
    # 0: from a dataset read from disk (its class folders, data.yaml names, or a mask
    # folder's largest id + 1), written into the run's config.json.
    config.task.num_classes = 10
    config.task.num_targets = 1  # Regression only.
    config.task.label_smoothing = 0.0  # Classification training loss only; eval loss is plain.
    # Forecasting only: the model predicts the change from the window's last value (y = x_T + output).
    config.task.predict_change = False
    # Segmentation only: per-class loss weights (empty: all 1), and the weight of a
    # (1 - soft Dice) term added to the per-pixel cross-entropy.
    config.task.class_weights = ()
    config.task.dice_weight = 0.0
    # Detection only: the model's output format (yolov8: YOLOv8/YOLO11; yolov1), and
    # what evaluation keeps (score >= score_threshold, class-aware NMS at iou_threshold,
    # at most max_detections per image).
    config.task.head = "yolov8"
    config.task.score_threshold = 0.001
    config.task.iou_threshold = 0.7
    config.task.max_detections = 300

    config.dataset = ml_collections.ConfigDict()
    # A jaxdl builder (digits, breast_cancer, diabetes; time series sunspots, co2),
    # csv (a time series read from config.dataset.path) or a tfds name.
    config.dataset.name = "digits"
    config.dataset.data_dir = ""  # Empty: $JAXDL_DATA_DIR, else ~/.cache/jaxdl/datasets.
    config.dataset.train_split = "train"
    config.dataset.val_split = "validation"
    config.dataset.test_split = "test"
    config.dataset.input_key = "image"
    config.dataset.target_key = "label"
    # What the target is: label (a class id or values per example) | mask (a class
    # id per pixel, [H, W]) | sequence (a tag per position) | objects (below); each
    # is a class in jaxdl/data/targets.py. Transforms move masks with their images
    # (nearest-neighbour), labels and sequences never.
    config.dataset.target_kind = "label"
    # Further record features carried into batches under their own names, e.g.
    # ("boxes", "box_classes", "box_valid"): boxes move with their images.
    config.dataset.extra_keys = ()
    config.dataset.ignore_index = 255  # The mask value of unlabelled pixels (also crop and letterbox padding).
    # target_kind "objects" (detection; see jaxdl.data.objects): target_key names the
    # objects' class ids, boxes_key their boxes (box_format "xyxy" pixels, or "tfds":
    # normalised ymin, xmin, ymax, xmax), box_valid_key marks real ones among padded
    # slots, box_crowd_key flags crowd regions (e.g. objects/is_crowd: kept, out of
    # the loss, COCO's ignore regions in evaluation), box_area_key names each
    # object's annotated area (e.g. objects/area; COCO's size ranges read it,
    # default w*h). Batches hold max_boxes slots; box_class_offset is subtracted from the ids.
    config.dataset.boxes_key = ""
    config.dataset.box_valid_key = ""
    config.dataset.box_crowd_key = ""
    config.dataset.box_area_key = ""
    config.dataset.box_format = "xyxy"
    config.dataset.max_boxes = 100
    config.dataset.box_class_offset = 0
    # shapes only: (train, validation, test) sizes; each size set is built in its own folder.
    config.dataset.split_sizes = (2000, 200, 200)
    # Transforms as "name(arg=value)|name2(...)"; see jaxdl.data.transforms.
    config.dataset.train_transforms = ""
    config.dataset.eval_transforms = ""
    config.dataset.cache_in_memory = True  # Decode the splits once; for small datasets.
    config.dataset.worker_count = 0  # grain worker processes (0: read in this process).
    config.dataset.prefetch_batches = 2  # Batches placed on device ahead of the step.
    config.dataset.eval_remainder = "pad"  # pad: evaluate every example | drop.
    # Repeated augmentation (DeiT's RASampler): each training batch holds batch_size / k
    # examples k times, each copy augmented on its own; an epoch keeps its number of
    # batches (a 1/k subsample). 1: off. Must divide training.batch_size.
    config.dataset.repeated_augmentations = 1
    # Time series only (sunspots, co2, csv; task forecasting). Cut 70/15/15 in time
    # order; a window of `lookback` past values predicts the next `horizon` values,
    # records {"input": [lookback, 1], "target": [horizon]} scaled with the train
    # part's mean and std (rule: jaxdl/data/timeseries.py). Splits: train | validation | test.
    config.dataset.lookback = 12  # Past values per window (also the AR baseline's order p).
    config.dataset.horizon = 1  # Future values per window (the model's outputs).
    # csv: the CSV file, one row per time step in time order. Image datasets read from
    # disk (config.dataset.name image_folder | yolo | mask_folder; jaxdl/data/disk.py):
    # image_folder PATH/{train,val,test}/<class>/<image>; yolo a data.yaml (or its
    # folder); mask_folder PATH/{train,val,test}/{images,masks}/. Decoded once into
    # <data dir>/folders (ArrayRecord), read afresh when a file changes.
    config.dataset.path = ""
    config.dataset.column = ""  # csv only: the column of values; empty: the file's only column.
    # csv tables (tasks classification | regression; jaxdl/data/tables.py): the target
    # column; every other column is a numeric feature. Records {"features", "label"}
    # (classes: the column's sorted values) or, with target_key "target", a float target.
    config.dataset.label = ""
    # Image folders only (image_folder, yolo, mask_folder). Every image is decoded with
    # its EXIF orientation applied, then as `channels`: 3 (RGB) or 1 (grayscale).
    config.dataset.channels = 3
    # Without a val/ (or validation/) split on disk, this fraction of train becomes
    # validation: per class, drawn with a fixed seed (not config.seed), so runs of
    # different seeds validate on the same images. 0: no validation split.
    config.dataset.val_fraction = 0.1
    # A file that does not decode stops the run with its name; True skips it instead
    # (the run logs how many and the first names; `jaxdl-data check` lists them).
    config.dataset.skip_bad_files = False
    # mask_folder: stored mask values -> class ids as "stored:class,...", e.g. "255:1"
    # for 0/255 masks (values not listed stay); or RGB colours -> class ids as
    # "#rrggbb:class,...", e.g. "#000000:0,#ff0000:1" (every colour must be listed).
    config.dataset.mask_values = ""
    config.dataset.palette = ""

    # Batch mixing on device, in the train step (classification only).
    config.augment = ml_collections.ConfigDict()
    config.augment.mixup_alpha = 0.0  # > 0: mixup with lambda ~ Beta(alpha, alpha).
    config.augment.cutmix_alpha = 0.0  # > 0: cutmix with lambda ~ Beta(alpha, alpha).
    config.augment.switch_prob = 0.5  # Both on: the chance a batch uses cutmix instead of mixup.

    # An exponential moving average of the params (timm's ModelEmaV2: no warm-up), updated
    # after every optimizer update and checkpointed; when on, validation, the best
    # checkpoint, test and jaxdl-eval/predict use the EMA params. BatchNorm statistics stay live.
    config.ema = ml_collections.ConfigDict()
    config.ema.decay = 0.0  # 0: off; else in (0, 1), e.g. 0.9999.

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # sgd | momentum | adam | adamw | rmsprop
    config.optimizer.learning_rate = 1e-3  # Peak learning rate.
    config.optimizer.momentum = 0.9  # momentum; also nesterov below.
    config.optimizer.nesterov = False
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999  # Also rmsprop's decay of the squared-gradient average.
    config.optimizer.eps = 1e-8
    config.optimizer.weight_decay = 0.0  # Skips biases and norm scales (params of ndim < 2).
    config.optimizer.grad_clip_norm = 0.0  # 0: no clipping.
    config.optimizer.grad_accum_steps = 1  # Accumulate this many batches per update.

    config.schedule = ml_collections.ConfigDict()
    config.schedule.name = "constant"  # constant | cosine | step | exponential
    config.schedule.warmup_steps = 0  # Linear warmup from 0 to the peak.
    config.schedule.decay_boundaries = (0.5, 0.75)  # step: fractions of the training steps.
    config.schedule.decay_factor = 0.1  # step: multiplier at each boundary.
    config.schedule.final_fraction = 0.0  # cosine: final LR as a fraction of the peak.
    config.schedule.decay_every = 0.01  # exponential: decay_factor every this fraction of the run.

    config.training = ml_collections.ConfigDict()
    config.training.batch_size = 64  # Global batch, over all devices and processes.
    config.training.num_epochs = 10.0  # Used when num_steps is 0.
    config.training.num_steps = 0  # > 0 overrides num_epochs.
    config.training.eval_every_steps = 100  # Also at the end; 0: end only.
    config.training.log_every_steps = 20
    config.training.checkpoint_every_steps = 100
    config.training.keep_checkpoints = 2  # Latest K; the best is kept apart.
    # Checkpoint saves return once the state is copied to host memory and the files are written
    # in the background (orbax's async manager): for big states the loop does not wait on disk.
    config.training.async_checkpoints = False
    config.training.early_stopping_patience = 0  # Evaluations without improvement; 0: off.
    # The validation metric that picks the best checkpoint (and drives early stopping),
    # e.g. "val/accuracy"; empty: the task's choice (val/loss; val/miou for segmentation,
    # val/map50_95 for detection).
    # Its direction (higher or lower is better) comes from the task.
    config.training.best_metric = ""
    config.training.progress_bar = True
    # FIRST,LAST (e.g. --config.profile_steps=10,15): a JAX profiler trace of those
    # steps (numbered from 1, as in metrics.jsonl) is written to workdir/profile, for
    # TensorBoard's profile plugin; () is off. In jaxdl-bench, among the timed steps.
    config.profile_steps = ()

    config.parallel = ml_collections.ConfigDict()
    config.parallel.strategy = "jit"  # jit (sharded over a Mesh) | pmap
    config.parallel.num_devices = 0  # 0: every local device.
    config.parallel.distributed = False  # Call jax.distributed.initialize() first.
    # Empty: JAX detects the cluster. Else e.g. "10.0.0.1:1234" with the two keys below.
    config.parallel.coordinator_address = ""
    config.parallel.num_processes = 1
    config.parallel.process_id = 0

    # The jit strategy's device mesh, axes ("data", "fsdp"): the batch splits over
    # both; with fsdp > 1 params and optimizer state are sharded over "fsdp"
    # (ZeRO-3: each array's largest dimension the fsdp size divides). data * fsdp
    # must equal the run's devices (config.parallel.num_devices, else all).
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = 0  # 0: every device the fsdp axis leaves.
    config.mesh.fsdp = 1  # 1: state replicated (data parallel). pmap needs 1.
    # Arrays with fewer elements stay replicated: each sharded array costs an
    # all-gather per step, latency-bound when small, and sharding these saves
    # little. At 2**16 (256 KiB in float32) the whole ones are biases, norm and
    # layer scales and ConvNeXt's depthwise kernels: 0.1% of a ViT-L's params
    # plus Adam state, 0.7% of a ConvNeXt-L's (experiments/fsdp_memory.py).
    config.mesh.fsdp_min_size = 2**16
    return config
