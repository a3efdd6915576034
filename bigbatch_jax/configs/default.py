"""Every config key, with its meaning. Paper configs import this and override a few.

Optional keys are typed placeholders (None until set) so that the command line
can set them, e.g. --config.batch_size=1024.

Derived quantities (the scaled learning rate, the adapted epochs, the ghost
size, the noise variance) are computed in code from these keys by
``bigbatch_jax.training.make_plan``, so command-line overrides stay consistent.
"""

import ml_collections
from ml_collections.config_dict import FieldReference, placeholder


def get_config() -> ml_collections.ConfigDict:
  """Every key at its default; the paper configs override a few."""
  config = ml_collections.ConfigDict()
  _declare_data(config)
  _declare_model(config)
  _declare_batches_and_regime(config)
  _declare_remedies_and_protocol(config)
  _declare_run(config)
  return config


def _declare_data(config: ml_collections.ConfigDict) -> None:
  """The data: source, generation, augmentation, tfds splits."""
  # Data.
  config.dataset = "mnist1d"  # "mnist1d" | "synthetic" | "npz:/path.npz" | "tfds:NAME"
  config.mnist1d_num_samples = 5000  # MNIST-1D examples generated (train + test)
  # npz: the number of classes (None: largest label + 1, every label in between present)
  config.npz_num_classes = placeholder(int)
  config.data_seed = placeholder(int)  # dataset generation/split seed (None: the source's default)
  # Hold out this fraction of the TRAINING set and evaluate on it instead of the
  # test set, e.g. 0.1 to choose a learning rate (bigbatch_jax/data/validation.py);
  # 0.0: train on all of it and evaluate on the test set.
  config.validation_fraction = 0.0
  # Seeds which examples are held out, independently of config.seed: every seed
  # and grid member of a selection sees the same split.
  config.validation_seed = 0
  # Training augmentation, as the bigBatch reference (preprocess.get_transform):
  # "none"; "cifar": pad 4, random crop, horizontal flip (in-memory image
  # datasets); "imagenet": random resized crop and flip, evaluation on a resize
  # and center crop (streamed datasets, which are resized + center-cropped even
  # with "none", as their images differ in size). Seeded by stream position.
  config.augment = "none"
  # Image side: tfds:caltech101 is resized to it; tfds:imagenet2012 is cropped
  # to it (evaluation resizes the shorter side to image_size * 256 / 224 first).
  config.image_size = 224
  config.tfds_data_dir = placeholder(str)  # tfds data directory (None: $TFDS_DATA_DIR or default)
  # Let tfds download and prepare an absent tfds:NAME dataset (needs tensorflow;
  # ImageNet needs its manual download). False: an absent dataset is an error
  # that says how to prepare it.
  config.tfds_download = False
  # Splits of streamed tfds datasets (tfds:imagenet2012), e.g. "train[:1%]".
  config.tfds_train_split = "train"  # the split trained on
  config.tfds_eval_split = "validation"  # the split evaluated (the test records)
  config.prefetch_batches = 2  # training batches built ahead on a background thread


def _declare_model(config: ml_collections.ConfigDict) -> None:
  """The model and its normalization layers."""
  # Model.
  config.model = "f1"  # a name of bigbatch_jax.models.MODELS
  config.model_options = ml_collections.ConfigDict()  # extra fields of the model class
  config.bn_momentum = 0.9  # flax convention (torch momentum 0.1)
  config.bn_epsilon = 1e-5  # added to the variance before normalising
  config.ghost_stats_update = "sequential"  # GhostBatchNorm running stats: "sequential" | "mean"
  # Variance of each ghost batch: "shifted" (one pass over x minus one of the
  # ghost's own values: accurate at any mean), "two_pass" (E[(x - E[x])^2]) or
  # "one_pass" (flax's fast E[x^2] - E[x]^2, which cancels in float32 when the
  # mean is large against the spread). Plain BatchNorm (no gbn) is flax's.
  config.ghost_variance = "shifted"
  # "gni" (Ghost Noise Injection): who shares a ghost batch drawn with
  # replacement, "per_ghost" (ghost_batch_size consecutive examples) or
  # "per_example" (every example its own, as Kosson et al.'s code).
  config.ghost_draws = "per_ghost"


def _declare_batches_and_regime(config: ml_collections.ConfigDict) -> None:
  """The variant, the batch sizes and the base regime."""
  # Variant and batch sizes (Hoffer Table 1 columns; see training/variants.py).
  config.variant = "sb"  # e.g. "lb+lr+gbn+ra"
  config.base_batch_size = 128  # B_S: the batch the regime was tuned for
  config.large_batch_size = 4096  # B_L: the batch of "lb" variants
  config.batch_size = placeholder(int)  # None: base_batch_size for "sb", large_batch_size for "lb"
  config.ghost_batch_size = placeholder(int)  # with "gbn" or "gni"; None: base_batch_size
  config.lr_rule = placeholder(
    str
  )  # None: from the variant ("lr": sqrt, "linear": linear, else none)

  # Base regime (for base_batch_size), in epochs, as the bigBatch code defines it.
  config.regime = ml_collections.ConfigDict()
  config.regime.lr = 0.1  # initial learning rate at base_batch_size
  config.regime.momentum = 0.9  # SGD momentum
  config.regime.weight_decay = 0.0  # L2 weight decay
  config.regime.epochs = 10.0  # training length at base_batch_size
  config.regime.drop_epochs = ()  # epochs at which lr *= drop_factor
  # Or the drops as fractions of regime.epochs (used when drop_epochs is empty):
  # they follow a later --config.regime.epochs override.
  config.regime.drop_fractions = ()
  config.regime.drop_factor = 0.1  # lr multiplier at each drop
  config.regime.nesterov = False  # Nesterov momentum
  # The rate's shape: "steps" (x drop_factor at each drop) or "poly" (You et al.'s
  # LARS/LAMB schedule: linear warmup from 0 over poly_warmup_epochs, then
  # (1 - progress)^poly_power to 0 at the end; the drops are not used).
  config.regime.decay = "steps"
  config.regime.poly_warmup_epochs = 5.0  # "poly": epochs of the linear warmup
  config.regime.poly_power = 2.0  # "poly": the decay's exponent
  config.num_epochs = placeholder(
    float
  )  # None: regime.epochs (times r with "ra"); else overrides it


def _declare_remedies_and_protocol(config: ml_collections.ConfigDict) -> None:
  """The remedies, the protocol items and the non-finite policies."""
  # Remedies.
  # Global-norm clipping on every variant (None: only with "clip", at 5).
  config.grad_clip_norm = placeholder(float)
  config.grad_clip_steps = placeholder(int)  # clip only the first N updates (None: every update)
  config.drop_distances = placeholder(tuple)  # "dist": ||w - w0|| at which lr drops
  config.drop_distances_from = placeholder(str)  # "dist": take them from this run's workdir
  config.batch_growth_factor = placeholder(float)  # "grow": per drop epoch (None: 1/drop_factor)
  # "grow": the largest batch; from it on the remaining drops decay the lr
  # (Smith et al.'s hybrid). None: growing past the training set is an error.
  config.batch_growth_max = placeholder(int)
  config.grow_lr_follows_batch = False  # "grow": the lr rule follows the batch (lr grows too)
  config.warmup_epochs = 5.0  # "warmup": Goyal et al.'s linear ramp to the scaled lr
  config.lars_trust_coefficient = 0.001  # "lars": eta of You et al. 2017

  # Protocol: "clean" (what the papers describe), "reference" (everything the
  # bigBatch code does, per Table 1 column: items 1-7 below) or
  # "reference-fitted" (items 1, 2 and main_normal_lr: the selection fitted to
  # the paper's numbers). Each key overrides its protocol's default when set;
  # None takes the protocol's (bigbatch_jax.protocol).
  config.protocol = "clean"
  config.momentum_restart = placeholder(bool)  # 1: a fresh SGD momentum every epoch
  # 2: pad 2 with black, crop, flip on in-memory image data (MNIST)
  config.reference_mnist_augment = placeholder(bool)
  config.bn_scale_uniform = placeholder(bool)  # 3: BN scales U(0, 1)
  # 4: each column's script, batch, ghost size, lr rule, stretch (bigbatch_jax.reference_columns)
  config.script_columns = placeholder(bool)
  # fitted alternative to 4: lr x (B/256)**p, regime stretch ceil(B/256) on every column
  config.main_normal_lr = placeholder(bool)
  config.partial_last_batch = placeholder(bool)  # 5: each epoch's partial batch kept
  config.unbiased_running_variance = placeholder(bool)  # 6: BN keeps PyTorch's n/(n-1) variance
  config.reference_mnist_normalize = placeholder(bool)  # 7: MNIST Normalize(0.5, 0.5), any route
  config.mult_noise_variance = placeholder(float)  # "mult" noise sigma^2 (None: matched, r - 1)
  config.nonfinite_policy = "stop"  # non-finite loss/gradient: "stop" (error) | "skip" (the update)
  # "skip": stop with the divergence error past this fraction of the planned updates
  # skipped, or this many consecutive skips (seen at the logged steps).
  config.nonfinite_max_skip_fraction = 0.05
  config.nonfinite_max_consecutive_skips = 10  # "skip": consecutive skips that stop the run
  # Stop when the logged loss exceeds this many times the first logged loss.
  config.divergence_loss_factor = FieldReference(1000.0, field_type=object)  # None: off
  config.noise_alpha = 1e-5  # "white" noise: variance alpha / (1 + t)^gamma (Jaiswal & Taura)
  config.noise_gamma = 0.55  # "white" noise: the decay exponent gamma


def _declare_run(config: ml_collections.ConfigDict) -> None:
  """The keys of how a run is carried out (speed, seed, devices, hosts, logging, checkpoints)."""
  # Speed.
  config.steps_per_call = 1  # most updates per jitted call (lax.scan); calls end at events
  config.compute_dtype = "float32"  # "bfloat16": bf16 compute, f32 params and BN statistics
  config.seed = 0  # parameters, data order, dropout and noise
  # A population: a tuple of seeds, e.g. --config.seeds='(0,1,2)', trains one
  # member per seed in one compiled step (bigbatch_jax/training/population.py);
  # member i equals the single run of seeds[i]. None or an int (equal to
  # config.seed): the single run of config.seed.
  config.seeds = FieldReference(None, field_type=object)
  # Per-member values crossed with the seeds, e.g. '{"regime.lr": (0.03, 0.1)}' (None: none).
  # In code, store it as configs.common.grid_config({...}): a dict with dotted keys
  # cannot be copied by ConfigDict.copy_and_resolve_references.
  config.population_grid = FieldReference(None, field_type=object)
  config.num_devices = placeholder(int)  # devices of the data-parallel mesh (None: all)
  # A population's members split over this many groups of the devices (it must
  # divide num_devices and the number of members); each group splits its
  # members' batches. On a CPU, simulate devices (XLA_FLAGS=
  # --xla_force_host_platform_device_count=N) so that each core runs members.
  config.member_devices = 1
  # Multi-host: jax.distributed.initialize(). Unset address/count/id are taken
  # from the cluster environment (SLURM, Kubernetes, Cloud TPU).
  config.distributed = False
  config.coordinator_address = placeholder(str)  # e.g. "10.0.0.1:1234"
  config.num_processes = placeholder(int)  # processes of the multi-host run
  config.process_id = placeholder(int)  # this process's index among them
  config.distributed_timeout_s = 300  # initialize and heartbeat timeout: a dead peer fails the run
  config.log_every_steps = 50  # metrics come to the host only at these steps
  config.eval_every_epochs = 1.0  # test-set evaluation period
  config.eval_on_train = True  # also evaluate the whole training split
  config.eval_batch_size = 1000  # batch of the evaluation passes (a multiple of the devices)
  config.checkpoint_every_steps = 1000  # 0: only the final checkpoint
  config.max_checkpoints_to_keep = 2  # the latest checkpoints kept on disk
  # Resume a workdir whose config differs: True (any change) or the changed
  # fields, e.g. --config.allow_config_change='("regime.lr",)' (training/workdir.py).
  config.allow_config_change = FieldReference(False, field_type=object)
  config.stop_after_steps = placeholder(
    int
  )  # stop (checkpointed) after this many updates; rerun to go on
  config.progress_bar = True  # a tqdm bar of the updates on stderr
