"""The model zoo by name, MODEL_ZOO.md kept in step with its table, and MODEL.WEIGHTS given as a URL
(downloaded from an HTTP server on 127.0.0.1: resumed, never used while partial, clear errors)."""
import http.server
import os
import re
import socket
import threading

import pytest
import torch

from detectron2.modeling import build_model

from mask2former import model_zoo
from mask2former.engine import load_config, use_cpu_without_cuda
from mask2former.utils.checkpoint import Mask2FormerCheckpointer
from mask2former.utils.download import DownloadError, cached_file_name

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = "configs/synthetic/panoptic-segmentation/maskformer2_R18_bs8_cpu.yaml"
SMALL = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1"]


def model_zoo_md_rows():
    """(config, checkpoint link) of every MODEL_ZOO.md table row that has both, read independently."""
    rows = []
    with open(os.path.join(REPO_ROOT, "MODEL_ZOO.md")) as f:
        for line in f:
            if not line.startswith("|"):
                continue
            config = re.search(r"\]\((configs/[^)\s]+\.yaml)\)", line)
            links = [url for url in re.findall(r"\]\((https?://[^)\s]+)\)", line)]
            if config and links:
                rows.append((config.group(1), links[0]))
    return rows


def test_model_zoo_md_and_table_agree():
    documented = model_zoo_md_rows()
    assert len(documented) >= 57  # the 57 published image models when this test was written
    in_table = [(row["config"], row["checkpoint"]) for row in model_zoo._table().values()]
    assert sorted(in_table) == sorted(documented)
    for name in model_zoo.list_models():
        config = model_zoo.get_config_file(name)
        assert os.path.isfile(config)
        assert config == os.path.join(REPO_ROOT, "configs", name + ".yaml")


def test_names_and_urls():
    name = "coco/panoptic-segmentation/maskformer2_R50_bs16_50ep"
    url = "https://dl.fbaipublicfiles.com/maskformer/mask2former/coco/panoptic/maskformer2_R50_bs16_50ep/model_final_94dc52.pkl"
    for spelling in (name, name + ".yaml", "configs/" + name + ".yaml"):
        assert model_zoo.get_checkpoint_url(spelling) == url
    cfg = model_zoo.get_config(name)
    assert cfg.MODEL.WEIGHTS == url and cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == 133
    assert model_zoo.get_config(name, trained=False).MODEL.WEIGHTS == ""
    with pytest.raises(KeyError, match="maskformer2_R50_bs16_5ep.*list_models"):
        model_zoo.get_checkpoint_url("coco/panoptic-segmentation/maskformer2_R50_bs16_5ep")
    with pytest.raises(ValueError, match="web page.*drive.google.com"):
        model_zoo.get_checkpoint_url(
            "ade20k/semantic-segmentation/semask_swin/maskformer2_semask_swin_large_IN21k_384_bs16_160k_res640"
        )


class _Server:
    """Serves one file; honours Range unless told not to; can break off the first transfer."""

    def __init__(self, payload):
        self.payload = payload
        self.requests = []  # Range header of each GET (None when absent)
        self.honour_range = True
        self.break_after = None  # bytes sent before the connection is closed, once
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                requested = self.headers.get("Range")
                server.requests.append(requested)
                if not self.path.endswith("/model.pth"):
                    self.send_error(404)
                    return
                start = 0
                if requested and server.honour_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.break_after is not None:
                    self.wfile.write(body[: server.break_after])
                    server.break_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/models/tiny/model.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = load_config(os.path.join(REPO_ROOT, TINY_CONFIG), SMALL)
    use_cpu_without_cuda(cfg)
    torch.manual_seed(1)
    model = build_model(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return cfg, model.state_dict(), path.read_bytes()


@pytest.fixture
def server(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("MASK2FORMER_CACHE", str(tmp_path / "cache"))
    s = _Server(tiny_checkpoint[2])
    yield s
    s.close()


def _load(cfg, weights):
    torch.manual_seed(2)  # a different initialisation, so loading must change every weight
    model = build_model(cfg)
    Mask2FormerCheckpointer(model).load(weights)
    return model.state_dict()


def _assert_same(state, expected):
    assert state.keys() == expected.keys()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key


def test_weights_url_is_downloaded_once_and_loaded(tiny_checkpoint, server, tmp_path):
    cfg, expected, payload = tiny_checkpoint
    _assert_same(_load(cfg, server.url), expected)
    port = server.url.split(":")[2].split("/")[0]
    cached = tmp_path / "cache" / f"127.0.0.1_{port}" / "models" / "tiny" / "model.pth"
    assert cached.read_bytes() == payload
    assert not os.path.exists(str(cached) + ".part")
    _load(cfg, server.url)
    assert server.requests == [None]  # the second load used the cache


def test_interrupted_download_is_not_used_and_resumes(tiny_checkpoint, server):
    cfg, expected, payload = tiny_checkpoint
    server.break_after = len(payload) // 3
    with pytest.raises(DownloadError, match=re.escape(server.url) + ".*partial file.*resumes"):
        _load(cfg, server.url)
    target = cached_file_name(server.url)
    assert not os.path.exists(target)
    assert os.path.getsize(target + ".part") == len(payload) // 3

    _assert_same(_load(cfg, server.url), expected)
    assert server.requests == [None, f"bytes={len(payload) // 3}-"]
    with open(target, "rb") as f:
        assert f.read() == payload


def test_server_without_range_support_restarts_the_download(tiny_checkpoint, server):
    cfg, expected, payload = tiny_checkpoint
    target = cached_file_name(server.url)
    os.makedirs(os.path.dirname(target))
    with open(target + ".part", "wb") as f:
        f.write(payload[:1000])
    server.honour_range = False
    _assert_same(_load(cfg, server.url), expected)
    with open(target, "rb") as f:
        assert f.read() == payload


def test_unreachable_server_and_missing_file(tiny_checkpoint, server, tmp_path):
    cfg = tiny_checkpoint[0]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/model_final.pkl"
    with pytest.raises(DownloadError, match=re.escape(url) + ".*cannot reach the server.*local path"):
        _load(cfg, url)
    missing = server.url.replace("model.pth", "other.pth")
    with pytest.raises(DownloadError, match=re.escape(missing) + ".*HTTP 404"):
        _load(cfg, missing)
    assert not os.path.exists(cached_file_name(missing))
    assert not os.path.exists(cached_file_name(missing) + ".part")


def test_get_builds_a_zoo_model_with_its_downloaded_weights(tiny_checkpoint, server, monkeypatch):
    _, expected, _ = tiny_checkpoint
    name = "synthetic/panoptic-segmentation/maskformer2_R18_bs8_cpu"
    table = {name: {"name": name, "config": TINY_CONFIG, "checkpoint": server.url, "direct_download": "yes"}}
    monkeypatch.setattr(model_zoo, "_table", lambda: table)
    # A smaller model than the config's: get_config reads load_config from mask2former.engine.
    import mask2former.engine as engine

    original = engine.load_config
    monkeypatch.setattr(engine, "load_config", lambda path, opts=(), add_configs=(): original(path, [*opts, *SMALL], add_configs))
    model = model_zoo.get(name, device="cpu")
    assert not model.training and model.device.type == "cpu"
    _assert_same(model.state_dict(), expected)
    assert not model_zoo.get(name, trained=False).training


def test_video_model_by_name_with_the_video_config_keys():
    from mask2former_video import add_maskformer2_video_config

    name = "youtubevis_2019/video_maskformer2_R50_bs16_8ep"
    with pytest.raises(KeyError, match="Non-existent config key: INPUT"):
        model_zoo.get_config(name)  # the image keys alone do not know the video config
    cfg = model_zoo.get_config(name, add_configs=[add_maskformer2_video_config])
    assert cfg.MODEL.META_ARCHITECTURE == "VideoMaskFormer"
    assert cfg.MODEL.WEIGHTS == model_zoo.get_checkpoint_url(name)
