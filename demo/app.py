#!/usr/bin/env python
"""
A web page for trying a Mask2Former model (Gradio), on the CPU or a GPU.

    python demo/app.py --model coco/panoptic-segmentation/maskformer2_R50_bs16_50ep
    python demo/app.py --config-file CONFIG.yaml --opts MODEL.WEIGHTS model_final.pth

Open the printed address, upload an image (or pick an example), choose the task and thresholds:
the page shows the overlay, a legend of the segments (class, score, area) and offers the overlay
as PNG and the segments as JSON with COCO run-length-encoded masks. Uploads that are not images,
too large as files or in pixels (decompression bombs) get a message in the page; no upload can
stop the server. See demo/README.md.
"""
import argparse
import html
import json
import logging
import os
import sys
import tempfile
import threading
import traceback
import warnings

# Gradio phones home at import unless told not to; the app must work offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Runnable as `python demo/app.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  (applies the Detectron2 compatibility layer first)

import numpy as np  # noqa: E402
import pycocotools.mask as mask_util  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from demo.predictor import VisualizationDemo, config_from_args, draw_predictions  # noqa: E402

logger = logging.getLogger("mask2former.app")

# Model output key and Visualizer panel of each task.
TASKS = {"panoptic": "panoptic_seg", "instance": "instances", "semantic": "sem_seg"}


class UploadError(ValueError):
    """An upload the app refuses; the message is shown in the page."""


def read_upload(path, max_bytes, max_pixels):
    """The uploaded file as an RGB uint8 array, after checks that cost no decoding."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise UploadError(f"{name}: the file is {size / 2**20:.1f} MB; this app accepts at most {max_bytes / 2**20:.1f} MB.")
    try:
        with warnings.catch_warnings():
            # PIL only warns between its two limits; any warned-about size is refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadError(f"{name}: refused as a possible decompression bomb ({e}).") from None
    except Exception:
        raise UploadError(f"{name}: not an image (it is not a format PIL can read). Upload a JPEG, PNG, BMP, TIFF or WebP file.") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise UploadError(
                f"{name}: {width}x{height} pixels is more than this app accepts ({max_pixels} pixels): "
                "a decompression bomb, or a photo to shrink before uploading."
            )
        try:
            image = ImageOps.exif_transpose(image).convert("RGB")
        except Exception as e:
            raise UploadError(f"{name}: the image is damaged and cannot be decoded ({type(e).__name__}: {e}).") from None
    return np.asarray(image)


def class_names(metadata):
    """Names by contiguous class id: Mask2Former's panoptic metadata lists every class in stuff_classes."""
    stuff = list(metadata.get("stuff_classes", []) or [])
    things = list(metadata.get("thing_classes", []) or [])
    return stuff if len(stuff) >= len(things) else things


def _rle(mask):
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def segments_of(task, predictions, names, confidence):
    """
    One dict per segment of the chosen output: class, score, area and a COCO RLE mask.

    Scores: an instance's score; panoptic and semantic segments have none of their own, so theirs
    is the class's share of the pixel's semantic scores (model output "sem_seg", which sums the
    queries' class probabilities weighted by their masks), averaged over the segment's pixels.
    """
    semantic = predictions.get("sem_seg")
    if semantic is not None:
        semantic = semantic.to("cpu")
        semantic = semantic / semantic.sum(dim=0, keepdim=True).clamp(min=1e-12)

    def region_score(mask, category):
        if semantic is None:
            return None
        return float(semantic[category][torch.from_numpy(mask)].mean())

    def name(category):
        return names[category] if category < len(names) else str(category)

    segments = []
    if task == "panoptic":
        panoptic_seg, infos = predictions["panoptic_seg"]
        panoptic_seg = panoptic_seg.to("cpu").numpy()
        for info in infos:
            mask = panoptic_seg == info["id"]
            category = int(info["category_id"])
            segments.append({"id": int(info["id"]), "category_id": category, "category": name(category),
                             "isthing": bool(info["isthing"]), "score": region_score(mask, category), "mask": mask})
    elif task == "instance":
        instances = predictions["instances"].to("cpu")
        instances = instances[instances.scores >= confidence]
        for index in range(len(instances)):
            category = int(instances.pred_classes[index])
            segments.append({"id": index + 1, "category_id": category, "category": name(category),
                             "score": float(instances.scores[index]), "mask": instances.pred_masks[index].numpy() > 0})
    else:
        labels = semantic.argmax(dim=0).numpy()
        for category in np.unique(labels).tolist():
            mask = labels == category
            segments.append({"id": len(segments) + 1, "category_id": int(category), "category": name(int(category)),
                             "score": region_score(mask, int(category)), "mask": mask})
    for segment in segments:
        mask = segment.pop("mask")
        segment["area"] = int(mask.sum())
        segment["segmentation"] = _rle(mask)
    return segments


def legend_html(segments, height, width):
    if not segments:
        return "<p id='no-segments'>No segment passes the thresholds.</p>"
    rows = "".join(
        f"<tr><td>{s['id']}</td><td class='category'>{html.escape(s['category'])}</td>"
        f"<td class='score'>{'' if s['score'] is None else format(s['score'], '.3f')}</td>"
        f"<td>{100.0 * s['area'] / (height * width):.1f}%</td></tr>"
        for s in segments
    )
    return (
        "<table class='legend'><thead><tr><th>segment</th><th>class</th><th>score</th><th>area</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


class SegmentationService:
    """The model and everything one request needs; safe to call from Gradio's worker threads."""

    def __init__(self, cfg, max_upload_bytes, max_pixels, confidence=0.5, output_dir=None):
        self.demo = VisualizationDemo(cfg)
        self.confidence = confidence  # the slider's start value
        self.model = self.demo.predictor.model
        self.tasks = [t for t, on in (("panoptic", cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON),
                                      ("instance", cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON),
                                      ("semantic", cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON)) if on]
        self.names = class_names(self.demo.metadata)
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.output_dir = output_dir or tempfile.mkdtemp(prefix="mask2former_app_")
        # The thresholds live on the model, so requests take turns.
        self.lock = threading.Lock()
        self.count = 0

    def segment(self, image_rgb, task, confidence, overlap):
        """(overlay RGB image, segments) of the chosen task."""
        if task not in self.tasks:
            raise UploadError(f"This model's config does not enable the {task} output (it offers {self.tasks}).")
        with self.lock:
            self.model.object_mask_threshold = float(confidence)
            self.model.overlap_threshold = float(overlap)
            predictions = self.demo.predictor(np.ascontiguousarray(image_rgb[:, :, ::-1]))
        key = TASKS[task]
        panels = draw_predictions(image_rgb, {key: predictions[key]}, self.demo.metadata, score_threshold=confidence)
        return panels[task], segments_of(task, predictions, self.names, confidence)

    def handle(self, path, task, confidence, overlap):
        """Gradio's callback: (overlay, legend, status, PNG path, JSON path); never raises."""
        nothing = (None, "", None, None)
        if not path:
            return (*nothing[:2], "Upload an image first (or pick an example).", *nothing[2:])
        name = os.path.basename(path)
        try:
            image = read_upload(path, self.max_upload_bytes, self.max_pixels)
            overlay, segments = self.segment(image, task, confidence, overlap)
        except UploadError as e:
            return (*nothing[:2], f"**Error:** {e}", *nothing[2:])
        except Exception as e:  # keep serving: report, log the details
            logger.error("Processing %s failed:\n%s", name, traceback.format_exc())
            return (*nothing[:2], f"**Error:** {name}: processing failed ({type(e).__name__}: {e}).", *nothing[2:])
        height, width = image.shape[:2]
        self.count += 1
        stem = f"{self.count:05d}_{os.path.splitext(name)[0]}_{task}"
        png_path = os.path.join(self.output_dir, stem + ".png")
        json_path = os.path.join(self.output_dir, stem + ".json")
        Image.fromarray(overlay).save(png_path)
        with open(json_path, "w") as f:
            json.dump({"file_name": name, "height": height, "width": width, "task": task,
                       "segments": segments}, f)
        status = f"{name}: {width}x{height}, {len(segments)} {task} segment(s)."
        return overlay, legend_html(segments, height, width), status, png_path, json_path


CSS = """
.legend {border-collapse: collapse} .legend td, .legend th {padding: 2px 10px; border-bottom: 1px solid #ddd}
"""


def build_ui(service, examples=()):
    import gradio as gr

    with gr.Blocks(title="Mask2Former", analytics_enabled=False) as ui:
        gr.Markdown("## Mask2Former\nUpload an image, choose the task and thresholds, then **Segment**.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", type="filepath", elem_id="upload")
                task = gr.Radio(service.tasks, value=service.tasks[0], label="Task", elem_id="task")
                confidence = gr.Slider(0.0, 1.0, value=service.confidence, step=0.05, elem_id="confidence",
                                       label="Confidence (instance score; panoptic: minimum class probability)")
                overlap = gr.Slider(0.0, 1.0, value=float(service.model.overlap_threshold), step=0.05,
                                    elem_id="overlap", label="Panoptic overlap (minimum visible part of a mask)")
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                if examples:
                    with gr.Column(elem_id="examples"):
                        gr.Examples(examples=[[e] for e in examples], inputs=[upload], label="Examples")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                overlay = gr.Image(label="Overlay", type="numpy", interactive=False, elem_id="overlay")
                legend = gr.HTML(elem_id="legend")
                with gr.Row():
                    png = gr.DownloadButton("Download PNG", elem_id="download-png")
                    js = gr.DownloadButton("Download JSON (COCO RLE masks)", elem_id="download-json")
        run.click(service.handle, inputs=[upload, task, confidence, overlap],
                  outputs=[overlay, legend, status, png, js])
    return ui


def get_parser():
    parser = argparse.ArgumentParser(description="Mask2Former web demo (Gradio)")
    parser.add_argument("--config-file", metavar="FILE", help="path to a config file")
    parser.add_argument("--model", metavar="NAME", help="a model-zoo name instead of --config-file (see MODEL_ZOO.md)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve the network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", nargs="*", default=[], metavar="IMAGE", help="images offered as examples")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="the confidence slider's start value")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted, in MB")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image accepted, in pixels")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    if bool(args.config_file) == bool(args.model):
        sys.exit("app.py: error: give either --config-file FILE or --model NAME (a model-zoo name)")
    for example in args.examples:
        if not os.path.isfile(example):
            sys.exit(f"app.py: error: --examples {example}: no such file")
    try:
        cfg = config_from_args(args.config_file, args.model, args.opts)
        service = SegmentationService(cfg, int(args.max_upload_mb * 2**20), args.max_pixels, args.confidence_threshold)
    except (FileNotFoundError, KeyError, ValueError, OSError) as e:
        sys.exit(f"app.py: error: {e.args[0] if e.args else e}")
    ui = build_ui(service, args.examples)
    ui.queue(default_concurrency_limit=1).launch(
        server_name=args.host, server_port=args.port, share=False, ssr_mode=False, show_error=True,
        # Gradio's own limit stops gigantic uploads before they reach the disk; ours (smaller)
        # answers with a message naming the file.
        max_file_size=int(args.max_upload_mb * 2**20) * 2 + 2**20, css=CSS,
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
