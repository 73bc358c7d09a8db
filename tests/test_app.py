"""demo/app.py: upload checks, the JSON of segments (COCO RLE), and the page in a real headless Chromium."""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detectron2.modeling import build_model

from demo import app
from mask2former.engine import load_config, use_cpu_without_cuda

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "synthetic", "panoptic-segmentation", "maskformer2_R18_bs8_cpu.yaml")
SMALL = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.path.join(REPO_ROOT, "output", "test_screenshots")


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width, height):
    """A tiny file that claims width x height pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")


def test_read_upload_refuses_bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 30, 3), 7, np.uint8)).save(good)
    assert app.read_upload(str(good), 10**6, 10**6).shape == (20, 30, 3)

    text = tmp_path / "notes.png"
    text.write_text("plain text with an image's name")
    with pytest.raises(app.UploadError, match="notes.png: not an image"):
        app.read_upload(str(text), 10**6, 10**6)
    with pytest.raises(app.UploadError, match=r"good.png: the file is .* MB; this app accepts at most"):
        app.read_upload(str(good), 10, 10**6)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(100_000, 100_000))
    assert bomb.stat().st_size < 200
    with pytest.raises(app.UploadError, match="bomb.png: refused as a possible decompression bomb"):
        app.read_upload(str(bomb), 10**6, 10**12)
    large = tmp_path / "large.png"
    large.write_bytes(_png_header_only(5000, 4000))  # below PIL's limits, above ours
    with pytest.raises(app.UploadError, match="large.png: 5000x4000 pixels is more than"):
        app.read_upload(str(large), 10**6, 10**6)
    truncated = tmp_path / "truncated.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    truncated.write_bytes((tmp_path / "full.png").read_bytes()[:2000])  # the header and part of the data
    with pytest.raises(app.UploadError, match="truncated.png: the image is damaged"):
        app.read_upload(str(truncated), 10**6, 10**6)


def test_segments_json_holds_coco_rle_masks_and_scores():
    # A 4x5 panoptic result made by hand: segment 3 (class 1) on the left two columns, segment 8
    # (class 0) on the rest; per-pixel semantic scores to normalise and average.
    panoptic = torch.tensor([[3, 3, 8, 8, 8]] * 4, dtype=torch.int32)
    semantic = torch.zeros(2, 4, 5)
    semantic[0] = 1.0
    semantic[1, :, :2] = 3.0  # share of class 1 on the left: 3 / 4
    infos = [{"id": 3, "isthing": True, "category_id": 1}, {"id": 8, "isthing": False, "category_id": 0}]
    segments = app.segments_of("panoptic", {"panoptic_seg": (panoptic, infos), "sem_seg": semantic}, ["sky", "disc"], 0.5)

    assert [(s["id"], s["category"], s["area"]) for s in segments] == [(3, "disc", 8), (8, "sky", 12)]
    assert segments[0]["score"] == pytest.approx(0.75)
    assert segments[1]["score"] == pytest.approx(1.0)
    for segment in segments:
        rle = dict(segment["segmentation"], counts=segment["segmentation"]["counts"].encode())
        assert rle["size"] == [4, 5]
        np.testing.assert_array_equal(mask_util.decode(rle), (panoptic == segment["id"]).numpy())
    json.dumps(segments)  # serialisable as is


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    cfg = load_config(CONFIG, SMALL)
    use_cpu_without_cuda(cfg)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "model.pth"
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return str(path)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url, process, log_path, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with code {process.returncode}:\n{open(log_path).read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"the app did not answer at {url} within {timeout} s:\n{open(log_path).read()[-3000:]}")


def _chromium_or_skip():
    # .ci/run sets MASK2FORMER_REQUIRE_BROWSER: CI installs the browser, so missing it is a failure there.
    missing = pytest.fail if os.environ.get("MASK2FORMER_REQUIRE_BROWSER") else pytest.skip
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        missing("playwright is not installed (pip install -r requirements.txt)")
    if not os.path.isfile(CHROMIUM):
        missing(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium with apt-get (as root), which failed here")


@pytest.mark.slow
def test_app_in_headless_chromium(weights, tmp_path):
    _chromium_or_skip()
    from playwright.sync_api import sync_playwright

    example = tmp_path / "example.png"
    from mask2former.data.synthetic import _draw_image

    Image.fromarray(_draw_image(128, 160, np.random.default_rng(3))[0]).save(example)
    not_an_image = tmp_path / "holiday.jpg"
    not_an_image.write_text("this is a text file")

    port = _free_port()
    log_path = tmp_path / "app.log"
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", OMP_WAIT_POLICY="PASSIVE")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, os.path.join(REPO_ROOT, "demo", "app.py"), "--config-file", CONFIG,
             "--port", str(port), "--examples", str(example), "--confidence-threshold", "0",
             "--opts", "MODEL.WEIGHTS", weights, *SMALL, "MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD", "0.0"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path),
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_for(url, process, log_path)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
            )
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 900}, accept_downloads=True)
                page.goto(url, wait_until="networkidle")
                page.locator("#upload input[type=file]").set_input_files(str(example))
                page.wait_for_selector("#upload >> text=example.png")
                page.click("#segment")
                page.wait_for_selector("#legend table.legend", timeout=120_000)
                assert "example.png: 160x128" in page.inner_text("#status")
                rows = page.locator("#legend tbody tr")
                legend = [(rows.nth(i).locator("td.category").inner_text(), rows.nth(i).locator("td.score").inner_text())
                          for i in range(rows.count())]
                assert legend, "empty legend"

                with page.expect_download() as download:
                    page.click("#download-json")
                result = json.loads(open(download.value.path()).read())
                assert (result["file_name"], result["height"], result["width"], result["task"]) == ("example.png", 128, 160, "panoptic")
                assert [(s["category"], f"{s['score']:.3f}") for s in result["segments"]] == legend
                covered = np.zeros((128, 160), dtype=np.uint8)
                for segment in result["segments"]:
                    rle = dict(segment["segmentation"], counts=segment["segmentation"]["counts"].encode())
                    mask = mask_util.decode(rle)
                    assert mask.shape == (128, 160) and int(mask.sum()) == segment["area"] > 0
                    covered += mask
                assert covered.max() == 1  # panoptic segments do not overlap
                overlay = page.locator("#overlay img")
                assert overlay.count() == 1
                page.screenshot(path=str(tmp_path / "app_result.png"), full_page=True)

                page.click("#upload button[aria-label=Clear]")
                page.locator("#upload input[type=file]").set_input_files(str(not_an_image))
                page.wait_for_selector("#upload >> text=holiday.jpg")
                page.click("#segment")
                page.wait_for_function("document.querySelector('#status').innerText.includes('Error')", timeout=60_000)
                assert "holiday.jpg: not an image" in page.inner_text("#status")
                page.screenshot(path=str(tmp_path / "app_error.png"), full_page=True)

                # The server survived; the example works too, on the semantic task this time.
                page.locator("#examples").get_by_text("example.png").click()
                page.wait_for_selector("#upload >> text=example")
                page.locator("#task").get_by_text("semantic").click()
                page.click("#segment")
                page.wait_for_function("document.querySelector('#status').innerText.includes('semantic segment')",
                                       timeout=60_000)
                assert "example.png: 160x128" in page.inner_text("#status")
            finally:
                browser.close()
        assert process.poll() is None, "the server stopped"
        with urllib.request.urlopen(url, timeout=10) as response:  # and still serves
            assert response.status == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
    os.makedirs(SCREENSHOTS, exist_ok=True)
    for name in ("app_result.png", "app_error.png"):
        shutil.copy(tmp_path / name, os.path.join(SCREENSHOTS, name))
