"""Training correctness (issue 13): the loss per real target, --resume flags, --best-metric's direction, the best
score on resume, and collective skips and stops under torchrun."""
import dataclasses
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train as train_mod
from conftest import REPO_ROOT, tiny_train_config
from data_loader import train_captions_file
from model import load_checkpoint
from train import caption_loss, read_metrics, train
from vocabulary import load_or_build_vocab


# ---------------------------------------------------------------------------------------------------
# Item 5: the loss over real targets (words and <end>), averaged over tokens
# ---------------------------------------------------------------------------------------------------
def test_caption_loss_leaves_out_the_start_target_and_averages_over_tokens():
    torch.manual_seed(0)
    B, T, V = 3, 5, 7
    scores = torch.randn(B, T, V)  # (B, T, V)
    captions = torch.randint(0, V, (B, T))  # (B, T)
    by_hand = -torch.log_softmax(scores, -1).gather(2, captions.unsqueeze(-1)).squeeze(-1)[:, 1:].mean()  # (B, T-1)
    assert caption_loss(scores, captions).item() == pytest.approx(by_hand.item(), rel=1e-6)
    changed = scores.clone()
    changed[:, 0] = 1e4 * torch.randn(B, V)  # position 0 predicts <start>: whatever a decoder puts there is ignored
    assert caption_loss(changed, captions).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert train_mod.real_targets(captions) == B * (T - 1)


def per_token_loss_of_split(run_dir, split_name):
    """The loss per real target over a whole split, computed here from scratch: summed cross-entropy of every
    word and <end>, divided by how many there are. Also returns how many caption lengths the split holds."""
    encoder, decoder, vocab, ckpt = load_checkpoint(run_dir / "last.pt")
    cfg = train_mod.TrainConfig(**ckpt["config"])
    split = train_mod.load_split(cfg, split_name, vocab, encoder, torch.device("cpu"))
    total, count = 0.0, 0
    with torch.no_grad():
        for length in np.unique(split.dataset.lengths[split.usable]):
            index = torch.as_tensor(split.usable[split.dataset.lengths[split.usable] == length])  # (N,)
            captions, features = split.batch(index)  # (N, L), (N, ...)
            scores = decoder(encoder.embed(features), captions)  # (N, L, V)
            total += F.cross_entropy(scores[:, 1:].reshape(-1, scores.size(-1)), captions[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += captions[:, 1:].numel()
    return total / count, len(np.unique(split.dataset.lengths[split.usable]))


def test_train_and_val_loss_are_per_real_token_means_over_the_split(tiny_shapes, tmp_path):
    """With lr 0 the weights never move, so the epoch's training loss and the validation loss (the tiny config
    validates on the training split) must both equal the per-token loss of the split computed from scratch.
    Captions of several lengths make a per-caption or per-batch mean differ from it."""
    run_dir = train(tiny_train_config(tiny_shapes, tmp_path, epochs=1, lr=0.0, batch_size=32))
    expected, n_lengths = per_token_loss_of_split(run_dir, "train")
    assert n_lengths > 2
    (row,) = read_metrics(run_dir)
    assert row["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert row["val_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert row["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert row["train_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# Item 2: --best-metric knows its direction, and an unknown name is refused at start-up
# ---------------------------------------------------------------------------------------------------
REAL_VALIDATE = train_mod.validate


def scripted(monkeypatch, metric, values):
    """Make validation report `values` (one per epoch, in order) for `metric`; every other score is real."""
    real, calls = REAL_VALIDATE, []

    def validate(*args, **kwargs):
        metrics, candidates = real(*args, **kwargs)
        calls.append(1)
        return {**metrics, metric: values[len(calls) - 1]}, candidates

    monkeypatch.setattr(train_mod, "validate", validate)


@pytest.mark.parametrize("metric, values, pick", [("val_loss", [3.0, 1.0, 2.0], min), ("CIDEr", [1.0, 3.0, 2.0], max)])
def test_best_pt_is_the_best_epoch_by_the_metric_in_its_direction(tiny_shapes, tmp_path, monkeypatch, metric,
                                                                  values, pick):
    scripted(monkeypatch, metric, values)
    run_dir = train(tiny_train_config(tiny_shapes, tmp_path, epochs=3, best_metric=metric))
    rows = read_metrics(run_dir)
    assert [r[metric] for r in rows] == values
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == pick(rows, key=lambda r: r[metric])["epoch"] == 2
    assert best["metrics"] == rows[1] and best["best_score"] == values[1]


def test_train_loss_as_best_metric_keeps_the_lowest(tiny_shapes, tmp_path):
    run_dir = train(tiny_train_config(tiny_shapes, tmp_path, epochs=2, best_metric="train_loss"))
    rows = read_metrics(run_dir)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it falls, so the lowest is not epoch 1
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == min(rows, key=lambda r: r["train_loss"])["epoch"]


def test_an_unknown_best_metric_is_refused_at_start_up_with_the_valid_names(tiny_shapes, tmp_path, capsys):
    cfg = tiny_train_config(tiny_shapes, tmp_path, best_metric="object_F1")
    assert train_mod.main(cli_flags(cfg)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --best-metric 'object_F1' is not a score this run logs")
    for name in ("val_loss", "val_ppl", "train_loss", "Bleu_4", "CIDEr", "object_f1", "object_exact"):
        assert name in err
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "cache").exists()  # nothing was started
    # object F1 exists on shapes data only: elsewhere it is not offered.
    other = train_mod.TrainConfig(data_root=str(tmp_path / "coco"), best_metric="object_f1")
    assert "object_f1" not in train_mod.best_metric_names(other) and "CIDEr" in train_mod.best_metric_names(other)
    with pytest.raises(ValueError, match="'object_f1' is not a score"):
        train_mod.check_best_metric(other)


def cli_flags(cfg):
    """A TrainConfig as train.py flags."""
    flags = []
    for name, value in dataclasses.asdict(cfg).items():
        if name == "resume" or value == "":
            continue
        flag = "--" + name.replace("_", "-")
        flags += [flag if value else "--no-" + flag[2:]] if isinstance(value, bool) else [flag, str(value)]
    return flags


# ---------------------------------------------------------------------------------------------------
# Items 1 and 3: a flag given on --resume is the flag used; best.pt is never replaced by a worse model
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_epoch_run(tiny_shapes, tmp_path_factory):
    """A finished 1-epoch run (lr 5e-3, batch 64, all validation images) to resume in copies."""
    return train(tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("runs"), epochs=1, save_every=1))


@pytest.mark.parametrize("how", ["cli", "python"])
def test_a_flag_given_on_resume_is_the_flag_used(one_epoch_run, tmp_path, monkeypatch, how):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    scored, batch_sizes, real_validate, real_step = [], [], train_mod.validate, train_mod.caption_loss

    def validate(*args, **kwargs):
        metrics, candidates = real_validate(*args, **kwargs)
        scored.append(len(candidates))
        return metrics, candidates

    def caption_loss(scores, captions):
        if torch.is_grad_enabled():
            batch_sizes.append(len(captions))
        return real_step(scores, captions)

    monkeypatch.setattr(train_mod, "validate", validate)
    monkeypatch.setattr(train_mod, "caption_loss", caption_loss)
    given = dict(epochs=2, lr=1e-5, batch_size=16, val_images=7, weight_decay=0.01, log_every=3)
    if how == "cli":
        argv = ["--resume", str(run_dir)] + [a for k, v in given.items() for a in ("--" + k.replace("_", "-"), str(v))]
        assert train_mod.main(argv) == 0
    else:
        train(train_mod.make_config("shapes-cpu", resume=str(run_dir), **given, image_size=None))
    assert scored == [7] and max(batch_sizes) == 16
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 2
    for group in last["optimizer"]["param_groups"]:
        assert group["lr"] == 1e-5 and group["weight_decay"] == 0.01
    saved = json.loads((run_dir / "config.json").read_text())
    for key, value in given.items():
        assert last["config"][key] == value and saved[key] == value, key
    assert saved["image_size"] == last["config"]["image_size"] == 64  # the run's own, not the preset's
    # Steps of batch 16 over the 320 training captions, not the saved batch 64's.
    steps = len(train_mod.LengthBatchSampler(
        train_mod.CocoCaptionDataset(*train_mod.find_split(saved["data_root"], "train"),
                                     load_checkpoint(run_dir / "last.pt")[2]).lengths, 16))
    assert last["step"] - torch.load(one_epoch_run / "last.pt", weights_only=True)["step"] == steps


@pytest.mark.parametrize("how", ["cli", "python"])
def test_a_flag_that_changes_the_model_or_data_is_refused_on_resume(one_epoch_run, tmp_path, capsys, how):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    before = (run_dir / "last.pt").read_bytes()
    if how == "cli":
        assert train_mod.main(["--resume", str(run_dir), "--epochs", "3", "--hidden-size", "32"]) == 1
        message = capsys.readouterr().err.strip()
        assert message.count("\n") == 0 and message.startswith("error: ")
    else:
        with pytest.raises(ValueError) as e:
            train(train_mod.make_config(resume=str(run_dir), epochs=3, hidden_size=32))
        message = str(e.value)
    assert f"cannot resume {run_dir} with --hidden-size 32 (the run's: 128)" in message
    assert (run_dir / "last.pt").read_bytes() == before
    # A bare TrainConfig holds the defaults, so its model settings differ from the run's: named, not applied.
    with pytest.raises(ValueError, match="--image-size 128 \\(the run's: 64\\)"):
        train(train_mod.TrainConfig(resume=str(run_dir), epochs=3))
    assert (run_dir / "last.pt").read_bytes() == before


def test_resume_keeps_best_pt_when_last_pt_is_older(tiny_shapes, tmp_path, monkeypatch):
    """save_every 2: last.pt at epoch 2, best.pt at epoch 3 (CIDEr 3.0, scripted), then a crash. The resumed
    run continues from best.pt, the newer state, so epoch 3 is not trained again, and the later epochs, which
    score worse (2.5, 2.7), never replace best.pt; its metrics row stays, and the log has one row per epoch."""
    real_epoch = train_mod.train_one_epoch

    class Killed(Exception):
        pass

    def crash_in_epoch_4(*args, **kwargs):
        if args[5] == 3:  # the epoch index
            raise Killed()
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_one_epoch", crash_in_epoch_4)
    scripted(monkeypatch, "CIDEr", [1.0, 2.0, 3.0])
    cfg = tiny_train_config(tiny_shapes, tmp_path, epochs=5, save_every=2, best_metric="CIDEr")
    with pytest.raises(Killed):
        train(cfg)
    run_dir = tmp_path / "tiny"
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2
    best_before = torch.load(run_dir / "best.pt", weights_only=True)
    assert best_before["epoch"] == 3
    monkeypatch.setattr(train_mod, "train_one_epoch", real_epoch)
    scripted(monkeypatch, "CIDEr", [2.5, 2.7, 2.6])  # the third only if epoch 3 were trained again
    assert train_mod.main(["--resume", str(run_dir)]) == 0
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == 3 and best["metrics"]["CIDEr"] == 3.0
    for part in ("encoder", "decoder"):
        assert all(torch.equal(t, best_before[part][k]) for k, t in best[part].items())
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5] and [r["CIDEr"] for r in rows] == [1.0, 2.0, 3.0, 2.5, 2.7]
    assert rows[2] == best["metrics"]  # the log still shows where best.pt came from
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 5 and last["step"] == best_before["step"] * 5 // 3  # epochs 4 and 5 only, after best.pt


# ---------------------------------------------------------------------------------------------------
# Every phase's settings are checked at start-up; --init-from's starting weights are the best to beat
# ---------------------------------------------------------------------------------------------------
REFUSED_AT_START_UP = [
    (dict(scst_baseline="greed"), "--scst-baseline must be one of mean, greedy, got 'greed'"),
    (dict(scst_samples=1), "--scst-baseline mean needs --scst-samples 2 or more"),
    (dict(scst_samples=0), "--scst-samples must be at least 1, got 0"),
    (dict(train_backbone=True), "need a frozen backbone"),
    (dict(best_metric="train_loss"), "--best-metric train_loss cannot pick best.pt across --scst-epochs"),
    (dict(best_metric="train_ppl"), "--best-metric train_ppl cannot pick best.pt across --scst-epochs"),
]


@pytest.mark.parametrize("setting, message", REFUSED_AT_START_UP, ids=lambda v: str(v)[:30])
def test_self_critical_settings_are_refused_before_the_cross_entropy_epochs(tiny_shapes, tmp_path, capsys, setting,
                                                                           message):
    """Each of these used to train every cross-entropy epoch first, then fail when the self-critical phase began
    (train_ppl with a bare KeyError, losing that epoch's weights; train_loss silently preferred the first
    self-critical epoch, whose loss is no cross-entropy)."""
    cfg = tiny_train_config(tiny_shapes, tmp_path, **{**dict(epochs=1, scst_epochs=1, scst_samples=3), **setting})
    assert train_mod.main(cli_flags(cfg)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and message in err
    assert not (tmp_path / "tiny").exists() and not (tmp_path / "cache").exists()  # nothing was started


def test_self_critical_settings_are_refused_on_resume_before_any_work(one_epoch_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    before = {f: (run_dir / f).read_bytes() for f in ("last.pt", "best.pt", "metrics.jsonl", "config.json")}
    for given in (dict(scst_epochs=1, scst_samples=1), dict(scst_epochs=1, best_metric="train_ppl")):
        with pytest.raises(ValueError, match="--scst-samples 2 or more|cannot pick best.pt across"):
            train(train_mod.make_config(resume=str(run_dir), epochs=1, **given))
    assert {f: (run_dir / f).read_bytes() for f in before} == before


def test_other_settings_of_every_phase_are_checked_at_start_up(tiny_shapes, tmp_path):
    checks = [(dict(batch_size=0), "--batch-size must be at least 1"), (dict(max_len=0), "--max-len must be"),
              (dict(decoder_dropout=1.0), "--decoder-dropout must be in [0, 1)"),
              (dict(attention_reg=0.1), "--attention-reg 0.1 needs --decoder attention"),
              (dict(train_backbone=True), "--feature-norm needs a frozen backbone"),
              (dict(scst_epochs=1, scst_samples=3, scst_max_len=-1), "--scst-max-len must be")]
    for setting, message in checks:
        with pytest.raises(ValueError, match=re.escape(message)):
            train(tiny_train_config(tiny_shapes, tmp_path, **setting))
    assert not (tmp_path / "tiny").exists()
    # the self-critical settings matter only with self-critical epochs
    train_mod.check_settings(tiny_train_config(tiny_shapes, tmp_path, scst_samples=1, best_metric="train_ppl"))


def test_a_score_an_epoch_did_not_log_never_counts_as_better():
    assert not train_mod.improves("train_ppl", None, 3.0) and not train_mod.improves("train_ppl", None, None)
    assert train_mod.improves("val_loss", 2.0, None) and train_mod.improves("val_loss", 2.0, 3.0)


@pytest.mark.parametrize("later, best_epoch", [(2.0, 0), (0.5, 1)])
def test_init_from_scores_its_start_so_best_pt_is_never_worse(one_epoch_run, tmp_path, monkeypatch, capsys, later,
                                                              best_epoch):
    """The starting weights are validated as epoch 0 and written as best.pt: an epoch that scores worse (val_loss
    2.0 against 1.0, scripted) leaves best.pt the starting weights; a better one replaces it."""
    start = torch.load(one_epoch_run / "best.pt", weights_only=True)
    scripted(monkeypatch, "val_loss", [1.0, later])
    run_dir = train(tiny_train_config(start["config"]["data_root"], tmp_path, epochs=1, best_metric="val_loss",
                                      init_from=str(one_epoch_run / "best.pt")))
    assert "epoch 0 (the --init-from weights)" in capsys.readouterr().out
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch and best["best_score"] == min(1.0, later)
    assert best["metrics"]["val_loss"] == min(1.0, later)
    same = all(torch.equal(t, best["decoder"][k]) for k, t in start["decoder"].items())
    assert same == (best_epoch == 0)
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1]  # epoch 0 trained nothing: not a log row


def test_resume_takes_another_spelling_of_the_data_root(one_epoch_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(one_epoch_run, run_dir)
    root = json.loads((run_dir / "config.json").read_text())["data_root"]
    monkeypatch.chdir(Path(root).parent)
    for spelling in (root + "/", str(Path(root).name), "./" + Path(root).name + "/"):
        cfg = train_mod.make_config(resume=str(run_dir), data_root=spelling, epochs=2)
        assert cfg.data_root == root and cfg.epochs == 2
    with pytest.raises(ValueError, match="cannot resume .* with --data-root"):
        train_mod.make_config(resume=str(run_dir), data_root=str(tmp_path))


# ---------------------------------------------------------------------------------------------------
# Item 6: under torchrun, a skipped batch and a bad loss are decided by all processes together
# ---------------------------------------------------------------------------------------------------
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(fault, at, flags, cwd, timeout=240):
    """Two gloo CPU processes (RANK 0 and 1, as torchrun starts them) running train.py's main, with one fault
    in process 1 only (tests/ddp_fault_worker.py). Without torchrun's agent nobody ends a process that waits
    forever, so a hang shows, as a timeout. Returns [(exit code, output)] per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    logs = [Path(cwd) / f"rank{r}.log" for r in (0, 1)]
    procs = [subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "ddp_fault_worker.py"), fault, str(at),
                               *flags], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, cwd=cwd, text=True,
                              stdout=log.open("w"), stderr=subprocess.STDOUT) for r, log in zip((0, 1), logs)]
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:  # where each process was: a hang, or a machine too busy to finish in time
        tails = [log.read_text().replace("\r", "\n").strip().splitlines()[-3:] for log in logs]
        pytest.fail(f"the processes hung ({fault} in process 1 only) or ran past {timeout} s; last lines: {tails}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(code, log.read_text()) for code, log in zip(codes, logs)]


def ddp_flags(tiny_shapes, tmp_path, *extra):
    return ["--data-root", str(tiny_shapes), "--image-size", "64", "--batch-size", "16", "--hidden-size", "32",
            "--embed-size", "16", "--vocab-threshold", "1", "--num-workers", "0", "--out-dir", str(tmp_path),
            "--run-name", "ddp", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--val-images", "4",
            "--log-every", "1000", *extra]


def steps_per_process(tiny_shapes, tmp_path):
    """Training steps per epoch in each of two processes: half of the batches of 16 over the training captions."""
    vocab = load_or_build_vocab([train_captions_file(tiny_shapes)], 1, tmp_path / "vocab.json")
    lengths = train_mod.CocoCaptionDataset(*train_mod.find_split(tiny_shapes, "train"), vocab).lengths
    return len(train_mod.LengthBatchSampler(lengths, 16)) // 2


def test_a_batch_that_fails_in_one_process_is_skipped_by_all(tiny_shapes, tmp_path):
    """Fine-tuning the CNN, process 1's second batch has no loadable image: both processes skip that step."""
    flags = ddp_flags(tiny_shapes, tmp_path, "--train-backbone", "--backbone-blocks", "2", "--epochs", "1")
    results = run_two_processes("skip", 2, flags, tmp_path)
    assert [code for code, _ in results] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert last["step"] == steps_per_process(tiny_shapes, tmp_path) - 1  # one step fewer, in both processes
    assert "skipped 1 batch(es) whose images all failed to load" in results[0][1]


def test_a_bad_loss_in_one_process_stops_all_before_a_checkpoint(tiny_shapes, tmp_path):
    """Process 1's loss is NaN at the last step of epoch 2, so process 0's own losses of that epoch are all
    finite, but its weights are spoilt (DDP averages the gradients). Both must stop, and last.pt stay epoch 1."""
    per_epoch = steps_per_process(tiny_shapes, tmp_path)
    flags = ddp_flags(tiny_shapes, tmp_path, "--epochs", "3")
    results = run_two_processes("nan", 2 * per_epoch, flags, tmp_path)
    assert [code for code, _ in results] == [1, 1], results[0][1][-2000:] + results[1][1][-2000:]
    step = 2 * per_epoch
    assert f"error: loss became nan at epoch 2, step {step};" in results[1][1]
    assert f"error: loss became NaN or infinite in another process at epoch 2, step {step};" in results[0][1]
    assert all("process group still up at exit: False" in output for _, output in results)  # torn down, not left
    last = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and all(torch.isfinite(t).all() for t in last["decoder"].values())
    assert [r["epoch"] for r in read_metrics(tmp_path / "ddp")] == [1]
