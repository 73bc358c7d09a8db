"""demo/mask2former_demo.ipynb runs end to end (nbclient, CPU, no network) with its parameters set
the way papermill sets them: a cell of overrides right after the cell tagged `parameters`."""
# train_net applies the Detectron2 compatibility layer before importing detectron2.
import train_net  # noqa: F401,I001  isort: skip

import base64
import io
import os

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from test_train_net import TINY, make_args, tiny_data, train  # noqa: F401  (tiny_data is a fixture)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, "demo", "mask2former_demo.ipynb")
SYNTHETIC = os.path.join(REPO_ROOT, "configs", "synthetic", "{}-segmentation", "maskformer2_R18_bs8_cpu.yaml")
MODEL_SHAPE = ["MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "2"]


@pytest.fixture(scope="module")
def tiny_model(tiny_data, tmp_path_factory):
    """A panoptic model trained for 3 iterations on the tiny synthetic dataset."""
    output_dir = tmp_path_factory.mktemp("notebook_model")
    train(make_args("panoptic", output_dir, tiny_data, "DATASETS.TEST", "()"))
    return str(output_dir / "model_final.pth")


def with_parameters(notebook, **values):
    (index,) = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    source = "\n".join(f"{name} = {value!r}" for name, value in values.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    return notebook


def _text(cell):
    return "".join(output.get("text", "") for output in cell.get("outputs", []) if output["output_type"] == "stream")


@pytest.mark.slow
def test_notebook_runs_end_to_end(tiny_model, tiny_data, tmp_path):
    root = tiny_data["root"]
    image = os.path.join(root, "val", sorted(os.listdir(os.path.join(root, "val")))[0])
    notebook = with_parameters(
        nbformat.read(NOTEBOOK, as_version=4),
        CONFIG_FILE=SYNTHETIC.format("panoptic"),
        WEIGHTS=tiny_model,
        OPTS=[*MODEL_SHAPE, "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "80"],
        IMAGE=image,
        CONFIDENCE=0.0,
        FINETUNE_IMAGES=os.path.join(root, "train"),
        FINETUNE_MASKS=os.path.join(root, "panoptic_semseg_train"),
        FINETUNE_CLASSES=os.path.join(root, "classes.yaml"),
        FINETUNE_CONFIG=SYNTHETIC.format("semantic"),
        FINETUNE_WEIGHTS=tiny_model,
        FINETUNE_ITERS=3,
        FINETUNE_OPTS=TINY,  # a tiny schedule, image size and model
        OUTPUT_DIR=str(tmp_path / "out"),
    )
    env_before = os.environ.get("OMP_WAIT_POLICY")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the kernel and train_net.py
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("OMP_WAIT_POLICY", None)

    text = "\n".join(_text(cell) for cell in notebook.cells)
    assert f"repository: {REPO_ROOT}" in text
    assert f"weights: {tiny_model}, device: cpu" in text
    for line in ("panoptic:", "instance:", "semantic:"):
        assert line in text, text
    figures = [output["data"]["image/png"] for cell in notebook.cells for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {})]
    assert len(figures) == 1
    figure = Image.open(io.BytesIO(base64.b64decode(figures[0])))
    assert figure.width > 2.5 * figure.height  # three panels side by side
    assert os.path.isfile(tmp_path / "out" / "finetune" / "model_final.pth")
