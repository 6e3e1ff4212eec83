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
# Global pooling of the backbone's feature map: 'avg', 'max', 'avg+max' (their sum: Proxy Anchor, DDTAS),
# 'gem' (generalised mean, exponent MODEL.GEM_P)
_C.MODEL.POOLING = "avg"
# Exponent p of GeM pooling (learnable, initial value)
_C.MODEL.GEM_P = 3.0
# Embedding layer after pooling: a linear map to this many dimensions (kaiming init; seed 004's
# --embedding-size); 0 = none, the pooled feature is the embedding
_C.MODEL.EMBEDDING_DIM = 0
# 'yes': the metric losses' feature is L2-normalised (Proxy Anchor / AMLoss models); 'no'
_C.MODEL.EMBEDDING_NORM = "no"
# 'yes' (seed 004's --bn-freeze 1): every BatchNorm of the backbone stays in eval mode (running statistics
# frozen) with its affine parameters frozen; 'no'
_C.MODEL.BN_FREEZE = "no"
# Channels-last memory format for the model and its input batches: 'auto' (on CUDA), 'yes', 'no'
_C.MODEL.CHANNELS_LAST = "auto"
# torch.compile the model the training step calls: 'no' (default) or 'yes' (a failure stops in one line)
_C.MODEL.COMPILE = "no"
# 'bnneck': BatchNorm1d after pooling (bias frozen), classification loss sees its output; 'no': no neck
_C.MODEL.NECK = "bnneck"
# Metric loss(es) on the pooled feature, several joined by '+' (e.g. 'ms+center'): 'triplet' (batch-hard;
# alias 'tri'), 'tri-n' (on L2-normalised features), 'contrastive', 'ms' (multi-similarity + its miner),
# 'soft_contrastive' (+ LOSS.SOFT_CONTRASTIVE.MINING), 'circle', 'cosface' (pairwise), 'margin'
# (distance-weighted sampling), 'proxy_nca', 'proxy_anchor', 'amloss', 'center', 'triplet_center'
# (= 'triplet+center'), 'pml:<LossClass>' (any pytorch-metric-learning loss, LOSS.PML_KWARGS), 'none'
_C.MODEL.METRIC_LOSS_TYPE = "triplet"
# Classification loss on the neck feature: 'softmax' (cross-entropy), 'arcface', 'cosface', 'n-softmax'
# (NormFace), 'circle' (classification form), 'none'; margin heads use scale SOLVER.CS
_C.MODEL.CLS_LOSS_TYPE = "softmax"
# Label smoothing (epsilon 0.1) of the classification cross-entropy (every head): 'on' or 'off'
_C.MODEL.IF_LABELSMOOTH = "on"
# 'yes' adds the center loss to the metric loss(es) (reid-strong-baseline's switch; see SOLVER.CENTER_*)
_C.MODEL.IF_WITH_CENTER = "no"
# Network arch (NAMA, seed 002): 'baseline', 'uc' (uncertainty head on the metric path), 'clsbaseline',
# 'clsuc' (head on the classification path; 'cls' archs train the classification loss alone); extra '-'
# tokens: 'bn' (a BatchNorm on the pooled feature before its norm is taken), 'no' (nothing), and for clsuc
# the uc-cls margin form 'arc' or 'cos' (default: angular, pi/2 - theta), e.g. 'uc-bn-no', 'clsuc-arc'
_C.MODEL.ARCH = "baseline"
# Function of the standardised feature norm that gives each sample's margin offset u (the MAM):
# 'nn_N' (piecewise linear, N knots), 'tlr[_N]' (odd powers), 'lgd[_N]' (odd Legendre), '*_all*' (all
# powers), 'log_' prefix (of log ||f||); e.g. nn_128, log_nn_64, tlr, lgd_all_5
_C.MODEL.F_BASE = "nn_128"

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
# Where the augmentation and normalisation run: 'cpu' (loader workers, float tensors) or 'device' (workers send
# uint8 images of one size and each sample's random parameters; the run's device augments whole batches)
_C.INPUT.AUGMENT_ON = "cpu"

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
# With workers: keep them between epochs ('yes'/'no'; ended when training ends), and the batches each loads ahead
_C.DATALOADER.PERSISTENT_WORKERS = "no"
_C.DATALOADER.PREFETCH_FACTOR = 2
# 'ram': every image the loaders read is decoded once, before the first epoch/evaluation, into one shared uint8
# tensor (memory: the decoded set's size); 'none': decoded from disk every time it is read
_C.DATALOADER.CACHE = "none"
# 'softmax_triplet' or 'triplet': P identities x K images per batch (PK sampling); 'softmax': random batches
_C.DATALOADER.SAMPLER = "softmax_triplet"
# K, images per identity in a PK batch (identities with fewer images are sampled with replacement)
_C.DATALOADER.NUM_INSTANCE = 4
# Images checked before the first epoch: 'header' (format, size, no decompression bomb), 'decode' (full), 'off'
_C.DATALOADER.CHECK_IMAGES = "header"
# A bad image found by that check: 'error' (stop, listing every one) or 'skip' (drop, OUTPUT_DIR/bad_images.txt)
_C.DATALOADER.BAD_IMAGES = "error"

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
# Margin of the triplet losses (triplet, tri-n) and of the pairwise cosface loss
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
# Learning-rate schedule: 'warmup_multistep' (WARMUP_* then GAMMA at each of STEPS) or 'step' (StepLR:
# times LR_DECAY_GAMMA every LR_DECAY_STEP epochs, no warm-up; seed 004's --lr-decay-step/--lr-decay-gamma)
_C.SOLVER.LR_SCHEDULER = "warmup_multistep"
# StepLR period in epochs
_C.SOLVER.LR_DECAY_STEP = 10
# StepLR factor
_C.SOLVER.LR_DECAY_GAMMA = 0.5
# Seed 004's --warm W: during the first W epochs only the embedding layer and the loss parameters train
# (backbone frozen); 0 = off
_C.SOLVER.WARM_EPOCHS = 0
# Clip every gradient of the main optimizer's parameters to [-v, v] before the step (Proxy Anchor: 10);
# 0 = off
_C.SOLVER.GRAD_CLIP = 0.0
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
# Scale s of the pairwise cosine losses ('cosface' pairwise; NAMA's uc-* losses)
_C.SOLVER.S = 32.0
# Scale of the cosine classification heads (arcface, cosface, n-softmax, circle)
_C.SOLVER.CS = 30.0
# Weight decay of the uncertainty head's coefficients (MODEL.F_BASE)
_C.SOLVER.WEIGHT_DECAY_POLY = 1e-2
# [l_a, u_a]: norm bounds of the norm regulariser (MagFace's [10, 110]); it pulls feature norms toward u_a
_C.SOLVER.NORM_LU = [10.0, 110.0]
# Norm regulariser g: 'exp_K' (e.g. exp_3), 'arc' (MagFace's 1/a + a/u_a^2, rescaled), 'quad'
_C.SOLVER.REG_TYPE = "exp_3"
# Weight of the norm regulariser (with an uncertainty head only; gradient only, logged as reg_loss); 0 = off
_C.SOLVER.MAG_G = 1.0
# Proxies of proxy-based losses (proxy_nca, proxy_anchor, amloss, pml: ones) train at BASE_LR * this
_C.SOLVER.PROXY_LR_FACTOR = 100.0
# Weight of the center loss in the total (reid-strong-baseline: 5e-4)
_C.SOLVER.CENTER_LOSS_WEIGHT = 5e-4
# Learning rate of the centers' own SGD (their gradient is divided by CENTER_LOSS_WEIGHT first, so the
# centers move independently of the loss weight, as in reid-strong-baseline)
_C.SOLVER.CENTER_LR = 0.5
# Images per training batch (over all processes); with PK sampling = P * DATALOADER.NUM_INSTANCE
_C.SOLVER.IMS_PER_BATCH = 64
# Mixed precision through torch.amp: 'auto' (fp16 on CUDA, off on CPU), 'none', 'fp16' (with a
# GradScaler), 'bf16'
_C.SOLVER.AMP = "auto"
# apex's opt_level, as NAMA's YAML files carry it: mapped onto SOLVER.AMP ('O0' -> none; 'O1', 'O2' -> fp16 autocast
# with a GradScaler; 'O3', apex's pure fp16, is refused); '' = not given
_C.SOLVER.OPT_LEVEL = ""
# cuDNN's autotuner for convolutions: 'auto' (on CUDA), 'yes', 'no' (its choice of kernels may vary between runs)
_C.SOLVER.CUDNN_BENCHMARK = "auto"
# The main optimizer's implementation: 'auto' (fused on CUDA, torch's default elsewhere), 'fused', 'foreach',
# 'for_loop'
_C.SOLVER.OPTIMIZER_IMPL = "auto"
# Training method (engine/methods): 'standard' (forward, loss, backward, step every batch), 'grad_accum'
# (one optimizer step per METHOD.GRAD_ACCUM.STEPS batches), 'mmsi', 'ddtas', 'dc' (Divide & Conquer); a
# method's own keys live under METHOD.<NAME>
_C.SOLVER.METHOD = "standard"

# ---------------------------------------------------------------------------------------------------------
# METHOD: the keys of each training method of SOLVER.METHOD, under the method's name
# ---------------------------------------------------------------------------------------------------------
_C.METHOD = CN()
_C.METHOD.GRAD_ACCUM = CN()
# Batches whose gradients are summed before one optimizer step (each loss divided by the window's length);
# windows restart at every epoch, and an epoch's last window may be shorter
_C.METHOD.GRAD_ACCUM.STEPS = 2
# MMSI (seed 001): meta-learned pair weights from a semi-global validation loss (SOLVER.METHOD mmsi)
_C.METHOD.MMSI = CN()
# Features kept per class in the memory (FIFO; seed scripts: 1 contrastive on Cars, 100 MS on CUB, 1000 SOP)
_C.METHOD.MMSI.DSIZE = 100
# Classes the memory must hold before the first step (seed: 98 CUB/Cars, 1000 SOP; capped at the class count)
_C.METHOD.MMSI.MIN_CLASSES = 98
# Images of the validation batch, drawn from the training split with the training augmentation
_C.METHOD.MMSI.VAL_BATCH = 10
# Images per class in the validation batch
_C.METHOD.MMSI.VAL_K = 1
# The meta gradient: 'double_backward' (the released code's) or 'jvp' (the same weights, one backward + one jvp)
_C.METHOD.MMSI.GRAD_MODE = "double_backward"
# Where WMS puts the weight: 'in_exponent' (released code: e^{-a(w s - l)}) or 'outside' (log(1 + sum w e^..))
_C.METHOD.MMSI.WEIGHT_PLACEMENT = "in_exponent"
# DDTAS (seed 000): AT-ASMS + soft contrastive with the online threshold generator (SOLVER.METHOD ddtas)
_C.METHOD.DDTAS = CN()
# The generator (the seed's OTG): 'none' (OTG 0: the plain loss), 'threshold' (per-anchor thresholds from one
# meta gradient step), 'pair_weight' (the released code's MMSI-style pair weights, validation batch vs itself)
_C.METHOD.DDTAS.OTG_MODE = "none"
# Images of the validation batch (seed: 10), drawn from the training split with the training augmentation
_C.METHOD.DDTAS.VAL_BATCH = 10
# Images per class in the validation batch (seed: 2, i.e. 5 classes x 2)
_C.METHOD.DDTAS.VAL_K = 2
# 'threshold': step size eta of lambda_i = lambda - eta * dL_val/d delta_i (our choice: the OTG was not released)
_C.METHOD.DDTAS.THRESHOLD_STEP = 100.0
# 'threshold': bounds the generated thresholds are clipped to
_C.METHOD.DDTAS.THRESHOLD_MIN = 0.5
_C.METHOD.DDTAS.THRESHOLD_MAX = 0.9
# 'pair_weight': the meta gradient, 'double_backward' or 'jvp' (as METHOD.MMSI.GRAD_MODE)
_C.METHOD.DDTAS.GRAD_MODE = "double_backward"
# Divide & Conquer (seed 003): K learners = K masks over one embedding, trained on clusters of the training set
# (SOLVER.METHOD dc); epochs are counted from 0 as in the seed
_C.METHOD.DC = CN()
# K reached by the hierarchy (seed: --nb-clusters; a power of two for 'top_bot')
_C.METHOD.DC.NB_CLUSTERS = 8
# Epochs between re-clusterings, and between doublings of K (seed: --mod-epoch)
_C.METHOD.DC.MOD_EPOCH = 2
# In epochs e with e % MOD_EPOCH < this, the backbone's learning rate is 0: only the embedding layer, the masks
# and the loss's parameters train (seed: --mod-epoch-freeze; 0 = never)
_C.METHOD.DC.MOD_EPOCH_FREEZE = 1
# From this epoch on every batch trains the full embedding: no mask, masks no longer trained, no regulariser;
# batches still come cluster by cluster (seed: --force-full-embedding-epoch; -1 = never)
_C.METHOD.DC.FORCE_FULL_EMBEDDING_EPOCH = 80
# The masks' learning rate and weight decay: SOLVER.BASE_LR and SOLVER.WEIGHT_DECAY times these
# (seed: --mask-lr-mult, --mask-wd-mult)
_C.METHOD.DC.MASK_LR_MULT = 100.0
_C.METHOD.DC.MASK_WD_MULT = 1.0
# Weight of the orthogonality regulariser lambda * mean_{i != j} cos(relu(m_i), relu(m_j)) (seed: --masking-lambda)
_C.METHOD.DC.MASKING_LAMBDA = 0.01
# The first mask: 'ones' or 'normal' (each entry from N(0.9, 0.7))
_C.METHOD.DC.MASKING_INIT = "ones"
# 'yes': K disjoint binary slices of the embedding, not learned (the CVPR 2019 version)
_C.METHOD.DC.FIXED_MASK = "no"
# 'top_bot' (K = 1, doubling every MOD_EPOCH epochs by splitting each cluster in two, up to NB_CLUSTERS) or
# 'flat' (NB_CLUSTERS clusters from the first epoch, re-clustered every MOD_EPOCH epochs: the CVPR 2019 version)
_C.METHOD.DC.HIERARCHY = "top_bot"
# k-means: Lloyd iterations, and tries with new seeds until every cluster holds 2 classes with 2 images
_C.METHOD.DC.KMEANS_NITER = 100
_C.METHOD.DC.KMEANS_TRIES = 30
# The k-means seed of a re-clustering: -1 = from SEED and the epoch; else this value plus the epoch
_C.METHOD.DC.KMEANS_SEED = -1

# ---------------------------------------------------------------------------------------------------------
# LOG: what a run writes besides log.txt and metrics.jsonl
# ---------------------------------------------------------------------------------------------------------
_C.LOG = CN()
# TensorBoard event files in OUTPUT_DIR/tensorboard (losses, learning rates, metrics): 'yes' or 'no'
_C.LOG.TENSORBOARD = "yes"
# Curve pictures curves_loss.png, curves_lr.png, curves_metrics.png in OUTPUT_DIR, redrawn at every
# evaluation: 'yes' or 'no'
_C.LOG.PLOTS = "yes"

# ---------------------------------------------------------------------------------------------------------
# LOSS: hyper-parameters of each loss, under the loss's name (defaults are the seeds' / papers')
# ---------------------------------------------------------------------------------------------------------
_C.LOSS = CN()
# Keyword arguments of a 'pml:<LossClass>' metric loss: a dict literal such as "{'margin': 0.1}";
# a value 'pml:<Class>' (or ['pml:<Class>', {...}]) builds a PML distance/reducer/regularizer
_C.LOSS.PML_KWARGS = ""
# Miner in front of a 'pml:' metric loss: '' (none) or 'pml:<MinerClass>' of pytorch-metric-learning
_C.LOSS.MINER = ""
# Keyword arguments of LOSS.MINER, a dict literal such as "{'epsilon': 0.1}"
_C.LOSS.MINER_KWARGS = ""

_C.LOSS.CONTRASTIVE = CN()
# Negatives count while their cosine similarity exceeds MARGIN (MMSI on Cars: 0.8)
_C.LOSS.CONTRASTIVE.MARGIN = 0.5
# 'sum': per-anchor sums of pair terms, averaged over anchors (MMSI); 'mean': mean over pairs of each kind
_C.LOSS.CONTRASTIVE.REDUCTION = "sum"

_C.LOSS.MS = CN()
# Scale of the positive term (beta in the MS paper's notation, alpha in pytorch-metric-learning's)
_C.LOSS.MS.POS_SCALE = 2.0
# Scale of the negative term (MMSI 40; the MS paper 50)
_C.LOSS.MS.NEG_SCALE = 40.0
# Similarity threshold lambda
_C.LOSS.MS.THRESH = 0.5
# Mining tolerance epsilon of the MS miner
_C.LOSS.MS.MINING_MARGIN = 0.1
# Factor of both log terms: 2 as MMSI's code, 1 as the MS paper
_C.LOSS.MS.COEF = 2.0

_C.LOSS.SOFT_CONTRASTIVE = CN()
# Scale of the positive term (DDTAS's beta)
_C.LOSS.SOFT_CONTRASTIVE.POS_SCALE = 2.0
# Scale of the negative term (DDTAS's alpha)
_C.LOSS.SOFT_CONTRASTIVE.NEG_SCALE = 40.0
# Similarity threshold lambda
_C.LOSS.SOFT_CONTRASTIVE.THRESH = 0.7
# Pair mining: 'at_asms' (adaptive tolerance, DDTAS), 'asms' (fixed asymmetric tolerance), 'none'
_C.LOSS.SOFT_CONTRASTIVE.MINING = "at_asms"
# Mining tolerance m (positives m, negatives m/10 before adaptation)
_C.LOSS.SOFT_CONTRASTIVE.MARGIN = 0.1

_C.LOSS.CIRCLE = CN()
# Relaxation margin m of circle loss (pairwise and classification forms)
_C.LOSS.CIRCLE.MARGIN = 0.25
# Scale gamma of the pairwise circle loss (the classification form uses SOLVER.CS)
_C.LOSS.CIRCLE.SCALE = 256.0

_C.LOSS.MARGIN_LOSS = CN()
# Margin alpha of the margin loss (Wu et al. 2017)
_C.LOSS.MARGIN_LOSS.ALPHA = 0.2
# Initial (or fixed) boundary beta
_C.LOSS.MARGIN_LOSS.BETA = 1.2
# 'yes': one learnable beta per class (own parameter group, lr BETA_LR, no weight decay); 'no': fixed
_C.LOSS.MARGIN_LOSS.LEARN_BETA = "no"
# Learning rate of the learnable betas
_C.LOSS.MARGIN_LOSS.BETA_LR = 0.1
# Weight nu of the |beta| regulariser
_C.LOSS.MARGIN_LOSS.NU = 0.0
# Distance-weighted sampling: distances are clamped below at CUTOFF ...
_C.LOSS.MARGIN_LOSS.CUTOFF = 0.5
# ... and negatives farther than NONZERO_LOSS_CUTOFF are not drawn
_C.LOSS.MARGIN_LOSS.NONZERO_LOSS_CUTOFF = 1.4

_C.LOSS.PROXY_NCA = CN()
# Scale of the squared distances to the normalised proxies (9 = normalise then multiply by 3)
_C.LOSS.PROXY_NCA.SCALE = 9.0

_C.LOSS.PROXY_ANCHOR = CN()
# Scale alpha of Proxy Anchor
_C.LOSS.PROXY_ANCHOR.ALPHA = 32.0
# Margin delta of Proxy Anchor
_C.LOSS.PROXY_ANCHOR.DELTA = 0.1

_C.LOSS.AMLOSS = CN()
# Scale of the positive term (seed 004's --alphap; its CUB/Cars recipes use 48)
_C.LOSS.AMLOSS.ALPHA_POS = 32.0
# Scale of the negative term (--alphan)
_C.LOSS.AMLOSS.ALPHA_NEG = 32.0
# Fixed margin of the negative term
_C.LOSS.AMLOSS.DELTA_NEG = 0.1
# Initial value of the learnable per-class margins
_C.LOSS.AMLOSS.MARGIN_INIT = 0.1
# Margin delta of the proxy-proxy term
_C.LOSS.AMLOSS.PP_DELTA = 0.1
# Weight lambda of the proxy-proxy term
_C.LOSS.AMLOSS.PP_WEIGHT = 1.0
# The margins have their own AdamW: learning rate ...
_C.LOSS.AMLOSS.MARGIN_LR = 1e-4
# ... weight decay ...
_C.LOSS.AMLOSS.MARGIN_WEIGHT_DECAY = 1e-4
# ... and a StepLR every MARGIN_DECAY_STEP epochs ...
_C.LOSS.AMLOSS.MARGIN_DECAY_STEP = 10
# ... by MARGIN_DECAY_GAMMA
_C.LOSS.AMLOSS.MARGIN_DECAY_GAMMA = 0.5

_C.LOSS.ARCFACE = CN()
# Additive angular margin m (radians) of the ArcFace head
_C.LOSS.ARCFACE.MARGIN = 0.5

_C.LOSS.COSFACE = CN()
# Additive cosine margin m of the CosFace classification head
_C.LOSS.COSFACE.MARGIN = 0.35

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
# 'yes': the test embedding is the mean of those of the image and its horizontal mirror (before FEAT_NORM); 'no'
_C.TEST.FLIP = "no"
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
# Datasets evaluated, in this order (empty = DATASETS.NAMES): any registered names, also ones that do not train
# (cross-domain: only their query/gallery is loaded); the first one evaluated picks the best model (best.pt)
_C.TEST.DATASETS = []
# test.py: k > 0 writes one rank picture per query (the query, its top k-1 valid gallery items and, last, its
# lowest-ranked true match) to OUTPUT_DIR/visrank/<dataset>/; 0 = none
_C.TEST.VISRANK = 0
# test.py: the top k gallery items of every query (path, distance, match) in OUTPUT_DIR/ranked_list_<dataset>.*;
# 0 = none
_C.TEST.RANKED_LIST = 10
# Format of the ranked lists: 'csv' (one row per query and rank) or 'json'
_C.TEST.RANKED_LIST_FORMAT = "csv"
# Strength K of the uncertainty in the test distance (the seed's K, usually 0): D = 2 asin(d/2) - K u_g on
# normalised features (needs TEST.FEAT_NORM yes and a model with an uncertainty head)
_C.TEST.NORM_K = 0.0

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
