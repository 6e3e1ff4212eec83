"""The valid values of every config key that takes one of a fixed set of values: one table, used twice.

``load_config`` checks every key of :data:`CHOICES` when a config is loaded, so a typo fails in one line
before any dataset is read or any model is built. The modules that build from such a key import its tuple
from here for their own check, which still protects callers that build from a config of their own; a
value valid at load time is therefore valid at build time, and the two lists cannot drift apart.

Keys whose valid names come from a registry that another package fills (MODEL.NAME, DATASETS.NAMES,
TEST.DATASETS, MODEL.METRIC_LOSS_TYPE, MODEL.CLS_LOSS_TYPE, DATALOADER.SAMPLER, SOLVER.METHOD, LOSS.MINER)
are not in the table: they are checked at build time, where the registry lives. ``config`` is the lowest
layer and imports none of those packages.
"""

from __future__ import annotations

from config.errors import check_choice

YES_NO = ("yes", "no")
AUTO_YES_NO = ("auto", "yes", "no")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")
ON_OFF = ("on", "off")
DEVICES = ("auto", "cpu", "cuda")
LAST_STRIDES = (1, 2)
PRETRAIN_CHOICES = ("imagenet", "self", "none")
POOLINGS = ("avg", "max", "avg+max", "gem")
NECKS = ("bnneck", "no")
TRANSFORM_PIPELINES = ("auto", "reid", "retrieval")
OPTIMIZERS = ("Adam", "AdamW", "SGD")
LR_SCHEDULERS = ("warmup_multistep", "step")
WARMUP_METHODS = ("linear", "constant")
AMP_MODES = ("auto", "none", "fp16", "bf16")
CONTRASTIVE_REDUCTIONS = ("sum", "mean")
SOFT_CONTRASTIVE_MININGS = ("at_asms", "asms", "none")
NECK_FEATS = ("after", "before")
DIST_METRICS = ("euclidean", "cosine")
TEST_PROTOCOLS = ("auto", "reid", "retrieval")
VEHICLEID_SIZES = ("small", "medium", "large")
VEHICLEID_PROTOCOLS = ("retrieval", "reid")
RANKED_LIST_FORMATS = ("csv", "json")
IMAGE_CHECKS = ("header", "decode", "off")
BAD_IMAGE_ACTIONS = ("error", "skip")
IMAGE_CACHES = ("none", "ram")
AUGMENT_PLACES = ("cpu", "device")
META_GRAD_MODES = ("double_backward", "jvp")
PAIR_WEIGHT_PLACEMENTS = ("in_exponent", "outside")
THRESHOLD_GENERATOR_MODES = ("none", "threshold", "pair_weight")
DC_HIERARCHIES = ("top_bot", "flat")
DC_MASK_INITS = ("ones", "normal")

# dotted key -> its valid values, in the order the error message lists them
CHOICES: dict[str, tuple] = {
    "MODEL.DEVICE": DEVICES,
    "MODEL.LAST_STRIDE": LAST_STRIDES,
    "MODEL.PRETRAIN_CHOICE": PRETRAIN_CHOICES,
    "MODEL.POOLING": POOLINGS,
    "MODEL.EMBEDDING_NORM": YES_NO,
    "MODEL.BN_FREEZE": YES_NO,
    "MODEL.CHANNELS_LAST": AUTO_YES_NO,
    "MODEL.COMPILE": YES_NO,
    "SOLVER.CUDNN_BENCHMARK": AUTO_YES_NO,
    "SOLVER.OPTIMIZER_IMPL": OPTIMIZER_IMPLS,
    "DATALOADER.PERSISTENT_WORKERS": YES_NO,
    "DATALOADER.CACHE": IMAGE_CACHES,
    "MODEL.NECK": NECKS,
    "MODEL.IF_LABELSMOOTH": ON_OFF,
    "MODEL.IF_WITH_CENTER": YES_NO,
    "INPUT.TRANSFORM": TRANSFORM_PIPELINES,
    "INPUT.AUGMENT_ON": AUGMENT_PLACES,
    "DATALOADER.CHECK_IMAGES": IMAGE_CHECKS,
    "DATALOADER.BAD_IMAGES": BAD_IMAGE_ACTIONS,
    "METHOD.MMSI.GRAD_MODE": META_GRAD_MODES,
    "METHOD.MMSI.WEIGHT_PLACEMENT": PAIR_WEIGHT_PLACEMENTS,
    "METHOD.DDTAS.OTG_MODE": THRESHOLD_GENERATOR_MODES,
    "METHOD.DDTAS.GRAD_MODE": META_GRAD_MODES,
    "METHOD.DC.HIERARCHY": DC_HIERARCHIES,
    "METHOD.DC.MASKING_INIT": DC_MASK_INITS,
    "METHOD.DC.FIXED_MASK": YES_NO,
    "SOLVER.OPTIMIZER_NAME": OPTIMIZERS,
    "SOLVER.LR_SCHEDULER": LR_SCHEDULERS,
    "SOLVER.WARMUP_METHOD": WARMUP_METHODS,
    "SOLVER.AMP": AMP_MODES,
    "LOG.TENSORBOARD": YES_NO,
    "LOG.PLOTS": YES_NO,
    "LOSS.CONTRASTIVE.REDUCTION": CONTRASTIVE_REDUCTIONS,
    "LOSS.SOFT_CONTRASTIVE.MINING": SOFT_CONTRASTIVE_MININGS,
    "LOSS.MARGIN_LOSS.LEARN_BETA": YES_NO,
    "TEST.NECK_FEAT": NECK_FEATS,
    "TEST.FEAT_NORM": YES_NO,
    "TEST.FLIP": YES_NO,
    "TEST.DIST_METRIC": DIST_METRICS,
    "TEST.PROTOCOL": TEST_PROTOCOLS,
    "TEST.RE_RANKING": YES_NO,
    "TEST.VEHICLEID_SIZE": VEHICLEID_SIZES,
    "TEST.VEHICLEID_PROTOCOL": VEHICLEID_PROTOCOLS,
    "TEST.RANKED_LIST_FORMAT": RANKED_LIST_FORMATS,
}


def config_value(cfg, key: str):
    """The value of dotted `key` (e.g. 'LOSS.CONTRASTIVE.REDUCTION') in `cfg`."""
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_choices(cfg) -> None:
    """Raise the ConfigError of check_choice for the first key of CHOICES whose value is not one of its choices."""
    for key, choices in CHOICES.items():
        check_choice(key, config_value(cfg, key), choices)
