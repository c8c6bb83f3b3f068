"""The notebooks: committed without outputs, one `parameters` cell first, and they run top to bottom.

Each notebook is executed with papermill in smoke mode: its parameters cell is overridden with the tiny shapes
set, 64 px images, small sizes, one or two epochs, and output folders under tmp_path (as recommenders and botorch
test theirs). The checks look at what the run produced: tables, figures, printed shapes, a loadable checkpoint.
"""
import re

import nbformat
import pytest

from conftest import REPO_ROOT
from shapes_dataset import SPLITS

NOTEBOOKS = ("0_Dataset", "1_Preliminaries", "2_Training")
KERNEL = "python3"  # jupyter_client starts it with the interpreter running the tests (the venv's)


def committed_notebooks():
    return sorted(REPO_ROOT.glob("*.ipynb"))


def run_notebook(name, tmp_path, **parameters):
    """Execute REPO_ROOT/name.ipynb with these parameters in the repository root; return the executed notebook.

    A failing cell (an assert in the notebook included) raises PapermillExecutionError naming it.
    """
    import papermill as pm

    out = tmp_path / f"{name}.out.ipynb"
    pm.execute_notebook(str(REPO_ROOT / f"{name}.ipynb"), str(out), parameters=parameters, kernel_name=KERNEL,
                        cwd=str(REPO_ROOT), progress_bar=False)
    return nbformat.read(out, as_version=4)


def outputs(nb):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def text(nb):
    """Everything the notebook printed or displayed as text (stream, plain text, Markdown tables)."""
    parts = []
    for o in outputs(nb):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result"):
            parts.append(o.data.get("text/markdown", o.data.get("text/plain", "")))
    return "\n".join(parts)


def n_images(nb):
    return sum("image/png" in o.get("data", {}) for o in outputs(nb))


def table_rows(nb):
    """First cells of the rows of every Markdown table the notebook displayed."""
    return [m.group(1) for m in re.finditer(r"^\| ([^|\n]+?) \|", text(nb), flags=re.M)]


# ---------------------------------------------------------------------------------------------------
# The committed files
# ---------------------------------------------------------------------------------------------------
def test_the_notebooks_are_committed():
    names = {p.stem for p in committed_notebooks()}
    assert set(NOTEBOOKS) <= names, f"missing: {set(NOTEBOOKS) - names}"


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_committed_notebook_is_stripped(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs or execution counts; run nbstripout {path.name}"


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: p.name)
def test_one_parameters_cell_first_with_every_knob_commented(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters', want exactly 1"
    assert code[0] is tagged[0], f"{path.name}: the parameters cell must be the first code cell"
    knobs = [line for line in tagged[0].source.splitlines() if re.match(r"^[A-Z_][A-Z0-9_]* *=", line)]
    assert knobs, f"{path.name}: the parameters cell sets no UPPER_CASE knob"
    uncommented = [line for line in knobs if "#" not in line]
    assert not uncommented, f"{path.name}: knobs without a comment: {uncommented}"


# ---------------------------------------------------------------------------------------------------
# Running them (smoke mode)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dataset_notebook_on_shapes(tiny_shapes, tmp_path):
    nb = run_notebook("0_Dataset", tmp_path, DATA_ROOT=str(tiny_shapes), N_SAMPLES=4)
    rows = table_rows(nb)
    assert set(SPLITS) <= set(rows), f"the split table names {rows}, want every split {SPLITS}"
    assert n_images(nb) >= 4  # one image, the sample grid, the length histogram, the word chart
    assert "held out of train and val" in text(nb)  # the shapes ground-truth section ran


@pytest.mark.slow
def test_dataset_notebook_on_real_coco(coco_mini, tmp_path):
    nb = run_notebook("0_Dataset", tmp_path, DATA_ROOT=str(coco_mini), N_SAMPLES=4)
    rows = table_rows(nb)
    assert {"train", "val"} <= set(rows) and not {"test", "test_novel"} & set(rows), rows
    assert n_images(nb) >= 4
    assert "not a shapes dataset" in text(nb)


@pytest.mark.slow
def test_preliminaries_notebook(tiny_shapes, tmp_path):
    nb = run_notebook("1_Preliminaries", tmp_path, DATA_ROOT=str(tiny_shapes), VOCAB_FILE=str(tmp_path / "vocab.json"),
                      IMAGE_SIZE=64, BATCH_SIZE=8, N_BATCHES=3, EMBED_SIZE=32, HIDDEN_SIZE=64)
    out = text(nb)
    # The printed shapes are the ones the notebook's asserts checked.
    assert re.search(r"batch 0: images \(8, 3, 64, 64\)  captions \(8, \d+\)", out), out
    assert re.search(r"features \(8, 32\) \+ captions \(8, (\d+)\) -> outputs \(8, \1, \d+\)", out), out
    assert "sampled ids [" in out
    assert (tmp_path / "vocab.json").is_file()  # VOCAB_FILE was honoured: nothing written beside the data
    assert n_images(nb) >= 2  # the transforms figure and the architecture diagram


@pytest.mark.slow
def test_training_notebook(tiny_shapes, tmp_path):
    from model import load_checkpoint
    from train import read_metrics

    nb = run_notebook("2_Training", tmp_path, DATA_ROOT=str(tiny_shapes), EPOCHS=2, BATCH_SIZE=64, LR=3e-3,
                      VOCAB_THRESHOLD=1, IMAGE_SIZE=64, EMBED_SIZE=32, HIDDEN_SIZE=64, NUM_WORKERS=0,
                      RUN_NAME="smoke", OUT_DIR=str(tmp_path / "runs"), CACHE_DIR=str(tmp_path / "cache"), N_SHOW=4)
    run_dir = tmp_path / "runs" / "smoke"
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2]
    encoder, decoder, vocab, ckpt = load_checkpoint(run_dir / "best.pt")
    assert ckpt["config"]["embed_size"] == 32 and ckpt["model_args"]["image_size"] == 64  # the parameters arrived
    assert any((tmp_path / "cache").iterdir())  # the feature cache went where CACHE_DIR said
    assert n_images(nb) >= 2  # the training curves and the captioned validation images
    assert "best.pt: epoch" in text(nb)  # the captioning cell ran on the checkpoint


# ---------------------------------------------------------------------------------------------------
# What `make demo` prints at the end
# ---------------------------------------------------------------------------------------------------
def test_demo_summary_prints_the_inference_scores_as_a_table(tmp_path):
    import json

    from visualize import demo_summary

    (tmp_path / "out").mkdir()
    summary = {"checkpoint": "runs/x/best.pt", "split": "test", "n_images": 500,
               "scores": {"greedy": {"Bleu_4": 0.5, "CIDEr": 2.961}, "beam 3": {"Bleu_4": 0.504, "CIDEr": 2.967}},
               "missing": {"SPICE": "not computed"}}
    (tmp_path / "out" / "inference_scores.json").write_text(json.dumps(summary))
    lines = demo_summary(tmp_path / "out", tmp_path / "runs").splitlines()
    assert re.search(r"greedy +beam 3$", next(l for l in lines if "greedy" in l))
    assert re.search(r"CIDEr +2\.961 +2\.967$", next(l for l in lines if "CIDEr" in l))
    assert any("SPICE: not computed" in l for l in lines)
    assert "captioned images:  images/figures/demo_captions.png" in lines  # the shapes demo's README figure
    # On a user's dataset (make demo DATA_ROOT=...) the figures go to outputs/ only, and the summary says so.
    shown = ("outputs/demo_captions.png", "outputs/own_images.png")
    text_out = demo_summary(tmp_path / "out", tmp_path / "runs", figures=shown)
    assert "captioned images:  outputs/demo_captions.png, outputs/own_images.png" in text_out
    assert "images/figures" not in text_out


def test_demo_summary_falls_back_to_the_newest_runs_last_epoch(tmp_path):
    import json

    from visualize import demo_summary

    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    rows = [{"epoch": 1, "val_loss": 2.0, "CIDEr": 0.5}, {"epoch": 2, "val_loss": 1.5, "CIDEr": 0.75}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text_out = demo_summary(tmp_path / "outputs", tmp_path / "runs")
    assert "last epoch of r1" in text_out
    assert re.search(r"CIDEr +0\.750", text_out) and "0.500" not in text_out


# ---------------------------------------------------------------------------------------------------
# Real COCO with one parameter changed (issue 13, item 10)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_notebooks_on_real_coco_take_their_defaults_from_the_data_root(coco_mini, tmp_path):
    """DATA_ROOT alone points the notebooks at COCO (plus the smoke sizes, and MobileNetV2 since ResNet-50's
    weights cannot be downloaded here): PRESET None becomes the coco preset, so best.pt follows CIDEr (shapes'
    object F1 does not exist there), and 3_Inference scores val (COCO's test split has no public captions).
    0_Dataset on coco-mini is test_dataset_notebook_on_real_coco above."""
    import json

    from model import load_checkpoint
    from train import read_metrics

    smoke = dict(DATA_ROOT=str(coco_mini), IMAGE_SIZE=64, BACKBONE="mobilenet_v2", EMBED_SIZE=32, HIDDEN_SIZE=64)
    nb = run_notebook("1_Preliminaries", tmp_path, **smoke, VOCAB_FILE=str(tmp_path / "vocab.json"), BATCH_SIZE=8,
                      N_BATCHES=2)
    assert "preset 'coco'" in text(nb)
    run_notebook("2_Training", tmp_path, **smoke, EPOCHS=1, BATCH_SIZE=64, NUM_WORKERS=0, VAL_IMAGES=8,
                 RUN_NAME="coco", OUT_DIR=str(tmp_path / "runs"), CACHE_DIR=str(tmp_path / "cache"), N_SHOW=2)
    run_dir = tmp_path / "runs" / "coco"
    _, _, _, ckpt = load_checkpoint(run_dir / "best.pt")
    assert ckpt["config"]["best_metric"] == "CIDEr" and ckpt["config"]["data_root"] == str(coco_mini)
    (row,) = read_metrics(run_dir)
    assert "CIDEr" in row and "object_f1" not in row
    out_dir = tmp_path / "outputs"
    nb = run_notebook("3_Inference", tmp_path, CHECKPOINT=str(run_dir / "best.pt"), N_IMAGES=2, BEAM=2,
                      OUTPUT_DIR=str(out_dir), METRICS_BACKEND="python", BATCH_SIZE=64)
    summary = json.loads((out_dir / "inference_scores.json").read_text())
    assert summary["split"] == "val" and summary["n_images"] == 159  # every val image of coco-mini
    assert summary["scores"]["greedy"]["CIDEr"] >= 0 and "object_f1" not in summary["scores"]["greedy"]
    assert "chosen on these val images" in text(nb)  # the model was picked on the images it is scored on
