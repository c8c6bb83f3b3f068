"""`make photos` end to end on a tiny Flickr8k folder given as DATA_ROOT (nothing downloaded), with the run shrunk
through TRAIN_ARGS; then again, reusing the finished run. And, in a second, the arguments the recipe passes on,
for paths that hold spaces."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from test_data_sources import make_flickr, write_images

VENV = Path(sys.executable).parent.parent  # the venv running the tests: make neither creates nor reinstalls it


def make_photos(tmp_path, **variables):
    tiny = (f"--epochs 1 --scst-epochs 1 --scst-samples 2 --image-size 64 --embed-size 16 --hidden-size 32 "
            f"--vocab-threshold 1 --batch-size 16 --num-workers 0 --cache-dir {tmp_path / 'cache'}")
    settings = dict(VENV=str(VENV), PYTHON=sys.executable, DATA_ROOT=str(tmp_path / "flickr8k"),
                    OUT_DIR=str(tmp_path / "runs"), PHOTOS_OUT=str(tmp_path / "outputs"), TRAIN_ARGS=tiny,
                    EVAL_ARGS="--backend python --num-workers 0", **variables)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHOW_TELL_CONVERTED_DIR": str(tmp_path / "converted"),
           "MPLBACKEND": "Agg"}
    return subprocess.run(["make", "--no-print-directory", "photos", *(f"{k}={v}" for k, v in settings.items())],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_photos_trains_scores_captions_and_writes_the_card(tmp_path):
    make_flickr(tmp_path / "flickr8k", size=(64, 48))
    write_images(tmp_path / "my holiday", ["beach.jpg", "hill.jpg"], size=(80, 60))
    done = make_photos(tmp_path, PHOTOS=str(tmp_path / "my holiday"))
    out = done.stdout
    assert done.returncode == 0, (out + done.stderr)[-3000:]
    assert "already holds Flickr8k; nothing to download" in out
    run = tmp_path / "runs" / "photos-flickr8k-best"
    config = json.loads((run / "config.json").read_text())
    assert config["scst_epochs"] == 1 and config["feature_norm"] and config["data_root"] == str(tmp_path / "flickr8k")
    # Captions of the repository's photos and of PHOTOS, one line each.
    captioned = [Path(line.split("\t")[0]).name for line in out.splitlines() if "\t" in line]
    photos = sorted(p.name for p in (REPO_ROOT / "images").glob("*.jpg"))
    assert captioned == photos + ["beach.jpg", "hill.jpg"]
    assert "trained on Flickr8k (6 train images)" in done.stderr  # caption.py's line
    # The figures, the card beside best.pt holding the val scores, the time taken.
    for figure in ("photos_images.png", "photos_my holiday.png"):  # a folder name with a space
        assert (tmp_path / "outputs" / figure).stat().st_size > 1000
    assert f"== model card: {run}/MODEL_CARD.md" in out and (run / "best.pt").is_file()
    card = (run / "MODEL_CARD.md").read_text()
    record = json.loads((run / "scores_val_beam3.json").read_text())
    row = next(line for line in card.splitlines() if line.startswith("| val | 3 | 2 |"))
    assert f"| {record['scores']['CIDEr']:.3f} |" in row and f"| {record['scores']['Bleu_4']:.3f} |" in row
    assert "| train | 6 | 30 |" in card and "whole run, feature caching included" in card
    assert re.search(r"^== make photos: done in \d+ min \d\d s$", out, flags=re.M)

    # Again: the finished run is reused, its val scores too; the captions are the same.
    again = make_photos(tmp_path, PHOTOS=str(tmp_path / "my holiday"))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert f"== {run} is a finished run: training skipped" in again.stdout
    assert "the val split is already scored" in again.stdout
    assert [l for l in again.stdout.splitlines() if "\t" in l] == [l for l in out.splitlines() if "\t" in l]


# A stand-in for the venv's python: it writes its arguments, one JSON list a line, to calls.jsonl beside it, and
# answers "no finished run" to the model_card check, so that every step of the recipe runs.
FAKE_PYTHON = """#!{python}
import json, sys
from pathlib import Path
with open(Path(sys.argv[0]).parent / "calls.jsonl", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(1 if "model_card" in " ".join(sys.argv[1:3]) else 0)
"""


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("photos", ["{tmp}/My Photos", "~/My Photos", ""], ids=["spaces", "home", "none"])
def test_make_photos_passes_every_path_whole(tmp_path, photos):
    """Paths with spaces (two in a row, too) reach each script as one argument; PHOTOS is one folder."""
    fake_bin = tmp_path / "fake venv" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "python").write_text(FAKE_PYTHON.format(python=sys.executable))
    (fake_bin / "python").chmod(0o755)
    data, out, figures = tmp_path / "Flickr8k  (copy)", tmp_path / "my runs", tmp_path / "my outputs"
    settings = dict(VENV=str(fake_bin.parent), DATA_ROOT=str(data), OUT_DIR=str(out), PHOTOS_OUT=str(figures),
                    PHOTOS=photos.format(tmp=tmp_path))
    # -o venv -o weights: the fake venv is neither created nor given weights
    done = subprocess.run(["make", "--no-print-directory", "-o", "venv", "-o", "weights", "photos",
                           *(f"{k}={v}" for k, v in settings.items())], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [json.loads(line) for line in (fake_bin / "calls.jsonl").read_text().splitlines()]
    best = f"{out}/photos-flickr8k-best/best.pt"
    folders = ["images", str(tmp_path / "My Photos")] if photos else ["images"]
    assert calls[0] == ["downloads.py", "flickr8k", "--dest", str(data)]
    assert calls[2] == ["train.py", "--preset", "flickr8k-best", "--data-root", str(data), "--out-dir", str(out),
                        "--run-name", "photos-flickr8k-best"]
    assert calls[3] == ["evaluate.py", "--checkpoint", best, "--split", "val", "--beam", "3"]
    assert calls[4] == ["caption.py", "--checkpoint", best, "--beam", "3", "--num-workers", "0", *folders]
    assert calls[5][0] == "-c" and calls[5][2:] == [best, str(figures), *folders]
    assert len(calls) == 6


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_model_trains_the_best_recipe_exports_scores_and_writes_the_card(tmp_path):
    """`make model DATA_ROOT=...`: the flickr8k-best recipe into MODEL_RUN, then the export, the development split
    greedy and with beam 3 on the exported file, and the card from those scores, every path whole."""
    fake_bin = tmp_path / "fake venv" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "python").write_text(FAKE_PYTHON.format(python=sys.executable))
    (fake_bin / "python").chmod(0o755)
    data, run = tmp_path / "Flickr8k  (copy)", tmp_path / "my runs" / "bundle"
    done = subprocess.run(["make", "--no-print-directory", "-o", "venv", "-o", "weights", "model",
                           f"VENV={fake_bin.parent}", f"DATA_ROOT={data}", f"MODEL_RUN={run}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    calls = [json.loads(line) for line in (fake_bin / "calls.jsonl").read_text().splitlines()]
    assert calls[1] == ["train.py", "--preset", "flickr8k-best", "--data-root", str(data), "--out-dir",
                        str(run.parent), "--run-name", "bundle"]
    assert calls[2] == ["bundle.py", "export", f"{run}/best.pt", "models/flickr8k.pt"]
    for beam, call in zip((1, 3), calls[3:5]):
        assert call == ["evaluate.py", "--checkpoint", "models/flickr8k.pt", "--data-root", str(data), "--split",
                        "val", "--beam", str(beam), "--out", f"{run}/bundled"]
    assert calls[5] == ["bundle.py", "card", "models/flickr8k.pt", "--scores", f"{run}/bundled", "--run", str(run)]
    assert len(calls) == 6
    refused = subprocess.run(["make", "--no-print-directory", "-o", "venv", "-o", "weights", "model",
                              f"VENV={fake_bin.parent}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "make model needs DATA_ROOT" in refused.stdout + refused.stderr
