"""Fine-tuning a video model from a COCO instance checkpoint (what upstream's video configs do with
model_final_3c8ec9.pkl etc.): the video decoder has the image decoder's parameter names, so every
entry loads except those whose shape depends on the number of classes (class_embed and the
criterion's class weights), which are re-initialised and reported. The video trainer builds its
checkpointer with Mask2FormerCheckpointer.from_config, as the image trainer does.
"""
import logging
import os

import torch
from detectron2.modeling import build_model

import mask2former_video  # noqa: F401
from mask2former.engine import load_config
from mask2former.utils.checkpoint import Mask2FormerCheckpointer

from test_video_modeling import TINY, tiny_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASS_COUNT_ENTRIES = {
    "sem_seg_head.predictor.class_embed.weight",
    "sem_seg_head.predictor.class_embed.bias",
    "criterion.empty_weight",
}


def test_coco_instance_checkpoint_initialises_video_model(tmp_path, caplog):
    # The image model of the COCO instance config, with the tiny sizes of the video tests and COCO's
    # 80 classes: its state dict has the layout of a COCO instance checkpoint.
    image_cfg = load_config(
        os.path.join(REPO, "configs/coco/instance-segmentation/maskformer2_R50_bs16_50ep.yaml"),
        TINY + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "80"],
    )
    torch.manual_seed(0)
    image_state = build_model(image_cfg).state_dict()
    assert image_state["sem_seg_head.predictor.class_embed.weight"].shape[0] == 81
    path = tmp_path / "coco_instance.pth"
    torch.save({"model": image_state}, path)

    torch.manual_seed(1)
    video_cfg = tiny_cfg()
    video_model = build_model(video_cfg)  # 3 classes
    before = {k: v.clone() for k, v in video_model.state_dict().items()}
    assert set(before) == set(image_state)  # the same entries: only shapes may differ

    with caplog.at_level(logging.INFO):
        Mask2FormerCheckpointer.from_config(video_cfg, video_model).load(str(path))

    after = video_model.state_dict()
    for key, value in after.items():
        if key in CLASS_COUNT_ENTRIES:
            assert torch.equal(value, before[key]), f"{key} should keep its initialisation"
        else:
            assert torch.equal(value, image_state[key]), f"{key} was not loaded from the checkpoint"
    assert "class_embed" in caplog.text
