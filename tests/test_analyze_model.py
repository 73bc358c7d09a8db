"""tools/analyze_model.py: parameter counts against the paper and a direct count, FLOPs on a known case."""
import os
import sys

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

from detectron2.modeling import build_model

from mask2former.engine import load_config, use_cpu_without_cuda

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
import analyze_model  # noqa: E402

TINY = os.path.join(REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml")
SMALL = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"]


def test_counts_of_a_tiny_model():
    results = analyze_model.main(["--tasks", "parameter", "flop", "activation", "--config-file", TINY,
                                  "--input-size", "64", "80", "MODEL.WEIGHTS", "", *SMALL])
    cfg = load_config(TINY, SMALL)
    use_cpu_without_cuda(cfg)
    assert results["parameters"] == sum(p.numel() for p in build_model(cfg).parameters())
    # At least the ResNet stem's multiply-adds (7x7 conv, 3 -> 64 channels, 32x40 outputs), and
    # far less than a dense 1 GFLOP.
    assert 32 * 40 * 64 * 3 * 49 < results["flops"] < 1e9
    assert results["activations"] > 0


def test_baddbmm_counted_like_a_batched_matrix_product():
    class Product(torch.nn.Module):
        def forward(self, bias, a, b):
            return torch.baddbmm(bias, a, b)

    inputs = (torch.zeros(2, 3, 5), torch.zeros(2, 3, 4), torch.zeros(2, 4, 5))
    analysis = FlopCountAnalysis(Product(), inputs).set_op_handle("aten::baddbmm", analyze_model._baddbmm_flops)
    assert analysis.total() == 2 * 3 * 4 * 5


def test_r50_panoptic_has_the_papers_44m_parameters():
    results = analyze_model.main(["--tasks", "parameter", "--config-file",
                                  os.path.join(REPO_ROOT, "configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml"),
                                  "MODEL.WEIGHTS", ""])
    assert results["parameters"] / 1e6 == pytest.approx(43.98, abs=0.005)
