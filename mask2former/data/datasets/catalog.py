"""
Shared plumbing for the builtin dataset registrations: where datasets live, how a registration
replaces an earlier one, and the clear error raised when a dataset's files are not on disk.
"""
import os
from typing import Callable, Dict, Iterable, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = [
    "DatasetLayoutError",
    "datasets_root",
    "guarded_loader",
    "register_dataset",
    "require_first_record_files",
    "require_paths",
]

README = "datasets/README.md"


class DatasetLayoutError(FileNotFoundError):
    """A registered dataset was loaded but its files are not where the registration expects them."""


def datasets_root() -> str:
    """The folder of the builtin datasets: $DETECTRON2_DATASETS, by default ./datasets."""
    return os.getenv("DETECTRON2_DATASETS", "datasets")


def register_dataset(name: str, loader: Callable[[], list], **metadata) -> None:
    """
    Register `loader` and `metadata` under `name`, replacing an earlier registration of the same
    name, so that the builtin datasets can be re-rooted (e.g. `register_all_*(root)` called again
    with another root) without Detectron2's "already registered" assertion.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def require_paths(
    dataset_name: str, root: str, required: Iterable[Tuple[str, str]], readme_section: str
) -> None:
    """
    Raise DatasetLayoutError listing every missing entry of `required` ((path, what it is) pairs)
    together with the dataset root and the README section describing the expected layout.
    """
    missing = [(path, what) for path, what in required if not os.path.exists(path)]
    if not missing:
        return
    lines = [
        f"Dataset '{dataset_name}' cannot be loaded: "
        f"{len(missing)} expected path(s) are missing."
    ]
    if not os.path.isdir(root):
        lines.append(
            f"The dataset root '{root}' does not exist "
            f"(it is $DETECTRON2_DATASETS, or ./datasets when the variable is unset)."
        )
    lines += [f"  missing: {path}  ({what})" for path, what in missing]
    lines.append(
        f"Expected layout: see the section '{readme_section}' of {README}; "
        f"set DETECTRON2_DATASETS to the folder that contains the dataset."
    )
    raise DatasetLayoutError("\n".join(lines))


def guarded_loader(
    dataset_name: str,
    root: str,
    required: Iterable[Tuple[str, str]],
    readme_section: str,
    loader: Callable[[], list],
) -> Callable[[], list]:
    """Wrap `loader` so that it first checks `required` and fails with a layout error."""
    required = list(required)

    def load() -> list:
        require_paths(dataset_name, root, required, readme_section)
        return loader()

    return load


def require_first_record_files(
    dataset_name: str, records: list, keys: Dict[str, str], readme_section: str
) -> None:
    """
    Check that the files of the first record exist, as a cheap guard against an annotation file
    that does not match the image/annotation folders (checking every record would stat the whole
    dataset).
    """
    if not records:
        raise DatasetLayoutError(
            f"Dataset '{dataset_name}' has no annotated images; see the section "
            f"'{readme_section}' of {README}."
        )
    first = records[0]
    missing = [(first[key], what) for key, what in keys.items() if not os.path.isfile(first[key])]
    if missing:
        raise DatasetLayoutError(
            f"Dataset '{dataset_name}': files referenced by the annotations are missing:\n"
            + "\n".join(f"  missing: {path}  ({what})" for path, what in missing)
            + f"\nExpected layout: see the section '{readme_section}' of {README}."
        )
