"""Custom datasets from a config file or the command line, without writing code.

Each entry of ``DATASETS.CUSTOM`` is one dataset, written as comma-separated ``key=value`` pairs::

    DATASETS:
      CUSTOM:
        - "name=my_sem_train,type=sem_seg,image_root=data/images/train,sem_seg_root=data/masks/train,classes=data/classes.yaml"
        - "name=my_ins_train,type=coco_instance,json_file=data/train.json,image_root=data/train"
        - "name=my_pan_train,type=coco_panoptic,json_file=data/panoptic_train.json,image_root=data/train,panoptic_root=data/panoptic_train"
      TRAIN: ("my_sem_train",)

or on the command line: ``DATASETS.CUSTOM "['name=...,type=...', ...]"``.

Types and their keys (paths are relative to the working directory):

* ``sem_seg``: ``image_root`` (images: .jpg/.jpeg/.png/.bmp/.tif), ``sem_seg_root`` (one
  single-channel PNG of class ids per image, same file stem; 255 = ignore), ``classes`` (a YAML or
  JSON file: a list of names, or of ``{name, color}``, optionally under a ``classes:`` key),
  optional ``ignore_label`` (default 255).
* ``coco_instance``: ``json_file`` (COCO instance json), ``image_root``.
* ``coco_panoptic``: ``json_file`` (COCO panoptic json), ``image_root``, ``panoptic_root`` (the
  panoptic PNGs), optional ``sem_seg_root`` (semantic PNGs named like the panoptic PNGs, with the
  contiguous class ids: enables semantic evaluation) and ``instances_json`` (COCO instance json of
  the same images: enables instance evaluation).
* types added by other packages with :func:`register_dataset_type` (``import mask2former_video``
  adds ``ytvis``: ``json_file`` (YouTube-VIS json), ``image_root`` (the folder of the video frames)).
* every type: ``validate`` (default true): check every file when registering (see
  ``mask2former/data/validation.py``); a dataset that fails is not registered. A dataset that
  passed is not checked again until one of its files changes (list, sizes or modification
  times): the result is kept in ``$MASK2FORMER_CACHE`` (default ``~/.cache/mask2former``). In a
  multi-process run only the main process checks; the others wait for its result.

``register_custom_datasets(cfg)`` registers them all (``train_net.py`` calls it); nothing is
registered if any of them fails validation.
"""
import colorsys
import copy
import hashlib
import json
import logging
import os
import time

import yaml

import detectron2.utils.comm as comm
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .validation import (
    DatasetValidationError,
    ValidationReport,
    validate_dataset_dicts,
)

__all__ = [
    "DATASET_TYPES",
    "register_dataset_type",
    "parse_dataset_spec",
    "register_custom_dataset",
    "register_custom_datasets",
    "validate_custom_dataset",
    "load_sem_seg_folder",
    "load_coco_instance_json",
    "load_coco_panoptic_json",
    "panoptic_metadata_from_categories",
    "read_class_file",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_COMMON_KEYS = {"name": True, "type": True, "validate": False}
# key -> required
DATASET_TYPES = {
    "sem_seg": {"image_root": True, "sem_seg_root": True, "classes": True, "ignore_label": False},
    "coco_instance": {"json_file": True, "image_root": True},
    "coco_panoptic": {
        "json_file": True,
        "image_root": True,
        "panoptic_root": True,
        "sem_seg_root": False,
        "instances_json": False,
    },
}

_PATH_KEYS = {"image_root", "sem_seg_root", "classes", "json_file", "panoptic_root", "instances_json"}

# name -> spec of the custom datasets registered by this module (to allow identical re-registration).
_registered_specs = {}
# Names among them registered without the file checks their spec asks for (register_custom_datasets(validate=False)).
_unvalidated = set()


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------
def parse_dataset_spec(text):
    """Parse ``"name=...,type=...,key=value,..."`` into a dict, checking the keys for its type."""
    spec = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"Custom dataset spec {text!r}: {item!r} is not of the form key=value.")
        key, value = (part.strip() for part in item.split("=", 1))
        if key in spec:
            raise ValueError(f"Custom dataset spec {text!r}: key {key!r} is given twice.")
        spec[key] = value
    kind = spec.get("type")
    if kind not in DATASET_TYPES:
        raise ValueError(
            f"Custom dataset spec {text!r}: 'type' must be one of {sorted(DATASET_TYPES)}, got {kind!r}."
        )
    allowed = {**_COMMON_KEYS, **DATASET_TYPES[kind]}
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ValueError(
            f"Custom dataset spec {text!r}: unknown key(s) {unknown} for type {kind!r}; "
            f"allowed keys: {sorted(allowed)}."
        )
    missing = [key for key, required in allowed.items() if required and not spec.get(key)]
    if missing:
        raise ValueError(f"Custom dataset spec {text!r}: missing required key(s) {missing}.")
    validate = spec.get("validate", "true").lower()
    if validate not in ("true", "false"):
        raise ValueError(f"Custom dataset spec {text!r}: validate must be true or false, got {validate!r}.")
    spec["validate"] = validate == "true"
    for key in _PATH_KEYS & set(spec):
        spec[key] = os.path.expanduser(spec[key])
    if "ignore_label" in spec:
        try:
            spec["ignore_label"] = int(spec["ignore_label"])
        except ValueError:
            raise ValueError(f"Custom dataset spec {text!r}: ignore_label must be an integer.") from None
    return spec


def _palette(num_colors):
    """Distinct colours for classes that do not name one (evenly spaced hues)."""
    return [
        [int(round(255 * c)) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)]
        for i in range(num_colors)
    ]


def read_class_file(path):
    """Read class names and colours from YAML/JSON: ``[name, ...]`` or ``[{name, color}, ...]``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Class file {path} does not exist.")
    with open(path) as f:
        try:
            content = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"Class file {path} cannot be parsed: {e}") from e
    if isinstance(content, dict) and "classes" in content:
        content = content["classes"]
    if not isinstance(content, list) or not content:
        raise ValueError(f"Class file {path} must hold a non-empty list of classes (names or {{name, color}}).")
    names, colors = [], []
    fallback = _palette(len(content))
    for i, entry in enumerate(content):
        if isinstance(entry, str):
            names.append(entry)
            colors.append(fallback[i])
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            names.append(entry["name"])
            color = entry.get("color", fallback[i])
            if not (isinstance(color, (list, tuple)) and len(color) == 3 and all(0 <= int(c) <= 255 for c in color)):
                raise ValueError(f"Class file {path}: class {entry['name']!r} has an invalid color {color!r}.")
            colors.append([int(c) for c in color])
        else:
            raise ValueError(f"Class file {path}: entry {i} ({entry!r}) is neither a name nor {{name, color}}.")
    return names, colors


# ---------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------
def _files_by_stem(folder, extensions):
    found = {}
    for file_name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(file_name)
        if ext.lower() in extensions:
            found.setdefault(stem, os.path.join(folder, file_name))
    return found


def load_sem_seg_folder(image_root, sem_seg_root, report=None):
    """
    Records pairing every image in `image_root` with the PNG of the same stem in `sem_seg_root`.

    Images without a mask are problems (added to `report`, or raised at once without one); masks
    without an image are only logged.
    """
    own_report = report is None
    report = ValidationReport(image_root) if own_report else report
    for folder in (image_root, sem_seg_root):
        if not os.path.isdir(folder):
            report.add(folder, "folder does not exist")
    if len(report) and own_report:
        report.raise_if_failed()
    if len(report):
        return []
    images = _files_by_stem(image_root, IMAGE_EXTENSIONS)
    masks = _files_by_stem(sem_seg_root, (".png",))
    if not images:
        report.add(image_root, f"no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    records = []
    for stem, image_path in images.items():
        if stem not in masks:
            report.add(image_path, f"image has no mask {os.path.join(sem_seg_root, stem + '.png')}")
            continue
        records.append({"file_name": image_path, "sem_seg_file_name": masks[stem]})
    orphans = sorted(set(masks) - set(images))
    if orphans:
        logger.warning(
            "%d mask(s) in %s have no image and are not used, e.g. %s", len(orphans), sem_seg_root, orphans[:5]
        )
    if own_report:
        report.raise_if_failed()
    return records


def read_annotation_json(json_file, report):
    """The parsed content of an annotation file, or None after adding to `report` why it could not
    be read (missing, or not JSON)."""
    if not os.path.isfile(json_file):
        report.add(json_file, "annotation file does not exist")
        return None
    try:
        with open(json_file) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.add(json_file, f"annotation file is not valid JSON ({e})")
        return None


def _read_json(json_file, report):
    content = read_annotation_json(json_file, report)
    if content is None:
        return None
    missing = [key for key in ("images", "annotations", "categories") if key not in content]
    if missing:
        report.add(json_file, f"annotation file lacks the key(s) {missing}")
        return None
    return content


def _check_coco_references(content, json_file, report):
    """Annotations must point to existing images and categories; image ids must be unique."""
    image_ids = set()
    for image in content["images"]:
        if image.get("id") in image_ids:
            report.add(json_file, f"image id {image.get('id')} is used twice")
        image_ids.add(image.get("id"))
    category_ids = {c.get("id") for c in content["categories"]}
    for annotation in content["annotations"]:
        label = f"annotation {annotation.get('id', annotation.get('file_name', '?'))}"
        if annotation.get("image_id") not in image_ids:
            report.add(json_file, f"{label} refers to image id {annotation.get('image_id')}, which does not exist")
        for segment in annotation.get("segments_info", [annotation]):
            if segment.get("category_id") not in category_ids:
                report.add(
                    json_file,
                    f"{label} uses category id {segment.get('category_id')}, which does not exist",
                )


def panoptic_metadata_from_categories(categories):
    """MaskFormer's panoptic metadata for COCO-panoptic categories (things and stuff, any order)."""
    categories = sorted(categories, key=lambda c: c["id"])
    fallback = _palette(len(categories))
    colors = [list(c.get("color", fallback[i])) for i, c in enumerate(categories)]
    thing_ids, stuff_ids = {}, {}
    for i, category in enumerate(categories):
        if category.get("isthing", 0):
            thing_ids[category["id"]] = i
        # As upstream: every class is also a semantic ("stuff") class, so the semantic
        # evaluator and the semantic PNGs use one id space for all classes.
        stuff_ids[category["id"]] = i
    return {
        "thing_classes": [c["name"] for c in categories if c.get("isthing", 0)],
        "thing_colors": [colors[i] for i, c in enumerate(categories) if c.get("isthing", 0)],
        "stuff_classes": [c["name"] for c in categories],
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": thing_ids,
        "stuff_dataset_id_to_contiguous_id": stuff_ids,
        "ignore_label": 255,
        "label_divisor": 1000,
    }


def load_coco_panoptic_json(json_file, image_root, panoptic_root, metadata, sem_seg_root=None, report=None):
    """
    Records of a COCO-panoptic dataset in the form MaskFormer's panoptic mappers read.

    Unlike Detectron2's loader, an image's file is taken from the json's ``images`` list (not
    guessed as ``<stem>.jpg``), and category ids are mapped to contiguous ids with `metadata`.
    """
    own_report = report is None
    report = ValidationReport(json_file) if own_report else report
    content = _read_json(json_file, report)
    records = []
    if content is not None:
        _check_coco_references(content, json_file, report)
        images = {image["id"]: image for image in content["images"] if "id" in image}
        annotated = set()
        thing_ids = metadata["thing_dataset_id_to_contiguous_id"]
        stuff_ids = metadata["stuff_dataset_id_to_contiguous_id"]
        for annotation in content["annotations"]:
            image = images.get(annotation.get("image_id"))
            if image is None or any(s.get("category_id") not in stuff_ids for s in annotation["segments_info"]):
                continue  # already reported
            annotated.add(image["id"])
            segments_info = []
            for segment in annotation["segments_info"]:
                segment = dict(segment)
                dataset_id = segment["category_id"]
                segment["isthing"] = dataset_id in thing_ids
                segment["category_id"] = thing_ids[dataset_id] if segment["isthing"] else stuff_ids[dataset_id]
                segment.setdefault("iscrowd", 0)
                segments_info.append(segment)
            record = {
                "file_name": os.path.join(image_root, image["file_name"]),
                "image_id": image["id"],
                "pan_seg_file_name": os.path.join(panoptic_root, annotation["file_name"]),
                "segments_info": segments_info,
            }
            if "height" in image and "width" in image:
                record["height"], record["width"] = image["height"], image["width"]
            if sem_seg_root is not None:
                stem = os.path.splitext(annotation["file_name"])[0]
                record["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
            records.append(record)
        for image_id, image in images.items():
            if image_id not in annotated:
                report.add(os.path.join(image_root, image.get("file_name", "?")), "image has no panoptic annotation")
    if own_report:
        report.raise_if_failed()
    return records


def load_coco_instance_json(json_file, image_root, dataset_name=None):
    """Records of a COCO instance dataset (Detectron2's loader; RLE and polygons both work)."""
    return load_coco_json(json_file, image_root, dataset_name)


def _instance_metadata(categories):
    categories = sorted(categories, key=lambda c: c["id"])
    colors = [list(c["color"]) if "color" in c else color for c, color in zip(categories, _palette(len(categories)))]
    return {
        "thing_classes": [c["name"] for c in categories],
        "thing_colors": colors,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(categories)},
    }


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------
def _prepare_sem_seg(spec, report):
    names, colors = read_class_file(spec["classes"])
    ignore_label = spec.get("ignore_label", 255)
    records = load_sem_seg_folder(spec["image_root"], spec["sem_seg_root"], report)
    metadata = {
        "stuff_classes": names,
        "stuff_colors": colors,
        "ignore_label": ignore_label,
        "image_root": spec["image_root"],
        "sem_seg_root": spec["sem_seg_root"],
        "evaluator_type": "sem_seg",
    }
    return records, metadata


def _prepare_coco_instance(spec, report):
    content = _read_json(spec["json_file"], report)
    if content is None:
        return [], {}
    _check_coco_references(content, spec["json_file"], report)
    if len(report):
        return [], {}
    metadata = _instance_metadata(content["categories"])
    metadata.update(json_file=spec["json_file"], image_root=spec["image_root"], evaluator_type="coco")
    records = []
    for image in content["images"]:
        record = {"file_name": os.path.join(spec["image_root"], image["file_name"]), "image_id": image["id"]}
        if "height" in image and "width" in image:
            record["height"], record["width"] = image["height"], image["width"]
        records.append(record)
    sizes = {image["id"]: (image.get("height"), image.get("width")) for image in content["images"]}
    for annotation in content["annotations"]:
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, dict) and "size" in segmentation:
            if tuple(segmentation["size"]) != sizes[annotation["image_id"]]:
                report.add(
                    spec["json_file"],
                    f"annotation {annotation.get('id')}: its RLE mask is {segmentation['size'][0]}x"
                    f"{segmentation['size'][1]} (HxW) but image {annotation['image_id']} is "
                    f"{sizes[annotation['image_id']][0]}x{sizes[annotation['image_id']][1]}",
                )
    return records, metadata


def _prepare_coco_panoptic(spec, report):
    content = _read_json(spec["json_file"], report)
    if content is None:
        return [], {}
    metadata = panoptic_metadata_from_categories(content["categories"])
    records = load_coco_panoptic_json(
        spec["json_file"],
        spec["image_root"],
        spec["panoptic_root"],
        metadata,
        sem_seg_root=spec.get("sem_seg_root"),
        report=report,
    )
    metadata.update(
        panoptic_root=spec["panoptic_root"],
        image_root=spec["image_root"],
        panoptic_json=spec["json_file"],
        evaluator_type="coco_panoptic_seg",
    )
    if spec.get("sem_seg_root"):
        metadata["sem_seg_root"] = spec["sem_seg_root"]
    if spec.get("instances_json"):
        if not os.path.isfile(spec["instances_json"]):
            report.add(spec["instances_json"], "instance annotation file does not exist")
        metadata["json_file"] = spec["instances_json"]
    return records, metadata


_PREPARE = {
    "sem_seg": _prepare_sem_seg,
    "coco_instance": _prepare_coco_instance,
    "coco_panoptic": _prepare_coco_panoptic,
}
# type -> function(records, metadata, dataset_name, report) checking the records' files.
_VALIDATE = {}


def register_dataset_type(kind, keys, prepare, validate):
    """
    Add a ``DATASETS.CUSTOM`` type. Packages built on this one (e.g. ``mask2former_video``, which
    this package must not import) add their dataset formats this way when they are imported.

    Args:
        kind (str): the ``type=`` value.
        keys (dict[str, bool]): the type's keys -> whether required (besides name, type, validate).
            Keys named like the built-in path keys (``json_file``, ``image_root``, ...) get ``~``
            expanded.
        prepare: ``prepare(spec, report) -> (records, metadata dict)``: reads the annotations,
            adding every problem to the ValidationReport `report`.
        validate: ``validate(records, metadata, dataset_name, report)``: checks the files the
            records refer to (run unless the spec says ``validate=false``).
    """
    if kind in DATASET_TYPES and _PREPARE.get(kind) is not prepare:
        raise ValueError(f"Custom dataset type {kind!r} is already defined.")
    DATASET_TYPES[kind] = dict(keys)
    _PREPARE[kind] = prepare
    _VALIDATE[kind] = validate


class _Metadata:
    """Attribute access to a metadata dict, as `validate_dataset_dicts` expects."""

    def __init__(self, values):
        self.__dict__.update(values)


# Part of every validation-cache key: bump it when the checks change, so that datasets that passed
# the old checks are checked again.
_VALIDATION_VERSION = 1


def _validation_cache_file(spec, records):
    """
    The file marking that this exact dataset passed validation: named by a hash of the spec, the
    validation version, and the path, size and modification time of every file the dataset reads
    (stat only, no decoding: 0.14 s for 2,000 images and masks). None if a file is missing (the
    validation then reports it).
    """
    paths = {spec[key] for key in ("json_file", "classes", "instances_json") if spec.get(key)}
    for record in records:
        paths.update(record[key] for key in ("file_name", "sem_seg_file_name", "pan_seg_file_name") if key in record)
        paths.update(record.get("file_names", ()))  # the frames of a video dataset
    digest = hashlib.sha256(json.dumps([_VALIDATION_VERSION, sorted(spec.items())], default=str).encode())
    for path in sorted(paths):
        try:
            stat = os.stat(path)
        except OSError:
            return None
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    cache_dir = os.environ.get("MASK2FORMER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "mask2former"
    )
    return os.path.join(cache_dir, "dataset_validation", f"{spec['name']}-{digest.hexdigest()[:32]}.json")


def _validate_unless_unchanged(spec, records, metadata, report):
    """Check every file of the dataset, unless this very version of it passed before."""
    cache_file = _validation_cache_file(spec, records)
    if cache_file is not None and os.path.isfile(cache_file):
        logger.info(
            "Dataset %r (%d images) is unchanged since it passed validation; not checking its files "
            "again (%s).", spec["name"], len(records), cache_file,
        )
        return
    logger.info("Validating dataset %r: checking its %d images and their annotations ...", spec["name"], len(records))
    start = time.perf_counter()
    validate = _VALIDATE.get(spec["type"])
    if validate is None:
        validate_dataset_dicts(records, _Metadata(metadata), spec["name"], report=report, progress=True)
    else:
        validate(records, _Metadata(metadata), spec["name"], report=report)
    seconds = time.perf_counter() - start
    if len(report):
        return
    logger.info("Dataset %r passed validation in %.1f s.", spec["name"], seconds)
    if cache_file is not None:
        try:
            os.makedirs(os.path.dirname(cache_file), exist_ok=True)
            tmp = f"{cache_file}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump({"dataset": spec["name"], "images": len(records), "seconds": round(seconds, 1)}, f)
            os.replace(tmp, cache_file)
        except OSError as e:  # a read-only home: validate again next time
            logger.warning("Could not record the validation of %r in %s: %s", spec["name"], cache_file, e)


def _prepare(spec):
    """Read and (if asked) validate one dataset; returns (loader, metadata) or raises."""
    report = ValidationReport(spec["name"])
    records, metadata = _PREPARE[spec["type"]](spec, report)
    if spec["validate"] and not len(report):
        _validate_unless_unchanged(spec, records, metadata, report)
    report.raise_if_failed()
    if spec["type"] == "coco_instance":
        # Detectron2's loader reads the segmentation formats; the records above were for checking.
        def loader(spec=spec):
            return load_coco_instance_json(spec["json_file"], spec["image_root"], spec["name"])

    else:

        def loader(records=records):
            return copy.deepcopy(records)

    return loader, metadata


def validate_custom_dataset(spec):
    """
    Check a dataset spec (dict or string) and all its files without registering it; returns the
    number of images. Raises DatasetValidationError listing every problem.
    """
    if isinstance(spec, str):
        spec = parse_dataset_spec(spec)
    loader, _ = _prepare(dict(spec, validate=True))
    return len(loader())


def register_custom_dataset(spec):
    """
    Validate and register one dataset from a spec (a dict from :func:`parse_dataset_spec` or its
    string). The name is registered only if every check passes.
    """
    if isinstance(spec, str):
        spec = parse_dataset_spec(spec)
    name = spec["name"]
    if name in DatasetCatalog.list():
        if _registered_specs.get(name) == spec:
            return name
        raise ValueError(
            f"Cannot register custom dataset {name!r}: a different dataset of that name is already "
            "registered. Pick another name."
        )
    loader, metadata = _prepare(spec)
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)
    _registered_specs[name] = spec
    logger.info("Registered custom %s dataset %r", spec["type"], name)
    return name


def _prepare_all(specs, validate):
    """{name: (spec, loader, metadata)} of the specs that need (re-)registering; raises one
    DatasetValidationError listing the problems of every failing dataset."""
    prepared, failures = {}, []
    for spec in specs:
        name = spec["name"]
        if name in DatasetCatalog.list():
            if _registered_specs.get(name) != spec:
                failures.append(
                    f"Custom dataset {name!r}: a different dataset of that name is already registered."
                )
                continue
            if not (validate and spec["validate"] and name in _unvalidated):
                continue
        try:
            prepared[name] = (spec, *_prepare(spec if validate else dict(spec, validate=False)))
        except (DatasetValidationError, ValueError, OSError) as e:
            failures.append(str(e))
    if failures:
        raise DatasetValidationError("\n".join(failures))
    return prepared


def register_custom_datasets(cfg, validate=True):
    """
    Register every dataset of ``cfg.DATASETS.CUSTOM``; returns their names.

    All of them are parsed and validated before any is registered, so a failure leaves none of
    them registered; the error lists the problems of every failing dataset. ``validate=False``
    only reads the annotations (for the metadata a model needs to predict), whatever the specs
    say; a later call that validates checks those datasets then.
    """
    specs = [parse_dataset_spec(text) for text in cfg.DATASETS.CUSTOM]
    names = [spec["name"] for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"DATASETS.CUSTOM names {duplicates} more than once.")
    prepared = None
    if validate and comm.get_world_size() > 1:
        # Validation decodes every file: the main process does it (and records it in the cache)
        # while the others wait, then they read the cache. Its error, if any, stops every process.
        error = None
        if comm.is_main_process():
            try:
                prepared = _prepare_all(specs, validate)
            except Exception as e:  # noqa: BLE001  (re-raised below, after telling the others)
                error = e
        failure = comm.all_gather(None if error is None else f"{type(error).__name__}: {error}")[0]
        if error is not None:
            raise error
        if failure is not None:
            raise DatasetValidationError(f"The main process could not register DATASETS.CUSTOM: {failure}")
    if prepared is None:
        prepared = _prepare_all(specs, validate)
    for name, (spec, loader, metadata) in prepared.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(**metadata)
        _registered_specs[name] = spec
        if validate or not spec["validate"]:
            _unvalidated.discard(name)
        else:
            _unvalidated.add(name)
        logger.info("Registered custom %s dataset %r", spec["type"], name)
    return names
