"""check_settings refuses every bad size and backbone before anything is made: one line, no run folder, no cache."""
import re

import pytest

import train as train_mod
from conftest import tiny_train_config

BAD = [("hidden_size", 0, "--hidden-size must be at least 1"), ("num_layers", 0, "--num-layers must be at least 1"),
       ("grid", 0, "--grid must be at least 1"), ("image_size", 0, "--image-size must be at least 1"),
       ("embed_size", 0, "--embed-size must be at least 1"), ("head_hidden", -1, "--head-hidden must be 0 or more"),
       ("backbone_blocks", -2, "--backbone-blocks must be 0 or more"),
       ("local_hidden", -1, "--local-hidden must be 0 or more"),
       ("backbone", "mobilenet_v4", "--backbone 'mobilenet_v4' is not a torchvision classification model; "
                                    "did you mean mobilenet_v2")]


@pytest.mark.parametrize("name, value, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_size_or_backbone_is_refused_before_any_folder(tiny_shapes, tmp_path, name, value, message):
    cfg = tiny_train_config(tiny_shapes, tmp_path / "runs", **{name: value})
    with pytest.raises(ValueError, match=re.escape(message)):
        train_mod.train(cfg)
    assert not (tmp_path / "runs").exists()  # no run folder, no feature cache, no vocabulary


def test_the_cli_refuses_hidden_size_0_in_one_line_and_makes_nothing(tiny_shapes, tmp_path, capsys):
    out = tmp_path / "runs"
    code = train_mod.main(["--data-root", str(tiny_shapes), "--hidden-size", "0", "--backbone", "resnet5O",
                           "--out-dir", str(out), "--cache-dir", str(out / "cache"), "--run-name", "bad"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "Traceback" not in err
    assert "--hidden-size must be at least 1, got 0" in err and "'resnet5O'" in err and "resnet50" in err
    assert not out.exists()


def test_every_backbone_the_presets_name_is_accepted():
    for preset in train_mod.PRESETS:
        assert train_mod.backbone_problems(train_mod.make_config(preset).backbone) == []
