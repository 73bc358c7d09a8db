"""Upstream's SyncBN configs (Cityscapes) on a machine without GPUs: train_net swaps in Detectron2's
NaiveSyncBatchNorm, which keeps the checkpoint layout and really synchronises over GLOO."""
import os

import pytest
import torch
from torch import nn

import train_net  # noqa: I001  isort: skip  (applies the Detectron2 compatibility layer)
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import build_model

from mask2former.utils.launch import launch

from golden_keys import read_key_list, state_dict_entries

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITYSCAPES_SYNCBN = os.path.join(REPO_ROOT, "configs/cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k.yaml")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the replacement only happens without CUDA")
def test_syncbn_config_builds_naive_sync_bn_with_the_official_checkpoint_layout():
    cfg = train_net.load_config(CITYSCAPES_SYNCBN, [])
    assert cfg.MODEL.RESNETS.NORM == "SyncBN"
    train_net.use_cpu_without_cuda(cfg)
    assert cfg.MODEL.RESNETS.NORM == "naiveSyncBN"
    model = build_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, NaiveSyncBatchNorm) for m in norms)
    expected, _ = read_key_list("cityscapes_semantic_maskformer2_R50_bs16_90k")
    assert state_dict_entries(model) == expected


def _half_batch_worker(result_dir):
    from detectron2.utils import comm

    torch.manual_seed(0)
    batch = torch.randn(4, 3, 5, 5)
    norm = NaiveSyncBatchNorm(3)
    norm.train()
    rank = comm.get_rank()
    output = norm(batch[2 * rank : 2 * rank + 2])
    torch.save({"output": output, "running_mean": norm.running_mean}, os.path.join(result_dir, f"{rank}.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only GLOO route")
def test_naive_sync_bn_over_two_cpu_processes_equals_batch_norm_over_the_whole_batch(tmp_path):
    launch(_half_batch_worker, num_gpus_per_machine=2, dist_url="auto", args=(str(tmp_path),))
    torch.manual_seed(0)
    batch = torch.randn(4, 3, 5, 5)
    reference = nn.BatchNorm2d(3)
    reference.train()
    expected = reference(batch)
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(result["output"], expected[2 * rank : 2 * rank + 2], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["running_mean"], reference.running_mean, atol=1e-6, rtol=1e-5)
