"""The fused ResNet inference (frozen batch norms folded into oneDNN convolutions with ReLU and
residual post-ops) against detectron2's own ResNet forward."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from torch import nn

from mask2former.modeling.backbone.fused_resnet import resnet_inference_features

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def _resnet(depth=50, stem_channels=64, out_features=("res2", "res3", "res4", "res5"), seed=0):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = stem_channels
    cfg.MODEL.RESNETS.OUT_FEATURES = list(out_features)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    torch.manual_seed(seed)
    resnet = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    _randomize_norms(resnet, seed)
    return resnet.eval()


def _randomize_norms(module, seed):
    """Frozen batch norms far from the identity, so that a wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, FrozenBatchNorm2d):
                n = norm.num_features
                # Gains around 0.6 keep the features of 16 residual blocks within a few units.
                norm.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.25)
                norm.bias.copy_(torch.randn(n, generator=generator) * 0.2)
                norm.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                norm.running_var.copy_(torch.rand(n, generator=generator) + 0.25)


def _assert_features_close(actual, expected, rtol=1e-5):
    assert list(actual) == list(expected)
    for name, ref in expected.items():
        assert actual[name].shape == ref.shape, name
        error = (actual[name] - ref).abs().max() / ref.abs().max()
        assert error <= rtol, f"{name}: max relative difference {error:.2e}"


def _image(shape=(1, 3, 96, 128), channels_last=True, seed=1):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_equals_detectron2_forward(channels_last):
    resnet = _resnet()
    x = _image(channels_last=channels_last)
    with torch.no_grad():
        expected = resnet(x)
        actual = resnet_inference_features(resnet, x)
    _assert_features_close(actual, expected)
    # Nonzero features throughout: the comparison is not between two vectors of ReLU zeros.
    assert all((f > 0).float().mean() > 0.05 for f in expected.values())


def test_identity_shortcut_does_not_overwrite_returned_features():
    # With a 256-channel stem, res2's first block has an identity shortcut whose input (the stem)
    # is also returned: the in-place residual sum must not land in it.
    resnet = _resnet(stem_channels=256, out_features=("stem", "res2", "res3"))
    assert resnet.res2[0].shortcut is None
    x = _image(shape=(2, 3, 64, 64))
    with torch.no_grad():
        expected = resnet(x)
        actual = resnet_inference_features(resnet, x)
    _assert_features_close(actual, expected)


def test_folded_weights_follow_parameter_changes_and_input_shapes():
    resnet = _resnet(seed=2)
    x = _image()
    with torch.inference_mode():
        resnet_inference_features(resnet, x)
        # In place (as load_state_dict copies), and a replaced buffer.
        resnet.res3[1].conv2.norm.running_var.mul_(3.0)
        resnet.res4[0].shortcut.weight.mul_(-0.5)
        resnet.stem.conv1.norm.running_mean = torch.randn(64)
        for shape in [(1, 3, 96, 128), (2, 3, 64, 160), (1, 3, 96, 128)]:
            x = _image(shape=shape, seed=len(shape))
            _assert_features_close(resnet_inference_features(resnet, x), resnet(x))
        resnet.load_state_dict(_resnet(seed=3).state_dict())
        _assert_features_close(resnet_inference_features(resnet, x), resnet(x))


def test_training_autograd_and_state_dict_untouched():
    resnet = _resnet()
    keys = {k: v.clone() for k, v in resnet.state_dict().items()}
    x = _image()
    with torch.no_grad():
        resnet_inference_features(resnet, x)
    state = resnet.state_dict()
    assert list(state) == list(keys)
    assert all(torch.equal(state[k], v) for k, v in keys.items())
    assert all(isinstance(b, torch.Tensor) for b in resnet.buffers())

    # Eval with autograd: detectron2's forward itself (bit-identical, differentiable).
    actual = resnet_inference_features(resnet, x)
    expected = resnet(x)
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    assert actual["res5"].requires_grad

    resnet.train()
    with torch.no_grad():
        actual = resnet_inference_features(resnet, x)
        expected = resnet(x)
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


def test_tracing_records_the_plain_forward():
    resnet = _resnet(depth=50)

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.resnet = resnet

        def forward(self, x):
            return resnet_inference_features(self.resnet, x)["res5"]

    x = _image(channels_last=False)
    with torch.no_grad():
        # The trace's own check compares elementwise at a tolerance meant for identical graphs.
        traced = torch.jit.trace(Features(), x, check_trace=False)
        graph = str(traced.inlined_graph)
        assert "_convolution_pointwise" not in graph
        assert "aten::_convolution" in graph or "aten::conv2d" in graph
        assert "aten::batch_norm" in graph
        torch.testing.assert_close(traced(x), resnet(x)["res5"], rtol=0, atol=0)


def test_cpu_autocast_runs_detectron2_forward_in_lower_precision():
    """Under CPU autocast the caller asked for bfloat16 convolutions: the fused float32 path steps
    aside and detectron2's forward runs under autocast, as for any other model."""
    resnet = _resnet(depth=50)
    x = _image()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        actual = resnet_inference_features(resnet, x)
        expected = resnet(x)
    assert all(actual[k].dtype == torch.bfloat16 for k in expected)
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
