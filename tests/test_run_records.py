"""What a run records about itself is what happened: whether it finished (from its checkpoints, not its log)."""
import json
import re
import shlex

import pytest

import model_card
import train as train_mod
from conftest import tiny_train_config


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no handler catches it."""


def kill_before(monkeypatch, name, epoch):
    """Make train.py die just before it writes `name` (last.pt, best.pt) for `epoch`."""
    save = train_mod.atomic_save

    def dying_save(obj, path):
        if path.name == name and obj["epoch"] == epoch:
            raise Killed
        return save(obj, path)

    monkeypatch.setattr(train_mod, "atomic_save", dying_save)


def test_a_run_killed_between_its_last_log_row_and_last_pt_is_not_finished(tiny_shapes, tmp_path, monkeypatch):
    cfg = tiny_train_config(tiny_shapes, tmp_path, epochs=2, save_every=1)
    kill_before(monkeypatch, "last.pt", epoch=2)
    with pytest.raises(Killed):
        train_mod.train(cfg)
    run = tmp_path / "tiny"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 2 and (run / "best.pt").is_file()  # the log says 2 of 2 epochs...
    assert not model_card.run_finished(run)  # ...but last.pt holds epoch 1: make photos must resume it
    monkeypatch.undo()
    train_mod.train(train_mod.make_config(resume=str(run)))
    assert model_card.run_finished(run)
    # More epochs asked on resume: config.json plans 3, the checkpoints hold 2.
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "epochs": 3}))
    assert not model_card.run_finished(run)


def test_init_from_carries_the_images_its_start_trained_on_also_through_resume(tiny_shapes, tmp_path, capsys):
    """Run A trains on the test split; run B starts from A's weights and trains on train. Scoring B on test must
    still warn: B's weights learnt those images. The record survives a resume of B."""
    import evaluate
    from data_loader import find_split, images_among
    from model import read_checkpoint

    a = train_mod.train(tiny_train_config(tiny_shapes, tmp_path, run_name="a", train_split="test", epochs=1))
    b = train_mod.train(tiny_train_config(tiny_shapes, tmp_path, run_name="b", epochs=1,
                                          init_from=str(a / "best.pt")))
    capsys.readouterr()
    evaluate.evaluate_checkpoint(b / "best.pt", split="test", backend="python", device="cpu", num_workers=0,
                                 out_dir=tmp_path / "eval")
    out = capsys.readouterr().out
    assert f"warning: 16 of these 16 test images are among those the checkpoint (or {a / 'best.pt'}, which it " \
           "started from) was trained on" in out
    record = json.loads((tmp_path / "eval" / "scores_test_beam1.json").read_text())
    assert record["images_trained_on"] == 16
    train_mod.train(train_mod.make_config(resume=str(b), epochs=2))
    test_files = [p.name for p in find_split(tiny_shapes, "test")[0].iterdir()]
    train_files = [p.name for p in find_split(tiny_shapes, "train")[0].iterdir()]
    last = read_checkpoint(b / "last.pt")
    assert last["epoch"] == 2 and images_among(test_files, last["train_images"]) == 16
    assert images_among(train_files, last["train_images"]) == len(train_files)  # B's own images stay too
    # The validation images of both runs: train (tiny_train_config's val_split) of B and of A alike.
    assert images_among(train_files, last["val_images"]) == len(train_files)


def rebuild_block(card):
    """The lines of the model card's Rebuild code block."""
    return re.search(r"## Rebuild\n.*?```\n(.*?)\n```", card, flags=re.S).group(1).splitlines()


def test_the_card_lists_each_resumed_session_that_changed_settings_and_claims_no_bit_for_bit(tiny_shapes, tmp_path):
    from dataclasses import asdict

    run = train_mod.train(tiny_train_config(tiny_shapes, tmp_path, epochs=1, save_every=1))
    first = json.loads((run / "config.json").read_text())
    claim = "this command train the same model (seeded; on the same kind of device, bit for bit)"
    (command,) = rebuild_block((run / "MODEL_CARD.md").read_text())
    # A resume that changes only how the run logs and loads data: still one command, bit for bit.
    train_mod.train(train_mod.make_config(resume=str(run), log_every=5))
    card = (run / "MODEL_CARD.md").read_text()
    assert claim in card and rebuild_block(card) == [command]
    # A resume with another learning rate and more epochs: the card's config is the new one, and no single command
    # (neither the first nor the new settings) trained these weights.
    train_mod.train(train_mod.make_config(resume=str(run), epochs=2, lr=1e-4))
    card = (run / "MODEL_CARD.md").read_text()
    assert json.loads(re.search(r"```json\n(.*?)\n```", card, flags=re.S).group(1))["lr"] == 1e-4
    assert claim not in card and "not claimed to give the same weights bit for bit" in card
    lines = rebuild_block(card)
    assert lines == [f"{command}   # stopped after epoch 1",
                     "python train.py --resume RUN --epochs 2 --lr 0.0001   # from epoch 1"]
    # The first line rebuilds the first session's settings: lr 5e-3, not the resumed session's 1e-4.
    rebuilt = asdict(train_mod.parse_args(shlex.split(command)[2:]))
    kept = lambda c: {k: v for k, v in c.items() if k not in model_card.NOT_IN_COMMAND}
    assert kept(rebuilt) == kept(first) and rebuilt["lr"] == 5e-3
    state = json.loads((run / "model_card.json").read_text())
    assert state["resumes"] == [{"at_epoch": 1, "changed": {}}, {"at_epoch": 1, "changed": {"epochs": 2, "lr": 1e-4}}]
