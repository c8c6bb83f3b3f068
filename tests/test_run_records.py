"""What a run records about itself is what happened: whether it finished (from its checkpoints, not its log)."""
import json

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
