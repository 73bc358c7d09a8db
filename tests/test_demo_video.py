"""demo_video/demo.py: reads a clip, runs a tiny random-weight video model, writes an mp4 and frames."""
import os

import mask2former  # noqa: F401  isort: skip

import cv2
import numpy as np
import pytest

from demo_video import demo
from demo_video.predictor import draw_video_predictions, track_colors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "youtubevis_synthetic", "video_maskformer2_R18_cpu.yaml")
TINY = ["MODEL.WEIGHTS", "", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "2",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "80", "MODEL.DEVICE", "cpu"]


def write_clip(path, num_frames=4, size=(48, 64)):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 5, (size[1], size[0]))
    assert writer.isOpened()
    for t in range(num_frames):
        frame = np.full(size + (3,), 90, np.uint8)
        cv2.circle(frame, (10 + 8 * t, 24), 8, (0, 0, 230), -1)
        writer.write(frame)
    writer.release()


def count_frames(path):
    capture = cv2.VideoCapture(path)
    count = 0
    while capture.read()[0]:
        count += 1
    return count


def test_demo_writes_mp4_and_frames(tmp_path):
    clip = str(tmp_path / "clip.mp4")
    write_clip(clip)
    out = str(tmp_path / "out")
    video = demo.main(["--config-file", CONFIG, "--video-input", clip, "--output", out, "--save-frames",
                       "--confidence-threshold", "0", "--opts", *TINY])
    assert count_frames(video) == 4
    frames = sorted(os.listdir(os.path.join(out, "frames")))
    assert frames == [f"{t:05d}.jpg" for t in range(4)]
    assert cv2.imread(os.path.join(out, "frames", frames[0])).shape == (48, 64, 3)


def test_demo_reads_frames_from_a_glob(tmp_path):
    for t in range(3):
        cv2.imwrite(str(tmp_path / f"{t:03d}.png"), np.full((40, 56, 3), 30 * t, np.uint8))
    video = demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "*.png"), "--output", str(tmp_path / "o"),
                       "--opts", *TINY])
    assert count_frames(video) == 3


def test_unreadable_video_is_one_clear_line(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(SystemExit) as excinfo:
        demo.main(["--config-file", CONFIG, "--video-input", str(bad), "--output", str(tmp_path / "o")])
    message = str(excinfo.value)
    assert "broken.mp4" in message and "cannot read" in message and "\n" not in message


def test_each_track_keeps_one_colour_in_every_frame():
    frames = [np.zeros((20, 30, 3), np.uint8) for _ in range(3)]
    masks = np.zeros((3, 20, 30), bool)
    masks[:, 5:15, 5:15] = True
    masks[2] = False  # not visible in the last frame
    predictions = {"pred_scores": [0.9, 0.2], "pred_labels": [0, 1], "pred_masks": [masks, masks]}

    class Meta(dict):
        pass

    drawn = draw_video_predictions(frames, predictions, Meta(thing_classes=["a", "b"]), score_threshold=0.5)
    color = np.array(track_colors(1)[0]) * 255
    for t in range(2):
        pixel = drawn[t][8, 8].astype(float)
        # The overlay tints the masked pixels towards the track's colour, equally in both frames.
        assert np.allclose(drawn[0][8, 8], drawn[t][8, 8])
        assert np.corrcoef(pixel, color)[0, 1] > 0.9
    assert not drawn[2].any()  # nothing drawn where the track is absent
