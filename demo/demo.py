#!/usr/bin/env python
"""
Draw a Mask2Former model's predictions on images, a video or a webcam (see demo/README.md).

    python demo/demo.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \
        --input images/*.jpg --output vis/ --opts MODEL.WEIGHTS model_final_94dc52.pkl

Images: one PNG per input with the panoptic, instance and semantic predictions the config enables
(MODEL.MASK_FORMER.TEST.*_ON) side by side. Video and webcam: an mp4 of the same size, frame count
and frame rate, drawn with the first of panoptic, instance, semantic that the config enables.
"""
import argparse
import glob
import logging
import os
import sys
import time

# Runnable as `python demo/demo.py` from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  (applies the Detectron2 compatibility layer first)

import cv2  # noqa: E402
import tqdm  # noqa: E402
from PIL import Image  # noqa: E402

from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from mask2former.utils.download import DownloadError  # noqa: E402

from demo.predictor import VisualizationDemo, config_from_args, tile_horizontally  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_TASKS = ("panoptic", "instance", "semantic")  # the first one the model outputs is drawn


class DemoInputError(ValueError):
    """An input the demo cannot use; the message names it and says what to do."""


def get_parser():
    parser = argparse.ArgumentParser(description="Mask2Former demo: visualise predictions")
    parser.add_argument("--config-file", metavar="FILE", help="path to a config file")
    parser.add_argument(
        "--model", metavar="NAME",
        help="a model-zoo name instead of --config-file, e.g. coco/panoptic-segmentation/maskformer2_R50_bs16_50ep "
        "(its published weights are downloaded once unless --opts MODEL.WEIGHTS says otherwise)",
    )
    parser.add_argument("--webcam", action="store_true", help="take frames from the webcam (camera 0)")
    parser.add_argument("--video-input", metavar="FILE", help="path to a video file")
    parser.add_argument("--input", nargs="+", help="image files, folders or glob patterns")
    parser.add_argument(
        "--output",
        help="a folder for the visualisations, or a file name for a single image, a video or the "
        "webcam; without it, results are shown in a window",
    )
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score of drawn instances"
    )
    parser.add_argument(
        "--onnx",
        metavar="FILE",
        help="run this ONNX export of the config's model (tools/export_model.py) with onnxruntime instead of PyTorch",
    )
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs"
    )
    return parser


def setup_cfg(args):
    """The frozen config the command line asks for (checked before the model is built)."""
    return config_from_args(args.config_file, args.model, args.opts)


def build_demo(cfg, args):
    """The object that runs the model (PyTorch, or with --onnx an onnxruntime export) and draws."""
    predictor = None
    if args.onnx:
        from mask2former.export import OnnxPredictor

        predictor = OnnxPredictor(cfg, args.onnx)
    return VisualizationDemo(cfg, score_threshold=args.confidence_threshold, predictor=predictor)


def expand_inputs(patterns):
    """Files, folders (their images) and glob patterns -> image paths; each checked to be an image."""
    paths = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, name) for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise FileNotFoundError(f"--input {pattern}: the folder holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            found = sorted(glob.glob(pattern))
            if not found:
                raise FileNotFoundError(f"--input {pattern}: no such file")
        paths.extend(found)
    for path in paths:
        check_image(path)
    return paths


def check_image(path):
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:  # PIL raises many kinds for broken files
        raise DemoInputError(f"--input {path}: not an image this demo can read ({type(e).__name__}: {e})") from None


def output_path(output, input_path, extension, single):
    """A file name inside the --output folder, or --output itself for a single input."""
    if single and os.path.splitext(output)[1]:
        parent = os.path.dirname(output)
        if parent:
            os.makedirs(parent, exist_ok=True)
        return output
    os.makedirs(output, exist_ok=True)
    return os.path.join(output, os.path.splitext(os.path.basename(input_path))[0] + extension)


def run_on_images(demo, paths, output, logger):
    for path in tqdm.tqdm(paths, disable=len(paths) == 1):
        image = read_image(path, format="BGR")
        start = time.perf_counter()
        _, panels = demo.run_on_image(image)
        logger.info("%s: %s in %.2fs", path, ", ".join(panels) or "no outputs", time.perf_counter() - start)
        if not panels:
            continue
        drawing = tile_horizontally(list(panels.values()))
        if output:
            cv2.imwrite(output_path(output, path, ".png", len(paths) == 1), drawing[:, :, ::-1])
        else:
            _show(path, drawing[:, :, ::-1])


def open_video(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--video-input {path}: no such file")
    capture = cv2.VideoCapture(path)
    ok = capture.isOpened() and capture.grab()
    if not ok:
        capture.release()
        raise DemoInputError(
            f"--video-input {path}: OpenCV cannot decode it as a video; give a video file (mp4, avi, mkv, ...)"
        )
    # grab() consumed the first frame: start again from the beginning.
    capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
    return capture


def open_webcam(index=0):
    capture = cv2.VideoCapture(index)
    if not capture.isOpened() or not capture.grab():
        capture.release()
        raise DemoInputError(
            f"--webcam: no camera could be opened (OpenCV camera {index}); connect one or check its "
            "permissions, or use --input / --video-input"
        )
    return capture


def draw_frame(demo, frame_bgr):
    """The first of panoptic/instance/semantic drawings of one frame (BGR, same size), or the frame."""
    _, panels = demo.run_on_image(frame_bgr)
    for task in VIDEO_TASKS:
        if task in panels:
            return panels[task][:, :, ::-1]
    return frame_bgr


def run_on_capture(demo, capture, name, output, total=None):
    """Draws every frame of `capture` into the mp4 `output` (or a window); returns the frame count."""
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0  # some cameras report 0
    writer = None
    if output:
        writer = cv2.VideoWriter(output, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        if not writer.isOpened():
            raise DemoInputError(f"--output {output}: OpenCV cannot write an mp4 video there")
    count = 0
    try:
        with tqdm.tqdm(total=total, unit="frame", desc=name) as bar:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                drawing = draw_frame(demo, frame)
                if writer is not None:
                    writer.write(drawing)
                elif _show(name, drawing):
                    break
                count += 1
                bar.update(1)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    return count


def _show(name, image_bgr):
    """Shows an image in a window; True when the user pressed Esc."""
    try:
        cv2.namedWindow(name, cv2.WINDOW_NORMAL)
        cv2.imshow(name, image_bgr)
    except cv2.error:
        raise DemoInputError(
            "This OpenCV has no display windows (opencv-python-headless): pass --output to write files instead"
        ) from None
    return cv2.waitKey(1) == 27


def main(argv=None):
    args = get_parser().parse_args(argv)
    sources = [bool(args.input), bool(args.video_input), args.webcam]
    if sum(sources) != 1:
        raise DemoInputError("Give exactly one of --input, --video-input and --webcam")
    if bool(args.config_file) == bool(args.model):
        raise DemoInputError("Give either --config-file FILE or --model NAME (a model-zoo name)")
    setup_logger(name="fvcore")
    logger = setup_logger(name="mask2former")
    # Open the inputs first: a typo or a missing camera should not cost a model build.
    paths = expand_inputs(args.input) if args.input else None
    if paths and len(paths) > 1 and args.output and os.path.splitext(args.output)[1]:
        raise DemoInputError(f"--output {args.output}: {len(paths)} inputs need an output folder, not a file")
    capture = open_video(args.video_input) if args.video_input else open_webcam() if args.webcam else None
    try:
        cfg = setup_cfg(args)
        demo = build_demo(cfg, args)
    except BaseException:
        if capture is not None:
            capture.release()
        raise

    if paths is not None:
        run_on_images(demo, paths, args.output, logger)
    elif args.video_input:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        out = output_path(args.output, args.video_input, ".mp4", single=True) if args.output else None
        count = run_on_capture(demo, capture, os.path.basename(args.video_input), out, total=total)
        logger.info("%s: %d frames -> %s", args.video_input, count, out or "window")
    else:
        out = output_path(args.output, "webcam", ".mp4", single=True) if args.output else None
        run_on_capture(demo, capture, "webcam", out)

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    try:
        main()
    except (DemoInputError, FileNotFoundError, KeyError, DownloadError) as e:
        # One line naming the input, not a traceback.
        sys.exit(f"demo.py: error: {e.args[0] if e.args else e}")
