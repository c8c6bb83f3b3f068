"""caption.py with --out: a folder (or files) to captions.csv, .jsonl or .json that reads back as written, a rerun
that resumes, failures that never stop the run, sub-folders; and which model captions when none is named."""
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import caption
from conftest import REPO_ROOT, tiny_train_config
from model import checkpoint_max_len, load_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_shapes, tmp_path_factory):
    """A model trained for 2 epochs on the tiny shapes set: what it says does not matter here, only where it goes."""
    from train import train

    cfg = tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("caption_cli"), epochs=2, save_every=2, grid=1,
                            head_hidden=0)
    return train(cfg) / "best.pt"


def photos(folder, names):
    """Small noise pictures of several sizes, one per name; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(folder / name)
    return [folder / name for name in names]


def run(checkpoint, *argv):
    return caption.main(["--checkpoint", str(checkpoint), "--num-workers", "0", "--batch-size", "2", *map(str, argv)])


def expected(checkpoint, paths, beam=1):
    """{path: caption} from the library, and the checkpoint's max_len: what the file must hold."""
    encoder, decoder, vocab, ckpt = load_checkpoint(checkpoint)
    max_len = checkpoint_max_len(ckpt)
    captions, _ = caption.caption_images(encoder, decoder, vocab, paths, ckpt["model_args"]["image_size"], beam=beam,
                                         max_len=max_len, progress=False)
    return {str(p): c for p, c in captions.items()}, max_len


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "json"])
def test_each_format_reads_back_as_the_records_written(checkpoint, tmp_path, capsys, suffix):
    names = ["000000000001.jpg", "000000000002.png", "3.png", "4.jpg", "COCO_val2014_000000000005.jpg"]  # sorted
    paths = photos(tmp_path / "in", names)
    out = tmp_path / f"captions.{suffix}"
    assert run(checkpoint, tmp_path / "in", "--out", out, "--beam", "2", "--length-penalty", "0.5") == 0
    printed = capsys.readouterr()
    assert printed.out == ""  # the captions went to the file
    assert re.search(r"^5 images captioned in [\d.]+ s \([\d.]+ images/s\); captions in ", printed.err, re.M)
    records = caption.read_records(out)
    want, max_len = expected(checkpoint, paths, beam=2)
    assert [r["path"] for r in records] == [str(p) for p in paths]  # in order, once each
    assert {r["path"]: r["caption"] for r in records} == want
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    for r in records:
        assert (r["model"], r["model_sha256"], r["beam"], r["max_len"], r["length_penalty"]) == \
            (str(checkpoint), sha, 2, max_len, 0.5)
    if suffix == "json":  # COCO's results format, whole, and no partial file left behind
        coco = json.loads(out.read_text())
        assert [(r["image_id"], r["caption"]) for r in coco] == [(i + 1, want[str(p)]) for i, p in enumerate(paths)]
        assert not caption.partial_path(out).exists()


def test_json_needs_coco_image_ids_and_says_so_before_any_work(checkpoint, tmp_path, capsys):
    photos(tmp_path / "named", ["dog.jpg"])
    photos(tmp_path / "twice", ["1.jpg", "001.png"])
    for folder, message in (("named", "dog.jpg holds none"), ("twice", "both name image id 1")):
        assert run(checkpoint, tmp_path / folder, "--out", tmp_path / "c.json") == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err, err
        assert "use --out captions.jsonl or .csv" in err
        assert not (tmp_path / "c.json").exists()
    assert run(checkpoint, tmp_path / "named", "--out", tmp_path / "c.txt") == 1
    assert "give a file ending in .csv, .jsonl or .json" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_a_rerun_captions_only_what_is_missing_and_bad_files_never_stop_it(checkpoint, tmp_path, capsys, suffix):
    folder, out = tmp_path / "in", tmp_path / f"captions.{suffix}"
    photos(folder, ["a.jpg", "b.jpg", "c.jpg"])
    (folder / "broken.jpg").write_bytes((folder / "a.jpg").read_bytes()[:200])  # a truncated JPEG
    assert run(checkpoint, folder, "--out", out) == 1
    err = capsys.readouterr().err
    assert f"error: {folder / 'broken.jpg'}: unreadable" in err and "1 of 4 images could not be captioned" in err
    assert [Path(r["path"]).name for r in caption.read_records(out)] == ["a.jpg", "b.jpg", "c.jpg"]
    # More photos arrive, and a crash had cut the last record in half: it is captioned again, the others not.
    photos(folder, ["d.jpg", "e.jpg"])
    out.write_bytes(out.read_bytes()[:-10])
    assert run(checkpoint, folder, "--out", out) == 1  # broken.jpg still fails, and is still named
    err = capsys.readouterr().err
    assert re.search(r"^3 images captioned in .*; 2 already in .*, skipped", err, re.M), err
    assert f"error: {folder / 'broken.jpg'}: unreadable" in err
    records = caption.read_records(out)
    assert sorted(Path(r["path"]).name for r in records) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    want, _ = expected(checkpoint, sorted(folder.glob("[a-e].jpg")))
    assert {r["path"]: r["caption"] for r in records} == want
    # Other decoding settings into the same file: refused in one line, the file untouched.
    before = out.read_bytes()
    assert run(checkpoint, folder, "--out", out, "--beam", "2") == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 2 and "holds captions made with other settings" in err  # + model line
    assert out.read_bytes() == before


def test_an_interrupted_json_run_keeps_its_records_and_the_rerun_finishes_it(checkpoint, tmp_path, monkeypatch,
                                                                            capsys):
    folder, out = tmp_path / "in", tmp_path / "captions.json"
    paths = photos(folder, [f"{i}.jpg" for i in range(1, 6)])
    real, calls = caption.caption_batch, []

    def interrupted_at_the_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(caption, "caption_batch", interrupted_at_the_third_batch)
    assert run(checkpoint, folder, "--out", out) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert not out.exists()  # the .json is written whole at the end, never half
    assert len(caption.read_records(caption.partial_path(out))) == 4  # two batches of 2, kept
    monkeypatch.setattr(caption, "caption_batch", real)
    assert run(checkpoint, folder, "--out", out) == 0
    assert re.search(r"^1 images captioned in .*; 4 already in", capsys.readouterr().err, re.M)
    want, _ = expected(checkpoint, paths)
    assert [(r["image_id"], r["caption"]) for r in json.loads(out.read_text())] == \
        [(i + 1, want[str(p)]) for i, p in enumerate(paths)]
    assert not caption.partial_path(out).exists()


def test_recursive_takes_sub_folders_but_not_hidden_ones(tmp_path):
    top = tmp_path / "top"
    photos(top, ["a.jpg"]), photos(top / "trip", ["b.png"]), photos(top / ".thumbnails", ["c.jpg"])
    assert caption.image_files([top]) == [top / "a.jpg"]
    assert caption.image_files([top], recursive=True) == [top / "a.jpg", top / "trip" / "b.png"]
    assert caption.image_files([top / "a.jpg", top]) == [top / "a.jpg"]  # named twice, captioned once
    (tmp_path / "none" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="none and its sub-folders hold no image files"):
        caption.image_files([tmp_path / "none"], recursive=True)


def test_without_a_checkpoint_the_bundled_model_is_asked_for_never_the_newest_run(tmp_path, monkeypatch, capsys):
    asked = []

    class Spy:
        def __init__(self, checkpoint, **kwargs):
            asked.append(checkpoint)
            raise FileNotFoundError("stop here")

    monkeypatch.setattr(caption, "ImageCaptioner", Spy)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "shapes").mkdir(parents=True)
    (tmp_path / "runs" / "shapes" / "best.pt").write_bytes(b"a shapes model")
    images = str(REPO_ROOT / "images")
    assert caption.main([images]) == 1 and asked == [None]  # None: ImageCaptioner's bundled model
    assert caption.main(["--latest", images]) == 1 and asked[-1] == Path("runs/shapes/best.pt")
    assert caption.main(["--runs-dir", "runs", images]) == 1 and asked[-1] == Path("runs/shapes/best.pt")
    assert capsys.readouterr().err.count("error: stop here") == 3
