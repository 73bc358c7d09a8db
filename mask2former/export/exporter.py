"""Export of a MaskFormer / Mask2Former image model to ONNX, TorchScript or a torch.export program.

The exported network is normalisation + backbone + pixel decoder + transformer decoder, from an
image tensor (1, C, H, W) -- float32 values 0-255 in INPUT.FORMAT channel order, H and W padded to
the model's size divisibility -- to the last layer's class logits (1, Q, K+1) and mask logits
(1, Q, H/4, W/4). Everything after that (upsampling, resizing to the output size, semantic /
panoptic / instance inference) is :mod:`mask2former.modeling.postprocessing`, which the runner
(:mod:`mask2former.export.runner`) applies exactly as the PyTorch model does.

Deformable attention is recorded in its ``grid_sample`` formulation (ONNX GridSample, opset 16);
see ``mask2former.utils.misc.is_exporting``.
"""
import contextlib
import os
import tempfile
from typing import Callable, Dict, List, Optional, Tuple

import torch
from detectron2.modeling.backbone import ResNet
from torch import nn

from ..modeling.pixel_decoder.ops import backend as msda_backend

__all__ = [
    "FORMATS",
    "ExportError",
    "ExportableMaskFormer",
    "check_exportable",
    "export_model",
    "max_abs_difference",
    "tolerance_for",
]

# format -> file name in the output folder
FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts", "exported_program": "model.pt2"}
ONNX_OPSET = 17  # GridSample exists from opset 16
# Relative tolerance (of the largest output magnitude) between the exported model and PyTorch,
# in float32. The exported graph computes the same operations in another order (ONNX Runtime
# fuses and reorders matmuls, layer norms and softmaxes; the deformable attention runs as
# grid_sample instead of the compiled kernel). Each reordering changes a result by a few float32
# ulps (1.2e-7 relative); through ~60 layers of a small network they reach a few 1e-6 of the
# output scale (measured: 2e-6 to 5e-6 on the R50 and Swin configs). 1e-4 leaves a 20x margin while
# still catching any real error (a wrong op or a frozen shape changes outputs by O(1)).
RELATIVE_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The model cannot be exported in the requested format (raised before any file is written)."""


class ExportableMaskFormer(nn.Module):
    """image (1, C, H, W) float32 0-255, padded -> (class logits (1, Q, K+1), mask logits (1, Q, h, w))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # Padding the raw image with the pixel mean equals the model's zero padding after
        # normalisation: (mean - mean) / std is exactly 0.
        normalised = (image - self.model.pixel_mean) / self.model.pixel_std
        outputs = self.model.head_outputs(normalised)
        return outputs["pred_logits"], outputs["pred_masks"]


def check_exportable(model: nn.Module, fmt: str, dynamic: bool) -> None:
    """Raise ExportError naming the module and the reason when ``model`` cannot be exported as
    ``fmt``; cheap, runs before anything is traced or written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not hasattr(model, "head_outputs") or not hasattr(model, "pixel_mean"):
        raise ExportError(
            f"{type(model).__name__}: only MaskFormer image models (META_ARCHITECTURE MaskFormer or "
            "SeMaskMaskFormer) can be exported: the exporter needs their head_outputs()"
        )
    for name, module in model.named_modules():
        kind = type(module).__name__
        implementation = getattr(module, "implementation", None)
        if implementation == "natten":
            raise ExportError(
                f"{name} ({kind}): implementation='natten' calls natten's compiled kernels, which no "
                "exporter can record; use MODEL.DINAT neighborhood attention 'gather' or 'tiled'"
            )
    if dynamic:
        if fmt != "onnx":
            raise ExportError(
                f"--dynamic with --format {fmt}: "
                + (
                    "the TorchScript export is a trace, which freezes the feature-map sizes as constants"
                    if fmt == "torchscript"
                    else "torch.export specialises the program to the example size (the pixel decoder's "
                    "level sizes become guards)"
                )
                + "; use --format onnx for dynamic input sizes, or export one file per size"
            )
        backbone = getattr(model, "backbone", None)
        if backbone is not None and not isinstance(backbone, ResNet):
            raise ExportError(
                f"--dynamic: backbone ({type(backbone).__name__}) computes its window / neighbourhood padding "
                "from the input size in Python, which the ONNX trace freezes as constants; dynamic sizes work "
                "with ResNet backbones. Export this model at a fixed --height/--width (one file per size)"
            )


def tolerance_for(reference: torch.Tensor, relative: Optional[float] = None) -> float:
    relative = RELATIVE_TOLERANCE if relative is None else relative
    return relative * max(1.0, float(reference.abs().max()))


def max_abs_difference(a: torch.Tensor, b) -> float:
    return float((a - torch.as_tensor(b)).abs().max())


@contextlib.contextmanager
def _atomic_output(path: str):
    """Yields a temporary name in the destination folder; renames it to ``path`` only when the
    block succeeds, else removes it: an export file is either complete or absent."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates the file private (0600); give it the permissions of a normally written file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _onnx_runner(path: str, threads: int = 0) -> Callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda image: session.run(None, {"image": image.numpy()})


def _export_onnx(wrapper, example, tmp, dynamic):
    axes = {"image": {2: "height", 3: "width"}, "mask_logits": {2: "mask_height", 3: "mask_width"}} if dynamic else None
    torch.onnx.export(
        wrapper,
        (example,),
        tmp,
        dynamo=False,  # the TorchScript-based exporter: no onnxscript dependency
        opset_version=ONNX_OPSET,
        input_names=["image"],
        output_names=["class_logits", "mask_logits"],
        dynamic_axes=axes,
    )
    return _onnx_runner(tmp)


def _export_torchscript(wrapper, example, tmp, dynamic):
    traced = torch.jit.trace(wrapper, (example,), check_trace=False)
    torch.jit.save(traced, tmp)
    loaded = torch.jit.load(tmp)
    return lambda image: loaded(image)


def _export_program(wrapper, example, tmp, dynamic):
    program = torch.export.export(wrapper, (example,))
    torch.export.save(program, tmp)
    loaded = torch.export.load(tmp).module()
    return lambda image: loaded(image)


_EXPORTERS = {"onnx": _export_onnx, "torchscript": _export_torchscript, "exported_program": _export_program}


def export_model(
    model: nn.Module,
    fmt: str,
    output_dir: str,
    height: int,
    width: int,
    dynamic: bool = False,
    check_sizes: Optional[List[Tuple[int, int]]] = None,
    log: Callable[[str], None] = print,
    relative_tolerance: Optional[float] = None,
) -> Dict:
    """Exports ``model`` (eval mode) as ``fmt`` into ``output_dir``, then runs the exported file on
    a test image of every size in ``check_sizes`` (default: the export size; with ``dynamic`` also
    a second size) and compares it with PyTorch. Raises ExportError when the model cannot be
    exported or differs by more than the tolerance (the file is then not kept).

    ``relative_tolerance`` overrides RELATIVE_TOLERANCE. Masked attention thresholds the
    previous layer's mask logits at 0: a pixel whose logit lies within the float32 noise of 0
    (a few 1e-6) can fall on the other side in the exported model and change that layer's
    attention, moving outputs by ~1e-3 (seen with untrained Swin-T weights at 800x1216); such an
    export is faithful, and a looser tolerance (--tolerance) accepts it.

    Returns {"path", "checks": [{"size", "class_logits", "mask_logits", "*_tolerance"}]}.
    """
    check_exportable(model, fmt, dynamic)
    divisibility = max(int(getattr(model, "size_divisibility", 0) or 0), 1)
    for name, size in (("height", height), ("width", width)):
        if size <= 0 or size % divisibility:
            raise ExportError(
                f"--{name} {size}: the exported input must be a positive multiple of the model's size "
                f"divisibility ({divisibility}); the runner pads images to it"
            )
    if check_sizes is None:
        check_sizes = [(height, width)]
        if dynamic:
            check_sizes.append((height + divisibility, width + 2 * divisibility))
    model = model.eval()
    wrapper = ExportableMaskFormer(model).eval()
    channels = model.pixel_mean.shape[0]
    generator = torch.Generator().manual_seed(0)

    def test_image(h, w):
        return (torch.rand((1, channels, h, w), generator=generator) * 255).round()

    path = os.path.join(output_dir, FORMATS[fmt])
    checks = []
    with _atomic_output(path) as tmp, torch.no_grad():
        with msda_backend.use_backend("pytorch"):
            run_exported = _EXPORTERS[fmt](wrapper, test_image(height, width), tmp, dynamic)
        for h, w in check_sizes:
            image = test_image(h, w)
            # The reference is the model as users run it (default deformable-attention backend).
            reference = wrapper(image)
            try:
                exported = run_exported(image)
            except Exception as e:  # noqa: BLE001 - any failure of the exported file is reported
                raise ExportError(f"the exported {fmt} model fails on a {h}x{w} input: {type(e).__name__}: {e}")
            check = {"size": (h, w)}
            for key, ref, out in zip(("class_logits", "mask_logits"), reference, exported):
                if tuple(torch.as_tensor(out).shape) != tuple(ref.shape):
                    raise ExportError(
                        f"the exported {fmt} model gives {key} of shape {tuple(torch.as_tensor(out).shape)} on a "
                        f"{h}x{w} input, PyTorch {tuple(ref.shape)}" + (" (sizes frozen in the trace)" if dynamic else "")
                    )
                check[key] = max_abs_difference(ref, out)
                check[key + "_tolerance"] = tolerance_for(ref, relative_tolerance)
            log(
                f"{fmt} {h}x{w}: largest difference to PyTorch: class logits {check['class_logits']:.3g} "
                f"(tolerance {check['class_logits_tolerance']:.3g}), mask logits {check['mask_logits']:.3g} "
                f"(tolerance {check['mask_logits_tolerance']:.3g})"
            )
            for key in ("class_logits", "mask_logits"):
                if not check[key] <= check[key + "_tolerance"]:
                    raise ExportError(
                        f"the exported {fmt} model's {key} differ from PyTorch by {check[key]:.3g} on a {h}x{w} "
                        f"input, above the tolerance {check[key + '_tolerance']:.3g}; the file was not kept"
                    )
            checks.append(check)
    return {"path": path, "checks": checks}
