#!/usr/bin/env python
"""
Draw a video Mask2Former's tracked instances on a video (one colour per instance across frames).

    python demo_video/demo.py --config-file configs/youtubevis_2019/video_maskformer2_R50_bs16_8ep.yaml \
        --video-input clip.mp4 --output out/ --opts MODEL.WEIGHTS model_final_9d5b3a.pkl
    python demo_video/demo.py --config-file ... --input "frames/*.jpg" --output out/ --save-frames

Writes OUTPUT/visualization.mp4 (OpenCV, mp4v) and, with --save-frames, one JPEG per frame in
OUTPUT/frames/. The whole video is one clip for the model: bound the memory of long videos with
MODEL.MASK_FORMER.TEST.FRAMES_PER_BATCH (or cut the video).
"""
import argparse
import glob
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mask2former  # noqa: E402,F401  isort: skip  (Detectron2 compatibility layer first)
import mask2former_video  # noqa: E402  isort: skip

import cv2  # noqa: E402
import tqdm  # noqa: E402

from detectron2.utils.logger import setup_logger  # noqa: E402

from demo_video.predictor import VideoPredictor, draw_video_predictions  # noqa: E402
from mask2former.engine import check_inputs, load_config, use_cpu_without_cuda  # noqa: E402

logger = logging.getLogger("mask2former.demo_video")


def get_parser():
    parser = argparse.ArgumentParser(description="Mask2Former video demo: draw tracked instances on a video")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to a config file")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video-input", help="a video file (anything OpenCV reads, e.g. mp4)")
    source.add_argument("--input", nargs="+", help="frame images in order, or glob patterns (sorted)")
    parser.add_argument("--output", required=True, help="output folder (visualization.mp4, frames/)")
    parser.add_argument("--save-frames", action="store_true", help="also write every drawn frame as a JPEG")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score of drawn instances")
    parser.add_argument("--fps", type=float, default=None, help="frame rate of the output (default: the input's, else 10)")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs")
    return parser


def read_video(path):
    """RGB frames and the frame rate of a video file; SystemExit with one line if unreadable."""
    if not os.path.isfile(path):
        raise SystemExit(f"--video-input {path}: no such file")
    capture = cv2.VideoCapture(path)
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0
    frames = []
    while capture.isOpened():
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1].copy())
    capture.release()
    if not frames:
        raise SystemExit(f"--video-input {path}: OpenCV cannot read any frame from it (not a video, or an unsupported codec)")
    return frames, fps or None


def read_frames(patterns):
    paths = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise SystemExit(f"--input {pattern}: no such file")
        paths.extend(matches)
    frames = []
    for path in paths:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            raise SystemExit(f"--input {path}: not a readable image")
        frames.append(frame[:, :, ::-1].copy())
    return frames


def write_video(path, frames_rgb, fps):
    height, width = frames_rgb[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit(f"OpenCV cannot write {path} with the mp4v codec")
    for frame in tqdm.tqdm(frames_rgb, desc="writing frames", unit="frame"):
        writer.write(frame[:, :, ::-1])
    writer.release()


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="mask2former")
    if args.video_input:
        frames, fps = read_video(args.video_input)
    else:
        frames, fps = read_frames(args.input), None
    cfg = load_config(args.config_file, args.opts, add_configs=(mask2former_video.add_maskformer2_video_config,))
    use_cpu_without_cuda(cfg)
    check_inputs(cfg)
    cfg.freeze()
    predictor = VideoPredictor(cfg)

    start = time.perf_counter()
    logger.info("Running the model on %d frames of %dx%d ...", len(frames), frames[0].shape[1], frames[0].shape[0])
    predictions = predictor(frames)
    kept = sum(score >= args.confidence_threshold for score in predictions["pred_scores"])
    logger.info("%d instance(s) above %.2f in %.1fs", kept, args.confidence_threshold, time.perf_counter() - start)
    drawn = draw_video_predictions(
        tqdm.tqdm(frames, desc="drawing frames", unit="frame"), predictions, predictor.metadata, args.confidence_threshold
    )
    os.makedirs(args.output, exist_ok=True)
    video_path = os.path.join(args.output, "visualization.mp4")
    write_video(video_path, drawn, args.fps or fps or 10.0)
    if args.save_frames:
        frame_dir = os.path.join(args.output, "frames")
        os.makedirs(frame_dir, exist_ok=True)
        for t, frame in enumerate(drawn):
            cv2.imwrite(os.path.join(frame_dir, f"{t:05d}.jpg"), frame[:, :, ::-1])
    logger.info("Wrote %s", video_path)
    return video_path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
