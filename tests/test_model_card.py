"""MODEL_CARD.md: written beside best.pt by train.py, its scores added by evaluate.py; every figure on it equals
the one in the run's own files (config.json, metrics.jsonl, best.pt, scores_<split>_beam<k>.json)."""
import json
import re
import shlex
from dataclasses import asdict

import pytest

import evaluate
import model_card
from conftest import tiny_train_config
from data_loader import find_split
from model import read_checkpoint
from vocabulary import Vocabulary


@pytest.fixture(scope="module")
def run(tiny_shapes, tmp_path_factory):
    from train import train

    return train(tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("card"), epochs=3, save_every=3))


def table_row(text, *first_cells):
    """The cells of the Markdown table rows that start with these cells."""
    start = "| " + " | ".join(map(str, first_cells)) + " |"
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith(start)]


def test_the_card_holds_the_runs_own_figures(run, tiny_shapes):
    from train import TrainConfig, parse_args

    text = (run / "MODEL_CARD.md").read_text()
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ckpt = read_checkpoint(run / "best.pt")
    vocab = Vocabulary.load(run / "vocab.json")
    assert len(rows) == 3 and ckpt["model_args"]["vocab_size"] == len(vocab)
    # The config block is config.json, key for key.
    block = re.search(r"```json\n(.*?)\n```", text, flags=re.S).group(1)
    assert json.loads(block) == config
    assert f"vocabulary {len(vocab):,} words" in text and f"- vocabulary: {len(vocab):,} words" in text
    assert f"best.pt is epoch {ckpt['epoch']}" in text and "epochs: 3 of 3" in text
    assert f"the epochs' times in metrics.jsonl: {sum(r['epoch_time_s'] for r in rows):.1f} s" in text
    best = ckpt["metrics"]
    assert f"object_f1 {best['object_f1']:.3f}" in text and f"val_loss {best['val_loss']:.3f}" in text
    # Split sizes: those of the caption files the run read.
    for split in ("train", "val", "test", "test_novel"):
        coco = json.loads(find_split(tiny_shapes, split)[1].read_text())
        assert table_row(text, split) == [[split, f"{len(coco['images']):,}", f"{len(coco['annotations']):,}"]]
    # The whole run's time and the machine, added at its end.
    state = json.loads((run / "model_card.json").read_text())
    (session,) = state["sessions"]
    assert f"({session['wall_s']:.1f} s)" in text and session["wall_s"] >= sum(r["epoch_time_s"] for r in rows)
    assert f"- machine: {session['machine']}" in text and "CPU cores" in session["machine"]
    # The rebuild command gives back the same config (less where the run goes and how it logs).
    command = re.search(r"## Rebuild\n.*?```\n(.*?)\n```", text, flags=re.S).group(1)
    assert command.startswith("python train.py ") and f"--data-root {tiny_shapes}" in command
    rebuilt = asdict(parse_args(shlex.split(command)[2:]))
    kept = lambda c: {k: v for k, v in c.items() if k not in model_card.NOT_IN_COMMAND}
    assert kept(rebuilt) == kept(config) and kept(config) != kept(asdict(TrainConfig()))
    assert "No evaluation yet" in text
    assert model_card.run_finished(run)
    assert model_card.trained_on(ckpt, run / "best.pt").startswith(
        f"trained on the built-in shapes set (64 train images), vocabulary {len(vocab)} words, lstm decoder")


def test_evaluate_adds_one_row_per_split_and_beam_the_newest_kept(run, tmp_path):
    checkpoint = run / "best.pt"
    common = dict(split="test", backend="python", device="cpu", num_workers=0, progress=False)
    evaluate.evaluate_checkpoint(checkpoint, beam=1, max_len=3, out_dir=tmp_path / "old", **common)
    old = json.loads((tmp_path / "old" / "scores_test_beam1_maxlen3.json").read_text())  # not the default name
    evaluate.evaluate_checkpoint(checkpoint, beam=1, **common)  # default settings: the card row
    evaluate.evaluate_checkpoint(checkpoint, beam=2, **common)
    text = (run / "MODEL_CARD.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| split | beam | images |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    epoch = read_checkpoint(checkpoint)["epoch"]
    for beam in (1, 2):
        record = json.loads((run / f"scores_test_beam{beam}.json").read_text())
        (row,) = table_row(text, "test", beam)
        cells = dict(zip(columns, row))
        assert cells["images"] == f"{record['n_images']:,}" and cells["epoch"] == str(epoch)
        for metric in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "object_f1"):
            assert cells[metric] == f"{record['scores'][metric]:.3f}", metric
    assert old["scores"]["Bleu_1"] != json.loads((run / "scores_test_beam1.json").read_text())["scores"]["Bleu_1"]
    assert "No evaluation yet" not in text
    # A measurement without the word rules is not the model as it captions: the card keeps the row it has.
    evaluate.evaluate_checkpoint(checkpoint, beam=1, max_len=3, out_dir=tmp_path / "raw", word_rules=False, **common)
    assert (run / "MODEL_CARD.md").read_text() == text
    # A checkpoint other than best.pt has no card to update.
    before = (run / "MODEL_CARD.md").read_text()
    assert model_card.add_scores(run / "last.pt", {"split": "val", "beam": 9, "n_images": 1, "scores": {}}) is None
    assert (run / "MODEL_CARD.md").read_text() == before


def test_other_decoding_settings_never_replace_the_default_scores_file_or_card_row(run, tiny_shapes, tmp_path):
    """--max-len, --length-penalty, --no-word-rules and another data root each write files of their own name;
    the default scores file and the card's row stay those of the default settings."""
    import shutil

    checkpoint = run / "best.pt"
    common = dict(split="test", beam=1, backend="python", device="cpu", num_workers=0, progress=False)
    evaluate.evaluate_checkpoint(checkpoint, **common)
    default_file = run / "scores_test_beam1.json"
    before, card = default_file.read_bytes(), (run / "MODEL_CARD.md").read_text()
    copy = shutil.copytree(tiny_shapes, tmp_path / "elsewhere" / "shapes")
    variants = [(dict(max_len=2), "_maxlen2"), (dict(length_penalty=0.5), "_lp0.5"),
                (dict(word_rules=False), "_norules"),
                (dict(max_len=2, word_rules=False), "_maxlen2_norules"), (dict(data_root=str(copy)), "_root-shapes-")]
    for settings, suffix in variants:
        scores, _ = evaluate.evaluate_checkpoint(checkpoint, **settings, **common)
        assert default_file.read_bytes() == before and (run / "MODEL_CARD.md").read_text() == card, settings
        captions_file, scores_file = scores.files
        assert scores_file.name.startswith(f"scores_test_beam1{suffix}") and scores_file.parent == run, settings
        assert captions_file.name == scores_file.name.replace("scores_", "captions_")
        record = json.loads(scores_file.read_text())
        assert record["default_decoding"] is False and record["n_images"] == 16
    assert json.loads(before)["default_decoding"] is True
    short = json.loads((run / "scores_test_beam1_maxlen2.json").read_text())
    assert short["max_len"] == 2 and short["scores"] != json.loads(before)["scores"]  # really another measurement
    # The checkpoint's own settings, spelt out, are the defaults: the same file and row.
    own = read_checkpoint(checkpoint)["config"]
    scores, _ = evaluate.evaluate_checkpoint(checkpoint, max_len=own["max_len"], data_root=str(tiny_shapes) + "/",
                                             **common)
    assert scores.files[1] == default_file
    # The data moved (or a bundled model, whose data lives wherever the user keeps it): a split whose images are,
    # one for one, those the checkpoint recorded is the same data, so its default file and row are the ones.
    val = own["val_split"]
    scores, _ = evaluate.evaluate_checkpoint(checkpoint, **{**common, "split": val}, data_root=str(copy))
    assert scores.files[1] == run / f"scores_{val}_beam1.json"
