"""Export of image models (ONNX, TorchScript, torch.export) and an onnxruntime predictor that
applies the PyTorch model's own pre- and post-processing. See GETTING_STARTED.md, "Deploy"."""
from .exporter import FORMATS, ExportableMaskFormer, ExportError, check_exportable, export_model

__all__ = ["FORMATS", "ExportableMaskFormer", "ExportError", "OnnxPredictor", "check_exportable", "export_model"]


def __getattr__(name):
    # The runner needs onnxruntime; importing it lazily keeps the exporters usable without it.
    if name == "OnnxPredictor":
        from .runner import OnnxPredictor

        return OnnxPredictor
    raise AttributeError(name)
