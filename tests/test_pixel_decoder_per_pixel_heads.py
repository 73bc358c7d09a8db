"""Per-pixel classification baseline heads (used with Detectron2's SemanticSegmentor)."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model, build_sem_seg_head

from mask2former import add_maskformer2_config

SHAPES = {f"res{i}": ShapeSpec(channels=8 * 2**i, stride=2**i) for i in range(2, 6)}
NUM_CLASSES = 5
IGNORE = 255


def _cfg(head, pixel_decoder="BasePixelDecoder", in_feature="res5"):
    cfg = get_cfg()
    add_maskformer2_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.NAME = head
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = pixel_decoder
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = IGNORE
    cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 2.0
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 16
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = in_feature
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = NUM_CLASSES  # one query per class
    cfg.MODEL.MASK_FORMER.NHEADS = 4
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 32
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    return cfg


def _inputs(h=64, w=96, batch=2):
    g = torch.Generator().manual_seed(0)
    features = {k: torch.randn(batch, v.channels, h // v.stride, w // v.stride, generator=g) for k, v in SHAPES.items()}
    targets = torch.randint(0, NUM_CLASSES, (batch, h, w), generator=g)
    targets[:, :8] = IGNORE
    return features, targets


def _naive_loss(logits, targets):
    """Mean negative log-likelihood over the pixels that are not ignored."""
    logp = logits.log_softmax(1)
    valid = targets != IGNORE
    picked = logp.gather(1, targets.clamp(max=NUM_CLASSES - 1)[:, None])[:, 0]
    return -(picked[valid]).mean()


def test_per_pixel_baseline_head():
    torch.manual_seed(0)
    head = build_sem_seg_head(_cfg("PerPixelBaselineHead"), SHAPES)
    features, targets = _inputs()
    head.eval()
    with torch.no_grad():
        logits, losses = head(features)
        mask_features, _, _ = head.pixel_decoder.forward_features(features)
        expected = F.conv2d(mask_features, head.predictor.weight, head.predictor.bias)
        expected = F.interpolate(expected, scale_factor=4, mode="bilinear", align_corners=False)
    assert losses == {}
    assert logits.shape == (2, NUM_CLASSES, 64, 96)
    torch.testing.assert_close(logits, expected)
    head.train()
    _, losses = head(features, targets)
    torch.testing.assert_close(losses["loss_sem_seg"], 2.0 * _naive_loss(logits, targets), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "pixel_decoder,in_feature", [("TransformerEncoderPixelDecoder", "transformer_encoder"), ("BasePixelDecoder", "res5")]
)
def test_per_pixel_baseline_plus_head(pixel_decoder, in_feature):
    torch.manual_seed(0)
    head = build_sem_seg_head(_cfg("PerPixelBaselinePlusHead", pixel_decoder, in_feature), SHAPES)
    features, targets = _inputs(h=32, w=64, batch=1)
    head.eval()
    with torch.no_grad():
        logits, _ = head(features)
    assert logits.shape == (1, NUM_CLASSES, 32, 64)
    head.train()
    _, losses = head(features, targets)
    # Final prediction plus DEC_LAYERS - 1 intermediate ones.
    assert sorted(losses) == ["loss_sem_seg", "loss_sem_seg_0", "loss_sem_seg_1"]
    torch.testing.assert_close(losses["loss_sem_seg"], 2.0 * _naive_loss(logits, targets), atol=1e-5, rtol=1e-5)
    sum(losses.values()).backward()
    assert head.predictor.query_embed.weight.grad is not None


def test_semantic_segmentor_with_swin_and_per_pixel_head():
    """End to end through Detectron2's SemanticSegmentor with the Swin backbone."""
    cfg = _cfg("PerPixelBaselineHead")
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.BACKBONE.NAME = "D2SwinTransformer"
    cfg.MODEL.SWIN.EMBED_DIM = 16
    cfg.MODEL.SWIN.DEPTHS = [1, 1, 2, 1]
    cfg.MODEL.SWIN.NUM_HEADS = [1, 2, 2, 4]
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    with torch.no_grad():
        (result,) = model([{"image": image, "height": 70, "width": 90}])
    assert result["sem_seg"].shape == (NUM_CLASSES, 70, 90)


@pytest.mark.parametrize("head_name", ["PerPixelBaselineHead", "PerPixelBaselinePlusHead", "MaskFormerHead"])
def test_version_1_checkpoint_has_pixel_decoder_weights_moved(head_name, caplog):
    """Before version 2 the pixel decoder's weights were stored directly under 'sem_seg_head.'."""
    cfg = _cfg(head_name)
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "StandardTransformerDecoder"
    torch.manual_seed(0)
    source = torch.nn.Module()
    source.sem_seg_head = build_sem_seg_head(cfg, SHAPES)
    old_state = {
        k.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): v for k, v in source.state_dict().items()
    }
    assert any(k.startswith("sem_seg_head.layer_") for k in old_state)

    torch.manual_seed(1)
    target = torch.nn.Module()
    target.sem_seg_head = build_sem_seg_head(cfg, SHAPES)
    target.load_state_dict(old_state, strict=True)  # no version metadata: a version-1 checkpoint
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert f"Weight format of {head_name} has changed" in caplog.text


@pytest.mark.parametrize("head_name", ["PerPixelBaselinePlusHead", "MaskFormerHead"])
def test_transformer_encoder_feature_needs_a_pixel_decoder_with_an_encoder(head_name):
    cfg = _cfg(head_name, "BasePixelDecoder", "transformer_encoder")
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "StandardTransformerDecoder"
    head = build_sem_seg_head(cfg, SHAPES).eval()
    features, _ = _inputs(batch=1)
    with pytest.raises(ValueError, match="TRANSFORMER_IN_FEATURE='transformer_encoder' needs a pixel decoder"):
        head(features)
