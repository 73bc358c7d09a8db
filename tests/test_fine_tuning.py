"""Fine-tuning through train_net.main from a checkpoint trained on another number of classes and
queries: what those counts size is re-initialised (one log line), the rest is loaded."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: I001  isort: skip

import torch

from test_train_net import make_args, tiny_data  # noqa: F401  (fixture)


def test_fine_tune_from_a_checkpoint_with_other_class_and_query_counts(tiny_data, tmp_path):  # noqa: F811
    # The "published" model: 8 + 12 classes and 20 queries instead of the config's 8 and 16.
    source_args = make_args("semantic", tmp_path / "unused", tiny_data,
                            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "20", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "20")
    source_cfg = train_net.setup(source_args)
    torch.manual_seed(123)
    source = train_net.Trainer.build_model(source_cfg).state_dict()
    weights = str(tmp_path / "other_classes.pth")
    torch.save({"model": source}, weights)

    # A zero learning rate keeps the weights as loaded, to compare them with the checkpoint.
    output = tmp_path / "fine_tuned"
    args = make_args("semantic", output, tiny_data, "MODEL.WEIGHTS", weights, "SOLVER.MAX_ITER", "1",
                     "SOLVER.BASE_LR", "0.0", "DATASETS.TEST", "()")
    train_net.main(args)

    lines = [line for line in (output / "log.txt").read_text().splitlines() if "re-initialised" in line]
    assert len(lines) == 1, lines
    assert "checkpoint vs config: classes 20 -> 8, queries 20 -> 16" in lines[0]
    sized = {
        "sem_seg_head.predictor.class_embed.weight", "sem_seg_head.predictor.class_embed.bias",
        "criterion.empty_weight", "sem_seg_head.predictor.query_feat.weight",
        "sem_seg_head.predictor.query_embed.weight",
    }
    for name in sized:
        assert name in lines[0], name
    final = torch.load(output / "model_final.pth", weights_only=True)["model"]
    assert final["sem_seg_head.predictor.class_embed.weight"].shape[0] == 9
    assert final["sem_seg_head.predictor.query_feat.weight"].shape[0] == 16
    for name, value in final.items():
        if name not in sized:
            assert torch.equal(value, source[name]), name
