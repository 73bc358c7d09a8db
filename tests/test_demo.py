"""demo/demo.py writes one drawing per input image, with a panel per output the config enables."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: I001  isort: skip

import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from demo import demo

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml")
SMALL = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An untrained model's checkpoint: the demo's job is drawing, not the model's quality."""
    out_dir = tmp_path_factory.mktemp("weights")
    cfg = train_net.load_config(CONFIG, SMALL)
    train_net.use_cpu_without_cuda(cfg)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(out_dir)).save("model")
    return str(out_dir / "model.pth")


def _write_image(path, height, width):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def test_demo_draws_every_enabled_output(weights, tmp_path):
    _write_image(tmp_path / "a.jpg", 96, 128)
    _write_image(tmp_path / "b.png", 80, 64)
    out_dir = tmp_path / "vis"
    demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "*.*"), "--output", str(out_dir),
               "--confidence-threshold", "0.0", "--opts", "MODEL.WEIGHTS", weights, *SMALL])

    gap = 4  # demo.predictor.tile_horizontally's default
    for name, (height, width) in {"a": (96, 128), "b": (80, 64)}.items():
        drawing = np.asarray(Image.open(out_dir / f"{name}.png"))
        # panoptic | instance | semantic, each at the input's size.
        assert drawing.shape == (height, 3 * width + 2 * gap, 3)
        assert (drawing[:, width : width + gap] == 255).all()


def test_demo_reports_a_missing_input(weights, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        demo.main(["--config-file", CONFIG, "--input", str(tmp_path / "nothing_here*.jpg"),
                   "--output", str(tmp_path / "vis"), "--opts", "MODEL.WEIGHTS", weights])


def test_demo_reads_a_folder_and_rejects_a_non_image(weights, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    _write_image(folder / "c.jpg", 64, 64)
    (folder / "notes.txt").write_text("not an image, and not picked from the folder")
    out_dir = tmp_path / "vis"
    demo.main(["--config-file", CONFIG, "--input", str(folder), "--output", str(out_dir),
               "--opts", "MODEL.WEIGHTS", weights, *SMALL])
    assert sorted(os.listdir(out_dir)) == ["c.png"]

    fake = folder / "fake.png"
    fake.write_bytes(b"GIF89a but not really")
    with pytest.raises(demo.DemoInputError, match=f"--input {fake}: not an image"):
        demo.main(["--config-file", CONFIG, "--input", str(fake), "--output", str(out_dir),
                   "--opts", "MODEL.WEIGHTS", weights])


def _write_video(path, frames, fps, size):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for index in range(frames):
        frame = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        frame[:, :] = rng.integers(40, 200, 3)
        frame[10 + index : 40 + index, 20:60] = 255  # a moving square
        writer.write(frame)
    writer.release()


def _video_properties(path):
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


def test_demo_on_a_video_keeps_frame_count_fps_and_size(weights, tmp_path):
    clip = tmp_path / "clip.mp4"
    _write_video(clip, frames=5, fps=12, size=(96, 64))
    source, source_fps = _video_properties(clip)
    assert len(source) == 5 and source_fps == pytest.approx(12)

    out = tmp_path / "out" / "drawn.mp4"
    demo.main(["--config-file", CONFIG, "--video-input", str(clip), "--output", str(out),
               "--opts", "MODEL.WEIGHTS", weights, *SMALL,
               # Keep every query's segment, so that the untrained model draws an overlay.
               "MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD", "0.0",
               "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0"])
    drawn, fps = _video_properties(out)
    assert len(drawn) == 5 and fps == pytest.approx(12)
    assert drawn[0].shape == (64, 96, 3)
    # The overlay changes the frames far beyond the codec's error (a few grey levels).
    difference = np.abs(drawn[0].astype(int) - source[0].astype(int)).mean()
    assert difference > 10, difference


def test_demo_bad_video_and_absent_webcam(weights, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    with pytest.raises(demo.DemoInputError, match=f"--video-input {broken}: OpenCV cannot decode it"):
        demo.main(["--config-file", CONFIG, "--video-input", str(broken), "--output", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="--video-input .*missing.mp4: no such file"):
        demo.main(["--config-file", CONFIG, "--video-input", str(tmp_path / "missing.mp4")])
    if os.path.exists("/dev/video0"):
        pytest.skip("this machine has a camera")
    with pytest.raises(demo.DemoInputError, match="--webcam: no camera could be opened"):
        demo.main(["--config-file", CONFIG, "--webcam", "--output", str(tmp_path / "cam.mp4")])


def test_demo_command_line_error_is_one_line(tmp_path):
    import subprocess
    import sys

    missing = tmp_path / "missing_weights.pkl"
    image = tmp_path / "x.png"
    _write_image(image, 32, 32)
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "demo", "demo.py"), "--config-file", CONFIG,
         "--input", str(image), "--output", str(tmp_path), "--opts", "MODEL.WEIGHTS", str(missing)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("demo.py: error: MODEL.WEIGHTS file does not exist: " + str(missing))
    assert "Traceback" not in result.stderr
