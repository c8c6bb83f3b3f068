"""Training: overfitting, checkpoints, resume, the feature cache, torchrun and the CLI."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train as train_mod
from conftest import REPO_ROOT, assert_same_training_state, tiny_train_config
from metrics import caption_metrics
from model import load_checkpoint
from train import TrainConfig, read_metrics, train

LEVER_EPOCHS = 70


def test_tiny_shapes_is_learned_to_object_f1_one(tiny_run):
    rows = read_metrics(tiny_run)
    assert len(rows) == 70
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 2
    assert max(r["object_f1"] for r in rows) == 1.0
    assert {"config.json", "vocab.json", "metrics.jsonl", "last.pt", "best.pt"} <= {p.name for p in tiny_run.iterdir()}


def test_tiny_shapes_is_learned_with_the_recipe_levers(tiny_shapes, tmp_path):
    """The shapes-cpu levers (a truncated CNN's whole map, a per-position MLP with a max, the image beside every
    word) train end to end from their own cache of maps, and learn the tiny set."""
    cfg = tiny_train_config(tiny_shapes, tmp_path, grid=1, head_hidden=0, backbone_blocks=14, local_hidden=64,
                            image_every_step=True, epochs=LEVER_EPOCHS, save_every=LEVER_EPOCHS)
    run_dir = train(cfg)
    rows = read_metrics(run_dir)
    assert max(r["object_f1"] for r in rows) == 1.0  # first reached at epoch 48 of 70 when written
    (cache,) = Path(cfg.cache_dir).glob("mobilenet_v2-b14-64px-maps-*.pt")
    assert torch.load(cache, weights_only=True)["features"].shape[1:] == (96, 4, 4)  # (C, h, w) per image
    encoder, decoder, _, ckpt = load_checkpoint(run_dir / "best.pt")
    assert decoder.image_every_step and encoder.local and ckpt["model_args"]["backbone_blocks"] == 14


def test_checkpoint_round_trip_gives_the_same_captions(tiny_run, tiny_shapes):
    raw = torch.load(tiny_run / "best.pt", map_location="cpu", weights_only=True)  # plain data only
    assert raw["metrics"]["object_f1"] == 1.0
    encoder, decoder, vocab, ckpt = load_checkpoint(tiny_run / "best.pt")
    cfg = TrainConfig(**ckpt["config"])
    split = train_mod.load_split(cfg, "train", vocab, encoder, torch.device("cpu"))
    model = train_mod.Captioner(encoder, decoder)
    captions = train_mod.caption_features(model, split, split.features, cfg, torch.device("cpu"))
    scores = caption_metrics(split.dataset, captions, cfg.data_root, "train")
    # The reloaded model reproduces the scores logged when the checkpoint was written, to the last digit.
    for key in ("object_f1", "Bleu_4", "CIDEr"):
        assert scores[key] == pytest.approx(raw["metrics"][key], abs=1e-12)


def test_resume_ends_with_the_same_weights(tiny_shapes, tmp_path):
    short = dict(epochs=2, save_every=1)
    full_dir = train(tiny_train_config(tiny_shapes, tmp_path / "a", **short))
    half_dir = train(tiny_train_config(tiny_shapes, tmp_path / "b", **{**short, "epochs": 1}))
    resumed_dir = train(train_mod.make_config(resume=str(half_dir), epochs=2))
    assert resumed_dir == half_dir
    assert_same_training_state(full_dir, resumed_dir, epoch=2)
    assert len(read_metrics(resumed_dir)) == 2


def test_a_run_folder_is_never_overwritten(tiny_shapes, tmp_path):
    cfg = tiny_train_config(tiny_shapes, tmp_path, epochs=1)
    run_dir = train(cfg)
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    assert (run_dir / "last.pt").read_bytes() == before


def test_torchrun_two_cpu_processes(tiny_shapes, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(REPO_ROOT / "train.py"), "--data-root", str(tiny_shapes), "--image-size", "64", "--epochs", "2",
           "--batch-size", "16", "--hidden-size", "64", "--embed-size", "32", "--vocab-threshold", "1",
           "--num-workers", "0", "--out-dir", str(tmp_path), "--run-name", "ddp", "--cache-dir",
           str(tmp_path / "cache"), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    encoder, decoder, vocab, ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["epoch"] == 2 and len(read_metrics(tmp_path / "ddp")) == 2  # only rank 0 logged
    # Each rank took half of the batches: 320 captions in batches of <= 16 per rank.
    steps_one_process = len(train_mod.LengthBatchSampler(
        train_mod.CocoCaptionDataset(*train_mod.find_split(tiny_shapes, "train"), vocab).lengths, 16))
    assert ckpt["step"] == 2 * (steps_one_process // 2)


def test_cli_help_lists_every_field_with_its_default():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        assert flag in done.stdout, flag
    assert "(default: 128)" in done.stdout and "(default: 'mobilenet_v2')" in done.stdout
    assert "shapes-cpu" in done.stdout
    assert "(default: None)" not in done.stdout  # argparse's "not given" marker is not a default


def test_cli_reports_a_missing_data_root_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--data-root", str(tmp_path / "nope"),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("error: no caption file for split 'train'") and "Traceback" not in done.stderr


def test_flickr8k_best_is_the_fast_preset_then_self_critical_epochs():
    """`--preset flickr8k-best` trains exactly what `--preset flickr8k` trains, then self-critical epochs: so a
    flickr8k run resumed with the best preset's self-critical settings is that preset's run, epoch for epoch."""
    import train as train_mod

    fast, best = train_mod.PRESETS["flickr8k"], train_mod.PRESETS["flickr8k-best"]
    extra = {k: v for k, v in best.items() if fast.get(k) != v}
    assert set(extra) <= set(train_mod.RESUMABLE) and extra.get("scst_epochs", 0) > 0
    assert {k: v for k, v in best.items() if k not in extra} == fast
    cfg = train_mod.make_config("flickr8k-best")
    assert cfg.epochs == fast["epochs"] and cfg.scst_epochs == best["scst_epochs"]
