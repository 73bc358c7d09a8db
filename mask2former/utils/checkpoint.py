"""Loading Mask2Former checkpoints with a complete report and no silent partial loads.

:class:`Mask2FormerCheckpointer` is a drop-in :class:`detectron2.checkpoint.DetectionCheckpointer`
(same file formats: ``.pth``, model-zoo ``.pkl`` with numpy arrays, converted backbone ``.pkl``
files matched by name heuristics, Caffe2 ``.pkl``) that checks the checkpoint against the model
**before** copying anything and then:

* **full-model checkpoint** (it holds weights outside ``backbone.``, e.g. a published
  Mask2Former model): every model entry must be present with the model's shape and the checkpoint
  must have nothing else; otherwise :class:`CheckpointMismatchError` lists the missing, unexpected
  and mis-shaped keys and the model is left untouched;
* **backbone-only checkpoint** (an ImageNet initialisation such as ``R-50.pkl`` or a converted Swin
  ``.pkl``): the head is expected to be missing and a classifier may be left over; both are
  reported (warning) and allowed. A mis-shaped entry is still an error.

Checkpoints and ``last_checkpoint`` are written atomically (:func:`atomic_write`): a kill while
saving leaves the previous files intact. A checkpoint that cannot be read raises
:class:`UnreadableCheckpointError` naming it and the other checkpoints of its folder.

``.pkl`` files are read with :func:`~mask2former.utils.safe_pickle.safe_load_pickle`, which admits
only plain data (Detectron2 uses ``pickle.load``, which runs any code a file names).

Fine-tuning on another set of classes: given the model's class and query counts (``counts``, see
:meth:`Mask2FormerCheckpointer.from_config`), entries whose shapes differ only along dimensions sized
by those counts (the classifier ``class_embed``, the criterion's ``empty_weight``, ``query_feat`` /
``query_embed``), consistently with one other class (query) count in the checkpoint, keep the
model's fresh initialisation, announced in one log line. This applies only when every mis-shaped
entry is explained so; any other mismatch is still refused with the full report.
Other entries are re-initialised deliberately with ``reinit`` (``MODEL.WEIGHTS_REINIT``: names or
name prefixes), and mismatches tolerated with ``allowed_mismatch`` (regular expressions,
``re.search``). The report of the last load is ``checkpointer.last_report``.
"""
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.layers import FrozenBatchNorm2d

from .safe_pickle import safe_load_pickle

logger = logging.getLogger(__name__)

# Non-persistent in this model, persistent in some old checkpoints: safe to ignore.
_IGNORED_UNEXPECTED = ("pixel_mean", "pixel_std")


class CheckpointMismatchError(RuntimeError):
    """The checkpoint does not fit the model; nothing was loaded."""


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint file cannot be read (truncated, corrupt); nothing was loaded."""


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Writes ``path`` so that it holds either its previous content or the complete new one,
    whenever the process is killed: into a temporary file of the same folder, flushed to disk,
    then renamed over ``path`` (an atomic replacement)."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    # The rename itself reaches the disk with the folder's entry.
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _other_checkpoints_advice(folder: str, exclude: str) -> str:
    """Names the other checkpoints of ``folder`` (newest first) and how to resume from one."""
    others = [
        f
        for f in os.listdir(folder)
        if f.endswith(".pth") and not f.startswith(".") and f != os.path.basename(exclude)
    ] if os.path.isdir(folder) else []
    if not others:
        return f" No other checkpoint (*.pth) is in {folder}: start again without --resume."
    others.sort(key=lambda f: os.path.getmtime(os.path.join(folder, f)), reverse=True)
    last = os.path.join(folder, "last_checkpoint")
    return (
        f" Other checkpoints in {folder}, newest first: {', '.join(others)}. To resume from "
        f"{others[0]}, write its name into {last} (echo {others[0]} > {last}) and run again with --resume."
    )


def _group(keys: Sequence[str], limit: int = 60) -> str:
    lines = [f"    {k}" for k in sorted(keys)[:limit]]
    if len(keys) > limit:
        lines.append(f"    ... and {len(keys) - limit} more")
    return "\n".join(lines)


@dataclass
class CheckpointReport:
    """What a checkpoint provides for a model.

    Attributes:
        source: file name (or a description).
        kind: "full" (weights outside the backbone) or "backbone" (backbone initialisation only).
        loaded: model keys that receive a value.
        missing: model keys the checkpoint does not provide.
        unexpected: checkpoint keys that match no model key.
        mis_shaped: (key, shape in checkpoint, shape in model).
        defaulted: FrozenBatchNorm running statistics absent from an old-format backbone checkpoint;
            set to mean 0 / variance 1, as detectron2 does.
        allowed: keys among the above tolerated by ``allowed_mismatch``.
        reinitialised: model keys left at their initialisation on purpose (``reinit``) or
            because their shape follows a class/query count that differs from the checkpoint's.
        count_change: what explains the automatic re-initialisations, e.g. "classes 80 -> 3".
    """

    source: str
    kind: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mis_shaped: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    defaulted: List[str] = field(default_factory=list)
    allowed: List[str] = field(default_factory=list)
    reinitialised: List[str] = field(default_factory=list)
    count_change: str = ""

    @property
    def problems(self) -> List[str]:
        """Mismatches that make loading fail under the rules of the module docstring."""
        allowed = set(self.allowed)
        problems = [f"mis-shaped: {k}" for k, _, _ in self.mis_shaped if k not in allowed]
        if self.kind == "full":
            problems += [f"missing: {k}" for k in self.missing if k not in allowed]
            problems += [f"unexpected: {k}" for k in self.unexpected if k not in allowed]
        if not self.loaded:
            problems.append("no checkpoint entry matches a model entry: wrong file or wrong config?")
        return problems

    def __str__(self):
        kind = "full model" if self.kind == "full" else "backbone only"
        parts = [f"Checkpoint {self.source} ({kind}): {len(self.loaded)} model entries loaded"]
        if self.missing:
            parts.append(f"  {len(self.missing)} model entries missing from the checkpoint:\n" + _group(self.missing))
        if self.unexpected:
            parts.append(f"  {len(self.unexpected)} checkpoint entries not in the model:\n" + _group(self.unexpected))
        if self.mis_shaped:
            rows = [f"{k}: checkpoint {tuple(c)} vs model {tuple(m)}" for k, c, m in self.mis_shaped]
            parts.append(f"  {len(rows)} entries with different shapes:\n" + _group(rows))
        if self.defaulted:
            parts.append(
                f"  {len(self.defaulted)} FrozenBatchNorm running statistics absent (old format), "
                "set to mean 0 / var 1:\n" + _group(self.defaulted, limit=8)
            )
        if self.allowed:
            parts.append(f"  allowed by allowed_mismatch: {len(self.allowed)} entries")
        if self.reinitialised:
            parts.append("  " + self.reinit_summary())
        return "\n".join(parts)

    def reinit_summary(self) -> str:
        why = f"checkpoint vs config: {self.count_change}" if self.count_change else "MODEL.WEIGHTS_REINIT"
        return f"re-initialised {len(self.reinitialised)} entries ({why}): {', '.join(sorted(self.reinitialised))}"


def _to_tensors(state_dict: Dict) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in state_dict.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        elif not isinstance(v, torch.Tensor):
            raise CheckpointMismatchError(f"checkpoint entry '{k}' is a {type(v).__name__}, not an array or tensor")
        out[k] = v
    return out


def _strip_prefix(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def _frozen_bn_running_stats(model: torch.nn.Module) -> set:
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, FrozenBatchNorm2d):
            prefix = name + "." if name else ""
            keys.update({prefix + "running_mean", prefix + "running_var"})
    return keys


def _named_by(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p.rstrip(".") + ".") for p in prefixes)


# How much larger than its count a dimension sized by it is: classifiers and the criterion's class
# weights have one more row, for "no object".
_EXTRA_ROWS = {"classes": 1, "queries": 0}


def _count_change(mis_shaped, counts: Dict[str, int]) -> Optional[Dict[str, Tuple[int, int]]]:
    """{kind: (checkpoint count, model count)} when every mis-shaped entry differs from the model
    only along dimensions sized by one of ``counts`` (plus its ``_EXTRA_ROWS``), all implying the
    same checkpoint count per kind; None otherwise. Backbone entries never depend on these counts."""
    implied: Dict[str, int] = {}
    for key, ckpt_shape, model_shape in mis_shaped:
        if key.startswith("backbone.") or len(ckpt_shape) != len(model_shape):
            return None
        for ckpt_size, model_size in zip(ckpt_shape, model_shape):
            if ckpt_size == model_size:
                continue
            for kind, count in counts.items():
                extra = _EXTRA_ROWS.get(kind, 0)
                old = ckpt_size - extra
                if model_size == count + extra and old > 0 and implied.setdefault(kind, old) == old:
                    break
            else:
                return None
    return {kind: (implied[kind], count) for kind, count in counts.items() if kind in implied} or None


def inspect_checkpoint(
    model: torch.nn.Module,
    state_dict: Dict[str, torch.Tensor],
    source: str = "<state_dict>",
    heuristic: bool = False,
    allowed_mismatch: Iterable[str] = (),
    counts: Optional[Dict[str, int]] = None,
    reinit: Sequence[str] = (),
) -> CheckpointReport:
    """Compares a checkpoint state dict with ``model.state_dict()`` without loading anything.

    Args:
        heuristic: the state dict came out of detectron2's ``align_and_update_state_dicts``:
            entries it could not match keep their original names and are matched here by name
            suffix only to tell mis-shaped entries from unexpected ones. Such checkpoints count as
            backbone-only unless they provide weights outside ``backbone.``.
        counts: the model's sizes that fine-tuning may change, e.g. {"classes": 3, "queries": 100}.
        reinit: model entries (names or prefixes) that keep their initialisation.
    """
    model_state = model.state_dict()
    unused = [p for p in reinit if not any(_named_by(k, [p]) for k in model_state)]
    if unused:
        raise CheckpointMismatchError(f"MODEL.WEIGHTS_REINIT names no entry of the model: {unused}")
    report = CheckpointReport(source=source, kind="backbone")
    report.reinitialised = [k for k in model_state if _named_by(k, reinit)]
    skipped = []
    for key, value in state_dict.items():
        if _named_by(key, reinit):
            skipped.append(key)
            continue
        if key in model_state:
            if tuple(value.shape) == tuple(model_state[key].shape):
                report.loaded.append(key)
            else:
                report.mis_shaped.append((key, tuple(value.shape), tuple(model_state[key].shape)))
            continue
        if key in _IGNORED_UNEXPECTED:
            continue
        suffix_matches = [m for m in model_state if m.endswith("." + key)] if heuristic else []
        if len(suffix_matches) == 1:
            target = suffix_matches[0]
            report.mis_shaped.append((target, tuple(value.shape), tuple(model_state[target].shape)))
        else:
            report.unexpected.append(key)
    # What the checkpoint holds decides its kind, whatever is re-initialised.
    in_checkpoint = set(report.loaded) | {k for k, _, _ in report.mis_shaped} | set(skipped)
    if not heuristic:
        in_checkpoint |= set(report.unexpected)
    if any(not k.startswith("backbone.") for k in in_checkpoint):
        report.kind = "full"
    change = _count_change(report.mis_shaped, counts or {})
    if change:
        report.reinitialised += [k for k, _, _ in report.mis_shaped]
        report.mis_shaped = []
        report.count_change = ", ".join(f"{kind} {old} -> {new}" for kind, (old, new) in change.items())
    provided = set(report.loaded) | {k for k, _, _ in report.mis_shaped} | set(report.reinitialised)
    report.missing = [k for k in model_state if k not in provided]
    if report.kind == "backbone":
        frozen = _frozen_bn_running_stats(model)
        report.defaulted = [k for k in report.missing if k in frozen]
        report.missing = [k for k in report.missing if k not in frozen]
    patterns = [re.compile(p) for p in allowed_mismatch]
    mismatched = report.missing + report.unexpected + [k for k, _, _ in report.mis_shaped]
    report.allowed = [k for k in mismatched if any(p.search(k) for p in patterns)]
    return report


def _read_pkl_checkpoint(checkpointer, filename):
    """A .pkl checkpoint in the layout DetectionCheckpointer expects, read as plain data only
    (Detectron2 reads it with plain pickle.load, which runs whatever the file names)."""
    with checkpointer.path_manager.open(filename, "rb") as f:
        data = safe_load_pickle(f, source=filename)
    if not isinstance(data, dict):
        raise CheckpointMismatchError(f"{filename}: expected a dict, got a {type(data).__name__}")
    if "model" in data and "__author__" in data:  # Detectron2 model-zoo layout
        checkpointer.logger.info("Reading a file from '{}'".format(data["__author__"]))
        return data
    # Caffe2 / Detectron1 layout: detection models keep their arrays under "blobs",
    # ImageNet classifiers at the top level; the solver's momentum buffers are not weights.
    blobs = data.get("blobs", data)
    blobs = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}


def _detectron2_load_file_reading_pkl_as_data(load_file):
    def _load_file(self, filename):
        if filename.endswith(".pkl"):
            return _read_pkl_checkpoint(self, filename)
        return load_file(self, filename)

    _load_file.reads_pkl_as_data = True
    return _load_file


# Detectron2's own checkpointer (DefaultPredictor, the demo, scripts written for upstream) reads
# .pkl files the same safe way once mask2former is imported.
if not getattr(DetectionCheckpointer._load_file, "reads_pkl_as_data", False):
    DetectionCheckpointer._load_file = _detectron2_load_file_reading_pkl_as_data(DetectionCheckpointer._load_file)


class Mask2FormerCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that refuses mismatching full-model checkpoints (see module docstring).

    Args:
        allowed_mismatch: regular expressions of keys that may be missing, unexpected or
            mis-shaped (they keep the model's initialisation).
        counts: the model's class / query counts, enabling the fine-tuning rule of the module
            docstring (None: every mis-shaped entry is an error, e.g. for evaluation).
        reinit: names or prefixes of model entries that keep their initialisation.
        Other arguments as :class:`DetectionCheckpointer`.
    """

    def __init__(
        self,
        model,
        save_dir="",
        *,
        allowed_mismatch: Iterable[str] = (),
        counts: Optional[Dict[str, int]] = None,
        reinit: Iterable[str] = (),
        save_to_disk=None,
        **checkpointables,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.allowed_mismatch = tuple(allowed_mismatch)
        self.counts = dict(counts or {})
        self.reinit = tuple(reinit)
        self.last_report: Optional[CheckpointReport] = None
        self._source = "<checkpoint>"

    @classmethod
    def from_config(cls, cfg, model, save_dir="", **kwargs):
        """A checkpointer for training ``model`` built from ``cfg``: fine-tuning with other class
        or query counts re-initialises what depends on them, and MODEL.WEIGHTS_REINIT is applied.
        Image and video models read the same keys."""
        counts = {
            "classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "queries": cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES,
        }
        return cls(model, save_dir, counts=counts, reinit=cfg.MODEL.WEIGHTS_REINIT, **kwargs)

    def _load_file(self, filename):
        self._source = filename
        if filename.endswith(".pkl"):
            return _read_pkl_checkpoint(self, filename)
        # .pth goes through torch.load, whose default (weights_only) admits no code either.
        try:
            return super()._load_file(filename)
        except (FileNotFoundError, IsADirectoryError):
            raise
        except Exception as e:
            raise UnreadableCheckpointError(
                f"Checkpoint {filename} cannot be read ({type(e).__name__}: {str(e).splitlines()[0]}); it may "
                "be truncated or corrupt (e.g. a run killed while saving it)."
                + _other_checkpoints_advice(os.path.dirname(os.path.abspath(filename)), filename)
            ) from e

    def _load_model(self, checkpoint):
        state_dict = _strip_prefix(_to_tensors(checkpoint.pop("model")), "module.")
        model_state = self.model.state_dict()
        heuristic = bool(checkpoint.get("matching_heuristics", False))
        if heuristic:
            # Renames what it can match to model names; keeps the rest (and mis-shaped entries)
            # under their original names.
            state_dict = align_and_update_state_dicts(
                model_state, state_dict, c2_conversion=checkpoint.get("__author__", None) == "Caffe2"
            )
        report = inspect_checkpoint(
            self.model, state_dict, self._source, heuristic, self.allowed_mismatch, self.counts, self.reinit
        )
        self.last_report = report

        if report.problems:
            kinds = Counter(p.split(":")[0] for p in report.problems)
            summary = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
            raise CheckpointMismatchError(
                f"{report}\nNothing was loaded: the checkpoint does not fit the model ({summary}). "
                "To re-initialise specific entries deliberately (fine-tuning), list them in the "
                "config's MODEL.WEIGHTS_REINIT (or pass allowed_mismatch=[regex, ...] in Python); "
                "entries sized by MODEL.SEM_SEG_HEAD.NUM_CLASSES / MASK_FORMER.NUM_OBJECT_QUERIES "
                "are re-initialised when training with a different count."
            )
        if report.missing or report.unexpected or report.mis_shaped or report.defaulted:
            logger.warning(str(report))
        elif report.reinitialised:
            logger.info(f"Checkpoint {report.source}: {len(report.loaded)} entries loaded, {report.reinit_summary()}")
        else:
            logger.info(str(report))

        loadable = {k: state_dict[k] for k in report.loaded}
        incompatible = self.model.load_state_dict(loadable, strict=False)
        unreported = set(incompatible.missing_keys) - set(report.missing) - set(report.defaulted)
        unreported -= set(report.reinitialised)
        unreported -= {k for k, _, _ in report.mis_shaped}
        if unreported:
            raise CheckpointMismatchError(f"internal: entries left unloaded without report: {sorted(unreported)}")
        return None

    def load(self, path, *args, **kwargs):
        self.last_report = None
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path, *, resume=True):
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not os.path.isfile(last):
                tag = os.path.join(self.save_dir, "last_checkpoint")
                raise UnreadableCheckpointError(
                    f"{tag} names '{os.path.relpath(last, self.save_dir)}', which is not a checkpoint file."
                    + _other_checkpoints_advice(self.save_dir, last)
                )
        return super().resume_or_load(path, resume=resume)

    # Both written atomically: a kill while saving leaves the previous checkpoint and a
    # last_checkpoint naming a complete file.
    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"), lambda f: f.write(last_filename_basename.encode()))


def load_checkpoint(
    model, path: str, allowed_mismatch: Iterable[str] = (), counts: Optional[Dict[str, int]] = None, reinit=()
) -> CheckpointReport:
    """Loads the model weights of ``path`` into ``model``; returns the report (raises on mismatch)."""
    checkpointer = Mask2FormerCheckpointer(model, allowed_mismatch=allowed_mismatch, counts=counts, reinit=reinit)
    checkpointer.load(path)
    if checkpointer.last_report is None:
        raise CheckpointMismatchError(f"{path}: no model weights were read")
    return checkpointer.last_report
