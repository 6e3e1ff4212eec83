"""Every config key of the engine, its default and what it means.

This is the only place a key is born. The grammar is reid-strong-baseline's (and NAMA's, seed 002):
``python train.py --config_file configs/X.yml KEY VALUE ...`` merges these defaults <- the YAML file <- the
KEY VALUE pairs. Period keys (WARMUP_ITERS, STEPS, CHECKPOINT_PERIOD, EVAL_PERIOD) count epochs.
"""

from yacs.config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------------------------------------
# MODEL: the embedder (backbone -> pooling -> BNNeck) and which losses train it
# ---------------------------------------------------------------------------------------------------------
_C.MODEL = CN()
# 'auto' (CUDA when available, else CPU), 'cpu' or 'cuda'
_C.MODEL.DEVICE = "auto"
# Backbone: resnet18, resnet34, resnet50, resnet101 (torchvision layouts)
_C.MODEL.NAME = "resnet50"
# Stride of the backbone's last stage: 1 doubles the final feature map (BoT trick), 2 is the ImageNet original
_C.MODEL.LAST_STRIDE = 1
# Local weights file: torchvision ImageNet weights for 'imagenet', one of our checkpoints for 'self'.
# With 'imagenet' and an empty path, torch's hub cache folder is searched for torchvision's file name.
_C.MODEL.PRETRAIN_PATH = ""
# 'imagenet' (backbone from MODEL.PRETRAIN_PATH), 'self' (whole model from our checkpoint), 'none' (random)
_C.MODEL.PRETRAIN_CHOICE = "imagenet"
# 'bnneck': BatchNorm1d after pooling (bias frozen), classification loss sees its output; 'no': no neck
_C.MODEL.NECK = "bnneck"
# Metric (pairwise) loss on the pooled feature: 'triplet' (batch-hard), 'none'
_C.MODEL.METRIC_LOSS_TYPE = "triplet"
# Classification loss on the neck feature: 'softmax' (cross-entropy), 'none'
_C.MODEL.CLS_LOSS_TYPE = "softmax"
# Label smoothing (epsilon 0.1) for the softmax cross-entropy: 'on' or 'off'
_C.MODEL.IF_LABELSMOOTH = "on"

# ---------------------------------------------------------------------------------------------------------
# INPUT: image sizes and augmentation
# ---------------------------------------------------------------------------------------------------------
_C.INPUT = CN()
# [height, width] of training images
_C.INPUT.SIZE_TRAIN = [256, 128]
# [height, width] of test images
_C.INPUT.SIZE_TEST = [256, 128]
# Probability of a horizontal flip
_C.INPUT.PROB = 0.5
# Probability of random erasing (Zhong et al. 2020), applied after normalisation, filled with the mean (0)
_C.INPUT.RE_PROB = 0.5
# Per-channel mean and std used to normalise RGB values in [0, 1]
_C.INPUT.PIXEL_MEAN = [0.485, 0.456, 0.406]
_C.INPUT.PIXEL_STD = [0.229, 0.224, 0.225]
# Zero padding (pixels) before the random crop back to SIZE_TRAIN; 0 disables pad + crop (re-ID pipeline)
_C.INPUT.PADDING = 10
# Augmentation pipeline: 'auto' (by the dataset's protocol), 'reid' (resize, flip, pad + crop, random
# erasing) or 'retrieval' (random resized crop, flip; test: resize + centre crop, as the DML papers)
_C.INPUT.TRANSFORM = "auto"
# Retrieval pipeline: area range of the random resized crop
_C.INPUT.CROP_SCALE = [0.08, 1.0]
# Retrieval pipeline: shorter side at test time before the centre crop to SIZE_TEST (256 for a 224 crop)
_C.INPUT.RESIZE_TEST = 256

# ---------------------------------------------------------------------------------------------------------
# DATASETS
# ---------------------------------------------------------------------------------------------------------
_C.DATASETS = CN()
# Dataset name, or a tuple of names whose train splits are concatenated (labels offset) and each of whose
# test splits is evaluated: market1501, dukemtmc, msmt17, cub, cars, sop, inshop, vehicleid, folder, csv,
# demo (the generated default dataset)
_C.DATASETS.NAMES = "market1501"
# Folder that holds one folder per dataset (market1501/, CUB_200_2011/, ...); for 'folder' the tree itself
_C.DATASETS.ROOT_DIR = "./datasets"
# Train on train + query + gallery of the dataset (ids re-labelled, junk -1 and distractors 0 left out);
# evaluation still uses query vs gallery (re-ID datasets)
_C.DATASETS.COMBINE_ALL = False
# Seed of the generated demo dataset (DATASETS.NAMES 'demo'); a different seed is a different dataset
_C.DATASETS.DEMO_SEED = 0
# 'csv' dataset: the CSV file (columns path,label[,camid][,split]; paths relative to the file)
_C.DATASETS.CSV_FILE = ""
# 'folder'/'csv' without split: fraction of the classes (drawn with SEED) that train; the rest are tested
_C.DATASETS.SPLIT_RATIO = 0.5

# ---------------------------------------------------------------------------------------------------------
# DATALOADER
# ---------------------------------------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes decoding images (0 = in the main process)
_C.DATALOADER.NUM_WORKERS = 4
# 'softmax_triplet' or 'triplet': P identities x K images per batch (PK sampling); 'softmax': random batches
_C.DATALOADER.SAMPLER = "softmax_triplet"
# K, images per identity in a PK batch (identities with fewer images are sampled with replacement)
_C.DATALOADER.NUM_INSTANCE = 4

# ---------------------------------------------------------------------------------------------------------
# SOLVER: optimisation, schedule, periods (in epochs), precision
# ---------------------------------------------------------------------------------------------------------
_C.SOLVER = CN()
# 'Adam', 'AdamW' or 'SGD'
_C.SOLVER.OPTIMIZER_NAME = "Adam"
# Number of training epochs
_C.SOLVER.MAX_EPOCHS = 120
# Learning rate of the backbone and neck weights
_C.SOLVER.BASE_LR = 3.5e-4
# Bias parameters get BASE_LR * BIAS_LR_FACTOR
_C.SOLVER.BIAS_LR_FACTOR = 1.0
# SGD momentum
_C.SOLVER.MOMENTUM = 0.9
# Margin of the triplet loss
_C.SOLVER.MARGIN = 0.3
# Weight decay of weights (convolutions, linear layers, BN scales of the backbone)
_C.SOLVER.WEIGHT_DECAY = 5e-4
# Weight decay of biases
_C.SOLVER.WEIGHT_DECAY_BIAS = 5e-4
# Weight decay of the BNNeck scale and the classifier weights
_C.SOLVER.WEIGHT_DECAY_NECK = 5e-4
# Weight of the classification loss in the total
_C.SOLVER.CLS_LOSS_WEIGHT = 1.0
# Weight of the metric (triplet) loss in the total
_C.SOLVER.TRI_LOSS_WEIGHT = 1.0
# Learning rate decay factor at each epoch of STEPS
_C.SOLVER.GAMMA = 0.1
# Epochs at which the learning rate is multiplied by GAMMA
_C.SOLVER.STEPS = (40, 70)
# Warm-up: the learning rate starts at BASE_LR * WARMUP_FACTOR ...
_C.SOLVER.WARMUP_FACTOR = 0.01
# ... and reaches BASE_LR after WARMUP_ITERS epochs (0 disables warm-up)
_C.SOLVER.WARMUP_ITERS = 10
# 'linear' or 'constant' warm-up
_C.SOLVER.WARMUP_METHOD = "linear"
# Save a checkpoint every CHECKPOINT_PERIOD epochs (and always after the last epoch)
_C.SOLVER.CHECKPOINT_PERIOD = 40
# Log running loss/accuracy every LOG_PERIOD iterations (when no progress bar is shown)
_C.SOLVER.LOG_PERIOD = 20
# Evaluate every EVAL_PERIOD epochs (and always after the last epoch)
_C.SOLVER.EVAL_PERIOD = 40
# Images per training batch (over all processes); with PK sampling = P * DATALOADER.NUM_INSTANCE
_C.SOLVER.IMS_PER_BATCH = 64
# Mixed precision through torch.amp: 'auto' (fp16 on CUDA, off on CPU), 'none', 'fp16' (with a
# GradScaler), 'bf16'
_C.SOLVER.AMP = "auto"

# ---------------------------------------------------------------------------------------------------------
# TEST: evaluation and test.py
# ---------------------------------------------------------------------------------------------------------
_C.TEST = CN()
# Images per batch during feature extraction
_C.TEST.IMS_PER_BATCH = 128
# Checkpoint to evaluate with test.py (a .pt file written by train.py, or best.pt)
_C.TEST.WEIGHT = ""
# Embedding at test time: 'after' the BNNeck or 'before' it (the pooled feature)
_C.TEST.NECK_FEAT = "after"
# 'yes': L2-normalise embeddings before the distance (Euclidean then ranks as cosine); 'no': raw
_C.TEST.FEAT_NORM = "yes"
# Distance between embeddings: 'euclidean' or 'cosine'
_C.TEST.DIST_METRIC = "euclidean"
# Length of the reported CMC curve
_C.TEST.MAX_RANK = 50
# Queries ranked at once; bounds evaluation memory to EVAL_CHUNK x gallery size (0 = each metric's own
# tuned default: 256 for re-ID, 1024 for retrieval)
_C.TEST.EVAL_CHUNK = 0
# Evaluation protocol: 'auto' (the dataset's own), 'reid' (CMC/mAP/mINP, same-id-same-camera removed) or
# 'retrieval' (Recall@K, MAP@R, R-precision, mARP, NMI)
_C.TEST.PROTOCOL = "auto"
# K values of Recall@K; empty = the dataset's customary list (CUB/Cars 1..32, SOP 1..1000, In-shop 1..50)
_C.TEST.RECALL_KS = []
# k-means runs (seeds) averaged for NMI on retrieval benchmarks; 0 = no NMI (Divide-and-Conquer uses 10)
_C.TEST.NMI_RUNS = 0
# k-reciprocal re-ranking (Zhong et al. CVPR 2017) of the re-ID distances: 'yes' or 'no'
_C.TEST.RE_RANKING = "no"
# Re-ranking: size of the k-reciprocal neighbour sets (k1)
_C.TEST.RE_RANKING_K1 = 20
# Re-ranking: neighbours averaged in the local query expansion (k2)
_C.TEST.RE_RANKING_K2 = 6
# Re-ranking: weight of the original distance in the final one (lambda; 1 - lambda for the Jaccard term)
_C.TEST.RE_RANKING_LAMBDA = 0.3
# VehicleID test list: 'small' (800 ids), 'medium' (1600), 'large' (2400)
_C.TEST.VEHICLEID_SIZE = "small"
# VehicleID protocol: 'retrieval' (all-vs-all, Divide-and-Conquer) or 'reid' (one gallery image per id,
# drawn TEST.VEHICLEID_TRIALS times with SEED; the mean is reported)
_C.TEST.VEHICLEID_PROTOCOL = "retrieval"
# VehicleID re-ID protocol: number of random gallery draws averaged
_C.TEST.VEHICLEID_TRIALS = 10
# Datasets evaluated when DATASETS.NAMES holds several: empty = every one of them
_C.TEST.DATASETS = []

# ---------------------------------------------------------------------------------------------------------
# Run-level keys
# ---------------------------------------------------------------------------------------------------------
# Everything a run writes goes here: config.yaml, log.txt, metrics.jsonl, checkpoints/, best.pt
_C.OUTPUT_DIR = "./logs/default"
# Seeds Python, NumPy, torch and the samplers; two CPU runs with the same seed give the same metrics
_C.SEED = 42


def get_defaults() -> CN:
    """A fresh, mutable copy of the defaults."""
    return _C.clone()
