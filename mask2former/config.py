# -*- coding: utf-8 -*-
"""Config keys of Mask2Former, with the defaults of the official implementation.

The key names and default values are an interface (YAML configs and model-zoo checkpoints depend on
them), so they follow upstream exactly. Keys that belong to optional components (other backbones,
custom datasets, ...) are added by functions of their own in this file; `add_maskformer2_config`
calls them all at its end so callers only need one function.
"""
import torch
from detectron2.config import CfgNode as CN


def add_maskformer2_config(cfg):
    """
    Add the Mask2Former keys to a Detectron2 config (in place).

    Like upstream, `detectron2.projects.deeplab.add_deeplab_config` is expected to have been called
    first when the deeplab ResNet options (stem type, res5 multi-grid, poly LR) are needed.
    """
    # ---- data ----
    # Dataset mapper used by the training data loader.
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"
    cfg.INPUT.COLOR_AUG_SSD = False
    # Random crops are retried until no single semantic category covers more than this fraction.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # Padding of images and semantic GT done in the dataset mapper (-1: none).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Large-scale jitter augmentation (instance/panoptic mappers).
    cfg.INPUT.IMAGE_SIZE = 1024
    cfg.INPUT.MIN_SCALE = 0.1
    cfg.INPUT.MAX_SCALE = 2.0

    # ---- solver ----
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1

    # ---- model: losses ----
    cfg.MODEL.MASK_FORMER = CN()
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 1.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 20.0
    # Point-sampled mask losses (PointRend-style importance sampling).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75

    # ---- model: transformer ----
    # NHEADS and DROPOUT are also read by the deformable pixel decoder's encoder.
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.1
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 6
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "res5"
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Some backbones (e.g. ResNet) report size_divisibility 0; this overrides it.
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32

    # ---- model: inference ----
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # ---- model: pixel decoder ----
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 0
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "BasePixelDecoder"
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # Part of the upstream schema but never read upstream: the deformable encoder takes its head
    # count from MODEL.MASK_FORMER.NHEADS and always samples 4 points. Kept for config compatibility.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8

    # ---- fine-tuning (not an upstream key) ----
    # State-dict names, or prefixes ending at a "." boundary, that keep the model's fresh
    # initialisation when MODEL.WEIGHTS is loaded (even where the checkpoint fits). Entries whose
    # shape follows NUM_CLASSES / NUM_OBJECT_QUERIES are re-initialised without being listed.
    cfg.MODEL.WEIGHTS_REINIT = []

    add_swin_config(cfg)

    # Keys of optional components. Engineers owning them add one call per function here
    # (each function is defined in this file, below).
    add_custom_datasets_config(cfg)
    add_dinat_config(cfg)
    add_semask_config(cfg)
    add_vit_adapter_config(cfg)

    _default_to_cpu_without_cuda(cfg)


def _default_to_cpu_without_cuda(cfg):
    """
    Detectron2's default MODEL.DEVICE is "cuda", and DefaultPredictor / build_model fail on a
    machine without CUDA. Every Mask2Former config passes through add_maskformer2_config (the
    upstream Python snippet calls it before DefaultPredictor), so the default is chosen here; a
    config file or override that names a device still wins (train_net and the demo also turn an
    explicit "cuda" into "cpu" when there is no GPU, see mask2former.engine.use_cpu_without_cuda).
    """
    if cfg.MODEL.DEVICE == "cuda" and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"


def add_swin_config(cfg):
    """Keys of the Swin Transformer backbone (`D2SwinTransformer`), upstream defaults (Swin-T)."""
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.PRETRAIN_IMG_SIZE = 224
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.EMBED_DIM = 96
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.QK_SCALE = None
    cfg.MODEL.SWIN.DROP_RATE = 0.0
    cfg.MODEL.SWIN.ATTN_DROP_RATE = 0.0
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.APE = False
    cfg.MODEL.SWIN.PATCH_NORM = True
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SWIN.USE_CHECKPOINT = False


def add_custom_datasets_config(cfg):
    """
    DATASETS.CUSTOM: datasets to register from files, without code (mask2former/data/custom.py).

    Each entry is one dataset as comma-separated key=value pairs, e.g.
    "name=my_train,type=sem_seg,image_root=data/img,sem_seg_root=data/ann,classes=data/classes.yaml";
    types: sem_seg, coco_instance, coco_panoptic. train_net.py registers them before training.
    """
    cfg.DATASETS.CUSTOM = []


def add_dinat_config(cfg):
    """Keys of the DiNAT backbone (`D2DiNAT`), as the DiNAT Mask2Former configs use them.

    Defaults are those of the upstream DiNAT Mask2Former training script; the model configs set
    the variant (DiNAT-L: kernel 11 and per-block DILATIONS).
    """
    cfg.MODEL.DINAT = CN()
    cfg.MODEL.DINAT.EMBED_DIM = 192
    cfg.MODEL.DINAT.DEPTHS = [3, 4, 18, 5]
    cfg.MODEL.DINAT.NUM_HEADS = [6, 12, 24, 48]
    cfg.MODEL.DINAT.KERNEL_SIZE = 7
    # One list per stage, one dilation per block; None means dilation 1 everywhere.
    cfg.MODEL.DINAT.DILATIONS = None
    cfg.MODEL.DINAT.MLP_RATIO = 2.0
    cfg.MODEL.DINAT.QKV_BIAS = True
    cfg.MODEL.DINAT.QK_SCALE = None
    cfg.MODEL.DINAT.DROP_RATE = 0.0
    cfg.MODEL.DINAT.ATTN_DROP_RATE = 0.0
    cfg.MODEL.DINAT.DROP_PATH_RATE = 0.3
    cfg.MODEL.DINAT.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # Not upstream keys. LAYER_SCALE: initial value of per-channel residual scales (DiNAT-B's
    # ImageNet models use 1e-5); None = none, as in DiNAT-L.
    cfg.MODEL.DINAT.LAYER_SCALE = None
    # Neighborhood attention kernel: "auto" (by size; natten with rpb on CUDA when installed),
    # "gather", "tiled" or "natten" (see modeling/backbone/neighborhood_attention.py).
    cfg.MODEL.DINAT.ATTENTION_IMPLEMENTATION = "auto"


def add_semask_config(cfg):
    """Keys of SeMask-Swin (`D2SeMaskSwinTransformer`, `SeMaskMaskFormer`, `BranchMaskFormerHead`)."""
    # Weight of the semantic-prior loss (cross-entropy of the backbone's semantic maps).
    cfg.MODEL.MASK_FORMER.CATE_WEIGHT = 0.4
    # Window of the semantic attention, and number of semantic attention layers per stage.
    cfg.MODEL.SWIN.SEM_WINDOW_SIZE = 7
    cfg.MODEL.SWIN.NUM_SEM_BLOCKS = 1
    # Not an upstream key. The last stage's semantic attention: "window" or "global" (over the
    # whole map). "auto" follows the original code, which makes it global exactly when
    # SEM_SEG_HEAD.NUM_CLASSES == 150; the published ADE20K SeMask models depend on that.
    cfg.MODEL.SWIN.SEM_LAST_STAGE_ATTENTION = "auto"


def add_vit_adapter_config(cfg):
    """
    Keys of the ViT-Adapter backbone (`D2ViTAdapter`) and of the parts of its recipe that Mask2Former's
    own configs do not use: layer-wise learning-rate decay, an exponential moving average of the
    weights, and the pre-crop resize of DETR's augmentation (mapper ``coco_panoptic_detr``).

    MODEL.VIT_ADAPTER mirrors the arguments of the original ``BEiTAdapter``; the defaults are those of
    its published BEiTv2-L COCO panoptic model.
    """
    cfg.MODEL.VIT_ADAPTER = CN()
    cfg.MODEL.VIT_ADAPTER.PATCH_SIZE = 16
    cfg.MODEL.VIT_ADAPTER.EMBED_DIM = 1024
    cfg.MODEL.VIT_ADAPTER.DEPTH = 24
    cfg.MODEL.VIT_ADAPTER.NUM_HEADS = 16
    cfg.MODEL.VIT_ADAPTER.MLP_RATIO = 4.0
    cfg.MODEL.VIT_ADAPTER.QKV_BIAS = True
    cfg.MODEL.VIT_ADAPTER.DROP_RATE = 0.0
    cfg.MODEL.VIT_ADAPTER.ATTN_DROP_RATE = 0.0
    cfg.MODEL.VIT_ADAPTER.DROP_PATH_RATE = 0.4
    # Layer scale: initial gamma_1 / gamma_2 of the blocks and gamma of the injectors.
    cfg.MODEL.VIT_ADAPTER.INIT_VALUES = 1e-6
    # One value, or one per block.
    cfg.MODEL.VIT_ADAPTER.WINDOW_ATTN = [True] * 24
    cfg.MODEL.VIT_ADAPTER.WINDOW_SIZE = [14, 14, 14, 14, 14, 56] * 4
    cfg.MODEL.VIT_ADAPTER.CONV_INPLANE = 64
    cfg.MODEL.VIT_ADAPTER.N_POINTS = 4
    cfg.MODEL.VIT_ADAPTER.DEFORM_NUM_HEADS = 16
    cfg.MODEL.VIT_ADAPTER.CFFN_RATIO = 0.25
    cfg.MODEL.VIT_ADAPTER.DEFORM_RATIO = 0.5
    cfg.MODEL.VIT_ADAPTER.WITH_CFFN = True
    # [first, last] ViT block of each interaction stage.
    cfg.MODEL.VIT_ADAPTER.INTERACTION_INDEXES = [[0, 5], [6, 11], [12, 17], [18, 23]]
    cfg.MODEL.VIT_ADAPTER.ADD_VIT_FEATURE = True
    # "new": the final ViT tokens are added to all four outputs (the original's default); "old": each
    # interaction stage's tokens to the output of its scale.
    cfg.MODEL.VIT_ADAPTER.VERSION = "new"
    # Norm of the spatial prior module and of the four outputs (SyncBatchNorm in the original).
    cfg.MODEL.VIT_ADAPTER.NORM = "SyncBN"
    cfg.MODEL.VIT_ADAPTER.USE_CHECKPOINT = False
    cfg.MODEL.VIT_ADAPTER.OUT_FEATURES = ["res2", "res3", "res4", "res5"]

    # Layer-wise lr decay (BEiT's): the lr of ViT block i is multiplied by RATE ** (NUM_LAYERS - i),
    # the patch embedding's by RATE ** (NUM_LAYERS + 1), everything else's by 1; 1-D parameters and
    # biases get no weight decay. Replaces BACKBONE_MULTIPLIER and the per-type weight decays.
    cfg.SOLVER.LAYER_DECAY = CN()
    cfg.SOLVER.LAYER_DECAY.ENABLED = False
    cfg.SOLVER.LAYER_DECAY.RATE = 0.9
    cfg.SOLVER.LAYER_DECAY.NUM_LAYERS = 24

    # Exponential moving average of the model state (mask2former/engine/ema.py), saved in checkpoints
    # as "model_ema". Momentum at iteration t: (1 - MOMENTUM) * exp(-(t + 1) / WARMUP_ITERS) + MOMENTUM.
    cfg.MODEL_EMA = CN()
    cfg.MODEL_EMA.ENABLED = False
    cfg.MODEL_EMA.MOMENTUM = 1e-4
    cfg.MODEL_EMA.WARMUP_ITERS = 2000

    # DETR augmentation: short sides to choose from before its random crop.
    cfg.INPUT.CROP.PRE_CROP_MIN_SIZES = [400, 500, 600]
