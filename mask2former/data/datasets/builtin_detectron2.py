"""
Detectron2's own builtin datasets that Mask2Former's configs use (COCO instance and panoptic,
Cityscapes fine, ADE20K semantic). Detectron2 registers them when `detectron2.data` is imported,
rooted at $DETECTRON2_DATASETS; here their loaders get the same missing-file check as
Mask2Former's registrations, and ADE20K semantic gets its class colours.
"""
from detectron2.data import DatasetCatalog, MetadataCatalog

from .catalog import datasets_root, guarded_loader
from .categories import ade20k_150_categories

__all__ = ["BUILTIN_DETECTRON2_DATASETS", "guard_builtin_detectron2_datasets"]

# name -> (metadata keys holding the paths its loader reads, README section)
BUILTIN_DETECTRON2_DATASETS = {
    **{
        f"coco_2017_{split}": ({"image_root": "image folder", "json_file": "instance json"}, "COCO")
        for split in ["train", "val"]
    },
    **{
        f"coco_2017_{split}_panoptic": (
            {
                "image_root": "image folder",
                "panoptic_root": "panoptic PNG folder",
                "panoptic_json": "panoptic json",
            },
            "COCO",
        )
        for split in ["train", "val"]
    },
    **{
        f"cityscapes_fine_{task}_{split}": (
            {"image_dir": "leftImg8bit folder", "gt_dir": "gtFine folder"},
            "Cityscapes",
        )
        for task in ["instance_seg", "sem_seg"]
        for split in ["train", "val", "test"]
    },
    **{
        f"cityscapes_fine_panoptic_{split}": (
            {
                "image_root": "leftImg8bit folder",
                "gt_dir": "gtFine folder",
                "panoptic_root": "panoptic PNG folder (cityscapesscripts createPanopticImgs)",
                "panoptic_json": "panoptic json (cityscapesscripts createPanopticImgs)",
            },
            "Cityscapes",
        )
        for split in ["train", "val"]
    },
    **{
        f"ade20k_sem_seg_{split}": (
            {
                "image_root": "image folder",
                "sem_seg_root": "label folder made by datasets/prepare_ade20k_sem_seg.py",
            },
            "ADE20K",
        )
        for split in ["train", "val"]
    },
}


def guard_builtin_detectron2_datasets():
    root = datasets_root()
    for name, (path_keys, readme_section) in BUILTIN_DETECTRON2_DATASETS.items():
        if name not in DatasetCatalog.list():
            continue
        loader = DatasetCatalog[name]
        if getattr(loader, "checks_layout", False):
            continue
        metadata = MetadataCatalog.get(name)
        required = [(getattr(metadata, key), what) for key, what in path_keys.items()]
        guarded = guarded_loader(name, root, required, readme_section, loader)
        guarded.checks_layout = True
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, guarded)

    ade20k_colors = [c["color"] for c in ade20k_150_categories()]
    for name in ["ade20k_sem_seg_train", "ade20k_sem_seg_val"]:
        metadata = MetadataCatalog.get(name)
        if not hasattr(metadata, "stuff_colors"):
            metadata.set(stuff_colors=ade20k_colors)
