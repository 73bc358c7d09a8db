"""
The built-in YouTube-VIS splits, registered at import (reading nothing from disk):
``ytvis_{2019,2021}_{train,val,test}`` in ``$DETECTRON2_DATASETS`` (default ``datasets``)::

    ytvis_2019/{train,valid,test}/JPEGImages/   ytvis_2019/{train,valid,test}.json
    ytvis_2021/{train,valid,test}/JPEGImages/   ytvis_2021/{train,valid,test}.json
"""
import os

from .ytvis import register_ytvis_instances, ytvis_categories, ytvis_metadata_from_categories

__all__ = ["register_all_ytvis"]

# Our split names -> the folder/json names of the released archives.
_SPLITS = {"train": "train", "val": "valid", "test": "test"}


def register_all_ytvis(root):
    names = []
    for year in (2019, 2021):
        metadata = ytvis_metadata_from_categories(ytvis_categories(year))
        for split, folder in _SPLITS.items():
            name = f"ytvis_{year}_{split}"
            register_ytvis_instances(
                name,
                metadata,
                os.path.join(root, f"ytvis_{year}", f"{folder}.json"),
                os.path.join(root, f"ytvis_{year}", folder, "JPEGImages"),
            )
            names.append(name)
    return names


register_all_ytvis(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")))
