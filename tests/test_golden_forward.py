"""Golden parity of the architecture: the tiny Swin + MSDeformAttn + masked-attention model loaded
with the official weights must reproduce every recorded intermediate of the official forward pass
(tests/data/golden/tiny_swin_panoptic, see its README)."""
import os

import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.modeling import build_backbone, build_sem_seg_head
from detectron2.projects.deeplab import add_deeplab_config

from mask2former import add_maskformer2_config

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "tiny_swin_panoptic")
# Suggested by the golden README for an independent fp32 re-implementation.
ATOL, RTOL = 1e-5, 1e-4


def _load(name):
    return torch.load(os.path.join(GOLDEN, name), weights_only=True)


def _golden_cfg():
    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(os.path.join(GOLDEN, "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


class _Recorder:
    """Forward hooks that keep what the official golden script recorded."""

    def __init__(self, head):
        self.enabled = True
        self.values = {
            "encoder_srcs": [],
            "encoder_pos": [],
            "encoder_layer_outputs": [],
            "decoder_attn_masks": [],
            "decoder_layer_outputs": [],
        }
        pixel_decoder = head.pixel_decoder
        predictor = head.predictor
        for proj in pixel_decoder.input_proj:
            proj.register_forward_hook(self._append("encoder_srcs"))
        pixel_decoder.pe_layer.register_forward_hook(self._append("encoder_pos"))
        for layer in pixel_decoder.transformer.encoder.layers:
            layer.register_forward_hook(self._append("encoder_layer_outputs"))
        pixel_decoder.transformer.register_forward_hook(self._encoder_output)
        pixel_decoder.layer_1.register_forward_hook(self._set("fpn_out"))
        for layer in predictor.transformer_cross_attention_layers:
            layer.register_forward_pre_hook(self._attn_mask, with_kwargs=True)
        for layer in predictor.transformer_ffn_layers:
            layer.register_forward_hook(self._append("decoder_layer_outputs"))

    def _append(self, key):
        def hook(module, args, output):
            if self.enabled:
                self.values[key].append(output.detach().clone())

        return hook

    def _set(self, key):
        def hook(module, args, output):
            if self.enabled:
                self.values[key] = output.detach().clone()

        return hook

    def _encoder_output(self, module, args, output):
        if not self.enabled:
            return
        memory, spatial_shapes, level_start_index = output
        self.values["encoder_memory"] = memory.detach().clone()
        self.values["spatial_shapes"] = spatial_shapes.clone()
        self.values["level_start_index"] = level_start_index.clone()

    def _attn_mask(self, module, args, kwargs):
        if not self.enabled:
            return
        self.values["decoder_attn_masks"].append(kwargs["memory_mask"].clone())


@pytest.fixture(scope="module")
def golden_run():
    cfg = _golden_cfg()
    model = nn.Module()
    model.backbone = build_backbone(cfg)
    model.sem_seg_head = build_sem_seg_head(cfg, model.backbone.output_shape())

    state_dict = _load("state_dict.pth")
    # The criterion's buffer belongs to the meta-architecture, not to backbone + head.
    assert "criterion.empty_weight" in state_dict
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("criterion.")}
    assert list(state_dict) == list(model.state_dict()), "key order differs from the official model"
    model.load_state_dict(state_dict, strict=True)
    model.eval()

    recorder = _Recorder(model.sem_seg_head)
    image = _load("input.pth")["normalized"]
    with torch.no_grad():
        features = model.backbone(image)
        outputs = model.sem_seg_head(features)
        recorder.enabled = False
        mask_features, encoder_features, multi_scale = model.sem_seg_head.pixel_decoder.forward_features(
            features
        )
    recorder.values.update(
        mask_features=mask_features,
        transformer_encoder_features=encoder_features,
        multi_scale_features=multi_scale,
    )
    return features, recorder.values, outputs, _load("outputs.pth")


def _close(actual, expected, name):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


def test_backbone_features(golden_run):
    features, _, _, golden = golden_run
    assert sorted(features) == sorted(golden["backbone"])
    for name, expected in golden["backbone"].items():
        _close(features[name], expected, f"backbone.{name}")


def test_pixel_decoder_encoder(golden_run):
    _, rec, _, golden = golden_run
    pd = golden["pixel_decoder"]
    assert len(rec["encoder_srcs"]) == len(pd["encoder_srcs"]) == 3
    for i, (a, b) in enumerate(zip(rec["encoder_srcs"], pd["encoder_srcs"])):
        _close(a, b, f"encoder_srcs[{i}]")
    assert len(rec["encoder_pos"]) == 3
    for i, (a, b) in enumerate(zip(rec["encoder_pos"], pd["encoder_pos"])):
        _close(a, b, f"encoder_pos[{i}]")
    assert torch.equal(rec["spatial_shapes"], pd["spatial_shapes"])
    assert torch.equal(rec["level_start_index"], pd["level_start_index"])
    assert len(rec["encoder_layer_outputs"]) == len(pd["encoder_layer_outputs"]) == 2
    for i, (a, b) in enumerate(zip(rec["encoder_layer_outputs"], pd["encoder_layer_outputs"])):
        _close(a, b, f"encoder_layer_outputs[{i}]")
    _close(rec["encoder_memory"], pd["encoder_memory"], "encoder_memory")


def test_pixel_decoder_outputs(golden_run):
    _, rec, _, golden = golden_run
    pd = golden["pixel_decoder"]
    _close(rec["transformer_encoder_features"], pd["transformer_encoder_features"], "transformer_encoder_features")
    assert len(rec["multi_scale_features"]) == 3
    for i, (a, b) in enumerate(zip(rec["multi_scale_features"], pd["multi_scale_features"])):
        _close(a, b, f"multi_scale_features[{i}]")
    _close(rec["fpn_out"], pd["fpn_out"], "fpn_out")
    _close(rec["mask_features"], pd["mask_features"], "mask_features")


def test_decoder_attention_masks(golden_run):
    # Exact: the smallest |mask logit| behind these masks is 5e-4, far above fp32 noise (~1e-6).
    _, rec, _, golden = golden_run
    expected = golden["decoder_attn_masks"]
    assert len(rec["decoder_attn_masks"]) == len(expected) == 3
    for i, (a, b) in enumerate(zip(rec["decoder_attn_masks"], expected)):
        assert a.dtype == torch.bool and a.shape == b.shape, f"decoder_attn_masks[{i}]"
        assert torch.equal(a, b), f"decoder_attn_masks[{i}]: {(a != b).sum().item()} entries differ"


def test_decoder_layers_and_predictions(golden_run):
    _, rec, outputs, golden = golden_run
    assert len(rec["decoder_layer_outputs"]) == len(golden["decoder_layer_outputs"]) == 3
    for i, (a, b) in enumerate(zip(rec["decoder_layer_outputs"], golden["decoder_layer_outputs"])):
        _close(a, b, f"decoder_layer_outputs[{i}]")
    _close(outputs["pred_logits"], golden["pred_logits"], "pred_logits")
    _close(outputs["pred_masks"], golden["pred_masks"], "pred_masks")
    # Inference returns the last prediction only (the earlier ones are supervised in training).
    assert outputs["aux_outputs"] == []


def test_train_mode_outputs_equal_eval_and_aux_outputs(golden_run):
    """No dropout, drop-path or BatchNorm is active in this model: training mode changes nothing
    (the intermediate predictions, computed at the attention masks' resolution in inference, give
    the same attention masks here), and it returns the earlier predictions too."""
    features, _, outputs, golden = golden_run
    cfg = _golden_cfg()
    head = build_sem_seg_head(cfg, build_backbone(cfg).output_shape())
    prefix = "sem_seg_head."
    state_dict = {k[len(prefix) :]: v for k, v in _load("state_dict.pth").items() if k.startswith(prefix)}
    head.load_state_dict(state_dict, strict=True)
    head.train()
    with torch.no_grad():
        train_outputs = head(features)
    assert torch.equal(train_outputs["pred_masks"], outputs["pred_masks"])
    assert torch.equal(train_outputs["pred_logits"], outputs["pred_logits"])
    assert len(train_outputs["aux_outputs"]) == len(golden["aux_outputs"]) == 3
    for j, (a, b) in enumerate(zip(train_outputs["aux_outputs"], golden["aux_outputs"])):
        assert sorted(a) == ["pred_logits", "pred_masks"]
        _close(a["pred_logits"], b["pred_logits"], f"aux_outputs[{j}].pred_logits")
        _close(a["pred_masks"], b["pred_masks"], f"aux_outputs[{j}].pred_masks")
