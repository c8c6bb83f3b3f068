"""Reliability: bad data, bad files and crashes give clear errors or counted skips, and nothing is lost.

Policy. Data (cases 1-6): training and evaluation go on; they skip the bad item, count it and name it in one
summary line, e.g. "captions_train2017.json: skipped 2 of 64 images: 1 unreadable, 1 missing (unreadable:
a.jpg; missing: b.jpg)"; `--strict` turns that into an error. Configuration and files (7-12): a clear error
saying what was expected and what was found; the CLIs print it as one "error: ..." line and exit 1.

Cases already covered elsewhere, and not repeated here:
    load_image on every mode, zero-byte, truncated, missing and bomb files        tests/test_data_loader.py
    the dataset's skip counts (missing, unreadable, unknown image ids, empty,
    punctuation-only and over-long captions), strict mode, not-JSON annotations   tests/test_data_loader.py
    a vocabulary object that differs from the checkpoint's, refused before the
    model is built; a checkpoint of another size; a pickled object refused        tests/test_model.py
    a truncated feature cache file rebuilt; resume gives the same weights          tests/test_train.py
    caption.py naming truncated and empty files                                    tests/test_inference.py
Every test builds its bad inputs in temporary folders; training runs are tiny (64 px, 64 LSTM units).
"""
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import caption
import data_loader as dl
import evaluate
import features as features_mod
import metrics
import model
import train as train_mod
from conftest import REPO_ROOT, tiny_train_config
from data_loader import CocoCaptionDataset, get_transform
from model import CheckpointError, load_checkpoint, read_checkpoint
from vocabulary import Vocabulary

# Small and fixed: every size is pinned here, so tuning TrainConfig's defaults does not change these tests.
SMALL = dict(backbone="mobilenet_v2", pretrained=True, train_backbone=False, grid=1, head_hidden=0, embed_norm=True,
             embed_size=32, hidden_size=64, num_layers=1, dropout=0.0, batch_size=64, save_every=1, max_len=30)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


# ---------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One feature cache for the module, so the CNN runs over the tiny shapes images once."""
    return tmp_path_factory.mktemp("feature_cache")


@pytest.fixture(scope="module")
def small_run(tiny_shapes, tmp_path_factory, cache_dir):
    """A 2-epoch run on the tiny shapes set: config.json, vocab.json, metrics.jsonl, last.pt, best.pt."""
    cfg = tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("runs"), epochs=2, cache_dir=str(cache_dir), **SMALL)
    return train_mod.train(cfg)


def cli_flags(cfg):
    """Every field of a TrainConfig as train.py flags, so CLI runs do not depend on the current defaults."""
    flags = []
    for name, value in dataclasses.asdict(cfg).items():
        flag = "--" + name.replace("_", "-")
        if name == "resume":
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def one_error_line(err):
    """The single 'error: ...' line of a CLI's stderr (progress bars aside); no traceback."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def bad_copy(src, dest, split="train", truncated=(), empty=(), missing=(), bomb=(), garbage=()):
    """A copy of a data root whose split has bad image files at these positions (sorted); {kind: [names]}."""
    shutil.copytree(src, dest)
    files = sorted((dest / f"{split}2017").glob("*.jpg"))
    for i in truncated:
        files[i].write_bytes(files[i].read_bytes()[: files[i].stat().st_size // 2])
    for i in empty:
        files[i].write_bytes(b"")
    for i in missing:
        files[i].unlink()
    for i in bomb:  # a PNG header claiming 10,000 x 10,000 pixels (under a .jpg name: PIL goes by the content)
        files[i].write_bytes(png_header(10_000, 10_000))
    for i in garbage:
        files[i].write_bytes(b"this is not an image at all")
    kinds = dict(truncated=truncated, empty=empty, missing=missing, bomb=bomb, garbage=garbage)
    return {kind: [files[i].name for i in idx] for kind, idx in kinds.items()}


def png_header(width, height):
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def coco_file(path, images, annotations):
    """images {id: file_name}, annotations [(ann_id, image_id, caption)] -> a COCO caption file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f} for i, f in images.items()],
        "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in annotations]}, ensure_ascii=False))
    return path


def n_captions(root, split, skip_names):
    data = json.loads((root / "annotations" / f"captions_{split}2017.json").read_text())
    bad_ids = {im["id"] for im in data["images"] if im["file_name"] in skip_names}
    return sum(a["image_id"] not in bad_ids for a in data["annotations"])


# ---------------------------------------------------------------------------------------------------
# 1, 2, 4: corrupt, truncated, empty, missing and bomb images: skipped, counted, named; --strict stops
# ---------------------------------------------------------------------------------------------------
def test_training_skips_counts_and_names_bad_images(tiny_shapes, tmp_path, cache_dir, capsys):
    root = tmp_path / "bad"
    bad = bad_copy(tiny_shapes, root, truncated=[0], empty=[1], missing=[2], bomb=[3], garbage=[4])
    run_dir = train_mod.train(tiny_train_config(root, tmp_path / "runs", epochs=1, cache_dir=str(cache_dir), **SMALL))
    out = capsys.readouterr().out
    (t,), (e,), (m,), (b,), (g,) = bad.values()
    # The header check at load time catches four; the truncated JPEG passes it and fails while caching features.
    assert (f"captions_train2017.json: skipped 4 of 64 images: 2 unreadable, 1 missing, 1 too large "
            f"(unreadable: {e}, {g}; missing: {m}; too large: {b})") in out
    assert (f"captions_train2017.json: skipped 5 of 64 images: 3 unreadable, 1 missing, 1 too large "
            f"(unreadable: {e}, {g}, {t}; missing: {m}; too large: {b}) while caching features") in out
    usable = n_captions(root, "train", {t, e, m, b, g})
    assert f"on {usable:,} captions" in out  # training went on with the other 59 images' captions
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("kind, reason", [("missing", "missing"), ("truncated", "unreadable")])
def test_strict_cli_turns_a_skip_into_one_error_line(tiny_shapes, tmp_path, cache_dir, capsys, kind, reason):
    root = tmp_path / "bad"
    (name,) = bad_copy(tiny_shapes, root, **{kind: [5]})[kind]
    cfg = tiny_train_config(root, tmp_path / "runs", epochs=1, cache_dir=str(cache_dir), strict=True, **SMALL)
    assert train_mod.main(cli_flags(cfg)) == 1
    line = one_error_line(capsys.readouterr().err)
    # missing: found by the header check; truncated: only when decoding, in the cache path.
    assert line == f"error: skipped 1 of 64 images: 1 {reason} (strict mode). Examples: {reason}: {name}"
    assert not (tmp_path / "runs" / "tiny" / "last.pt").exists()


@pytest.mark.filterwarnings("ignore::metrics.MissingMetricWarning")  # --backend python: no METEOR, as asked
def test_evaluate_skips_bad_images_counts_and_names_them(small_run, tiny_shapes, tmp_path, capsys):
    root = tmp_path / "bad"
    bad = bad_copy(tiny_shapes, root, split="test", truncated=[0], missing=[1])
    (t,), (m,) = bad["truncated"], bad["missing"]
    code = evaluate.main(["--checkpoint", str(small_run / "best.pt"), "--data-root", str(root), "--split", "test",
                          "--backend", "python", "--out", str(tmp_path / "eval"), "--num-workers", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"captions_test2017.json: skipped 1 of 16 images: 1 missing (missing: {m})" in out
    assert (f"captions_test2017.json: skipped 2 of 16 images: 1 missing, 1 unreadable (missing: {m}; "
            f"unreadable: {t}) while computing features") in out
    (captions_file,) = (tmp_path / "eval").glob("captions_test_beam1_root-bad-*.json")  # another data root's name
    written = json.loads(captions_file.read_text())
    assert len(written) == 14  # every other image captioned and scored


def test_caption_cli_refuses_a_decompression_bomb_and_captions_the_rest(small_run, tmp_path, capsys):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "ok.jpg")
    (tmp_path / "bomb.png").write_bytes(png_header(100_000, 100_000))  # 10^10 pixels: 30 GB if decoded
    t0 = time.monotonic()
    code = caption.main(["--checkpoint", str(small_run / "best.pt"), "--num-workers", "0", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1 and time.monotonic() - t0 < 30
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(tmp_path / "ok.jpg")]
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: {tmp_path / 'bomb.png'}: too large (") and "pixels" in errors[0]
    assert errors[1] == "error: 1 of 2 images could not be captioned (named above)"


# ---------------------------------------------------------------------------------------------------
# 3: every image mode becomes 8-bit RGB all the way to CNN features
# ---------------------------------------------------------------------------------------------------
def mode_images(folder):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    images = {"gray.jpg": rgb.convert("L"), "bw.png": rgb.convert("1"), "cmyk.jpg": rgb.convert("CMYK"),
              "rgba.png": rgb.convert("RGBA"), "la.png": rgb.convert("LA"), "palette.gif": rgb.convert("P"),
              "i16.png": Image.fromarray(rng.integers(0, 65536, (40, 48), dtype=np.uint16)),
              "float.tif": Image.fromarray(rng.random((40, 48), dtype=np.float32)), "rgb.bmp": rgb}
    folder.mkdir(parents=True)
    for name, img in images.items():
        img.save(folder / name)
    img = rgb.convert("P")
    img.save(folder / "palette_transparent.png", transparency=0)
    names = sorted(p.name for p in folder.iterdir())
    assert {Image.open(folder / n).mode for n in names} >= {"L", "1", "CMYK", "RGBA", "LA", "P", "F", "RGB"}
    assert Image.open(folder / "i16.png").mode.startswith("I")
    return names


def test_every_image_mode_is_used_not_skipped(tmp_path):
    names = mode_images(tmp_path / "train2017")
    ann = coco_file(tmp_path / "annotations" / "captions_train2017.json", dict(enumerate(names, 1)),
                    [(i, i, "a red circle") for i in range(1, len(names) + 1)])
    ds = CocoCaptionDataset(tmp_path / "train2017", ann, Vocabulary(["a", "red", "circle"]),
                            get_transform(train=False, image_size=32))
    assert ds.image_report.skipped == 0 and len(ds) == len(names)
    for i in range(len(ds)):
        image, _ = ds[i]
        assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
    encoder, _ = model.build_model(dict(embed_size=8, hidden_size=8, vocab_size=5, backbone="mobilenet_v2",
                                        pretrained=False))
    files = [tmp_path / "train2017" / n for n in names]
    features, ok, failures = features_mod.compute_features(encoder, files, 32, torch.device("cpu"), num_workers=0)
    assert failures == {} and bool(ok.all()) and torch.isfinite(features.float()).all()


# ---------------------------------------------------------------------------------------------------
# 5: annotation files that are not JSON, lack a COCO key, or hold malformed entries
# ---------------------------------------------------------------------------------------------------
def test_malformed_annotation_entries_are_named(tmp_path):
    # test_data_loader.py covers: not JSON, no 'annotations', a list, a missing file, unknown image ids.
    cases = [({"annotations": []}, r"lacks the COCO key\(s\) \['images'\]"),
             ({"images": [{"id": 1}, {"file_name": "2.jpg"}], "annotations": []}, r"images\[1\] has no 'id' field"),
             ({"images": [{"id": 1}], "annotations": [{"id": 1, "caption": "a"}]},
              r"annotations\[0\] has no 'image_id' field"),
             ({"images": [{"id": 1}], "annotations": ["a dog"]}, r"annotations\[0\] has no 'id' or 'image_id'")]
    for i, (data, message) in enumerate(cases):
        path = tmp_path / f"captions_{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=message):
            dl.load_coco(path)


def test_bad_annotation_files_through_the_clis_are_one_line(small_run, tmp_path, capsys):
    root = tmp_path / "root"
    (root / "annotations").mkdir(parents=True)
    ann = root / "annotations" / "captions_train2017.json"
    cfg = tiny_train_config(root, tmp_path / "runs", epochs=1, cache_dir=str(tmp_path / "cache"),
                            best_metric="CIDEr", **SMALL)  # not shapes data: no object F1
    ann.write_text('{"images": [], "annotations": [')  # cut off mid-file
    assert train_mod.main(cli_flags(cfg)) == 1
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {ann} is not a valid JSON caption file")
    coco_file(ann, {}, [(1, 1, "a red circle")])
    ann.write_text(json.dumps({"annotations": json.loads(ann.read_text())["annotations"]}))  # no 'images'
    assert train_mod.main(cli_flags(cfg)) == 1
    assert one_error_line(capsys.readouterr().err) == (f"error: {ann} lacks the COCO key(s) ['images']: it is not a "
                                                       "COCO caption file")
    test_ann = root / "annotations" / "captions_test2017.json"
    test_ann.write_bytes(b"\x89PNG not json")
    assert evaluate.main(["--checkpoint", str(small_run / "best.pt"), "--data-root", str(root), "--split", "test"]) == 1
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {test_ann} is not valid JSON")


# ---------------------------------------------------------------------------------------------------
# 6: empty, punctuation, emoji, non-Latin and very long captions
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::metrics.MissingMetricWarning")
def test_captions_in_any_script_are_kept_and_junk_is_counted(tmp_path):
    for i in (1, 2):
        Image.new("RGB", (16, 16), (i * 50, 0, 0)).save(tmp_path / f"{i}.jpg")
    captions = [(1, 1, "A red cat 🐱 on a mat."), (2, 1, "🐱🐶🎉"), (3, 1, "!!! ... ?"), (4, 1, ""),
                (5, 2, "Красная кошка сидит."), (6, 2, "一只红色的猫"), (7, 2, "قطة حمراء"), (8, 2, None), (9, 2, 42),
                (10, 1, " ".join(["word"] * 5_000))]
    ann = coco_file(tmp_path / "captions_train2017.json", {1: "1.jpg", 2: "2.jpg"}, captions)
    vocab = Vocabulary.build([ann], threshold=1)
    words = set(vocab.idx2word)
    assert {"красная", "кошка", "一只红色的猫", "قطة", "حمراء", "cat", "word"} <= words
    assert not words & {"🐱", "!!!", "none", "42"}  # emoji and punctuation carry no words; nor do null or 42
    ds = CocoCaptionDataset(tmp_path, ann, vocab)
    assert ds.caption_report.summary() == "skipped 6 of 10 captions: 5 empty, 1 longer than 60 words"
    assert ds.ann_ids == [1, 5, 6, 7]
    assert [vocab.decode(ds.caption(i)) for i in range(4)] == ["a red cat on a mat", "красная кошка сидит",
                                                               "一只红色的猫", "قطة حمراء"]
    # Scoring keeps non-Latin words whole: a candidate equal to a reference matches word for word.
    refs = ds.references()
    scores = metrics.score_captions(refs, {1: refs[1][0], 2: refs[2][0]}, metrics=("Bleu",), backend="python")
    assert scores["Bleu_1"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------
# 7: a vocabulary file that does not match the checkpoint
# ---------------------------------------------------------------------------------------------------
def test_vocabulary_file_must_match_the_checkpoint(small_run, tmp_path, monkeypatch):
    # caption.py and evaluate.py take no vocabulary: they use the checkpoint's own. The library path:
    last = small_run / "last.pt"
    assert load_checkpoint(last, vocab=small_run / "vocab.json")[2] == Vocabulary.load(small_run / "vocab.json")
    own = Vocabulary.load(small_run / "vocab.json")
    monkeypatch.setattr(model, "build_model", lambda *a: pytest.fail("the model was built before the check"))
    bigger = tmp_path / "bigger.json"
    Vocabulary(own.idx2word + ["zebra"]).save(bigger)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(last, vocab=bigger)
    assert str(e.value) == (f"the vocabulary {bigger} ({len(own) + 1} words) does not match the checkpoint's "
                            f"({len(own)} words, in {last}); one is a prefix of the other")
    swapped = own.idx2word[:3] + [own.idx2word[4], own.idx2word[3]] + own.idx2word[5:]
    Vocabulary(swapped).save(tmp_path / "swapped.json")
    with pytest.raises(CheckpointError, match=f"first difference at id 3: {own.idx2word[4]!r} vs {own.idx2word[3]!r}"):
        load_checkpoint(last, vocab=tmp_path / "swapped.json")
    (tmp_path / "vocab.pkl").write_bytes(b"\x80\x04\x95 a pickled Vocabulary")
    with pytest.raises(ValueError, match=r"vocab\.pkl is not valid JSON"):
        load_checkpoint(last, vocab=tmp_path / "vocab.pkl")


# ---------------------------------------------------------------------------------------------------
# 8: a checkpoint saved on a GPU, loaded without one; a checkpoint of another model configuration
# ---------------------------------------------------------------------------------------------------
def tag_as_gpu(src, dest):
    """Rewrite a checkpoint's storage locations from 'cpu' to 'cuda:0', as torch.save writes them on a GPU."""
    with zipfile.ZipFile(src) as z:
        members = [(info, z.read(info.filename)) for info in z.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info, data in members:
            if info.filename.endswith("/data.pkl"):
                tagged = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")  # BINUNICODE, protocol 2
                tagged = tagged.replace(b"\x8c\x03cpu", b"\x8c\x06cuda:0")  # SHORT_BINUNICODE, protocol 4+
                assert tagged != data, "no storage location found to retag"
                data = tagged
            z.writestr(info, data)
    Path(dest).write_bytes(out.getvalue())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_checkpoint_loads_on_a_cpu_only_machine(small_run, tiny_shapes, tmp_path, capsys):
    gpu_run = tmp_path / "gpu_run"
    shutil.copytree(small_run, gpu_run)
    for name in ("last.pt", "best.pt"):
        tag_as_gpu(small_run / name, gpu_run / name)
    with pytest.raises(RuntimeError, match="CUDA"):  # it really is a GPU file: plain torch.load fails here
        torch.load(gpu_run / "last.pt", weights_only=True)
    enc, dec, vocab, ckpt = load_checkpoint(gpu_run / "last.pt")
    enc0, dec0, vocab0, _ = load_checkpoint(small_run / "last.pt")
    assert vocab == vocab0
    for a, b in ((enc, enc0), (dec, dec0)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert x.device.type == "cpu" and torch.equal(x, y), name
    image = sorted((tiny_shapes / "test2017").glob("*.jpg"))[0]
    captions = []
    for run in (small_run, gpu_run):
        assert caption.main(["--checkpoint", str(run / "best.pt"), "--num-workers", "0", str(image)]) == 0
        captions.append(capsys.readouterr().out)
    assert captions[0] == captions[1] and captions[0].strip()
    # Training resumes from a GPU checkpoint too (optimizer state and RNG state included).
    assert train_mod.main(["--resume", str(gpu_run), "--epochs", "3"]) == 0
    assert torch.load(gpu_run / "last.pt", weights_only=True)["epoch"] == 3
    assert [r["epoch"] for r in train_mod.read_metrics(gpu_run)] == [1, 2, 3]


def test_checkpoint_of_another_configuration_is_one_clear_line(small_run, tmp_path, capsys):
    ckpt = torch.load(small_run / "best.pt", weights_only=True)
    images = str(REPO_ROOT / "images")
    cases = [(dict(hidden_size=128), "error: the decoder weights do not fit the model configuration: "
                                     "lstm.weight_ih_l0: checkpoint (256, 32) vs model (512, 32)"),
             (dict(grid=2), "error: the encoder weights do not fit the model configuration: "
                            "embed.0.mean: checkpoint (1280,) vs model (5120,)"),  # the feature standardisation
             (dict(backbone="resnet18"), "error: the encoder weights do not fit the model configuration: ")]
    for change, expected in cases:
        path = tmp_path / f"{next(iter(change))}.pt"
        torch.save(dict(ckpt, model_args=dict(ckpt["model_args"], **change)), path)
        for cli, argv in ((caption, [images]), (evaluate, ["--split", "test", "--backend", "python"])):
            assert cli.main(["--checkpoint", str(path), *argv]) == 1
            captured = capsys.readouterr()
            assert one_error_line(captured.err).startswith(expected) and captured.out == "", captured.err


# ---------------------------------------------------------------------------------------------------
# 9: kill -9 during training and during a checkpoint write; --resume continues, nothing is lost
# ---------------------------------------------------------------------------------------------------
# Runs train.py with torch.save slowed down: on the first write to a file whose name holds argv[1] and ".tmp"
# (atomic_save's temporary file), it writes half of the bytes, flushes, and sleeps so the test can kill it
# mid-write. Only the test harness does this; the library is the real one.
HALF_WRITE = """
import io, sys, time, torch
real_save, frag = torch.save, sys.argv.pop(1)
def half_save(obj, f, *args, **kwargs):
    name = str(getattr(f, "name", ""))
    if frag in name and ".tmp" in name:
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = half_save
import train
sys.exit(train.main(sys.argv[1:]))
"""


def start(argv, tmp_path, half_write=None, log="stderr.txt"):
    cmd = [sys.executable, "-c", HALF_WRITE, half_write] if half_write else [sys.executable, str(REPO_ROOT / "train.py")]
    err = open(tmp_path / log, "w")
    proc = subprocess.Popen(cmd + [str(a) for a in argv], cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    return proc


def kill_when(proc, ready, tmp_path, what, delay=0.0, timeout=240):
    """SIGKILL `proc` `delay` seconds after ready() first holds; fail if it ends on its own first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training ended (rc {proc.returncode}) before {what}:\n"
                        f"{(tmp_path / 'stderr.txt').read_text()[-3000:]}")
        time.sleep(0.002)
    time.sleep(delay)
    proc.kill()  # SIGKILL
    assert proc.wait() == -9, f"it had already finished before {what}"


def logged_epochs(run_dir):
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["epoch"] for line in text.split("\n")[:-1]]  # complete lines only


def check_after_kill(run_dir):
    """What a kill may leave: every *.pt whole and safe to load; the log at most one epoch ahead of last.pt."""
    for path in run_dir.glob("*.pt"):
        torch.load(path, map_location="cpu", weights_only=True)
        read_checkpoint(path)
    last = torch.load(run_dir / "last.pt", weights_only=True)["epoch"] if (run_dir / "last.pt").exists() else 0
    epochs = logged_epochs(run_dir)
    assert epochs == list(range(1, len(epochs) + 1))  # no epoch twice, none missing
    assert last <= len(epochs) <= last + 1  # +1: killed after logging an epoch, before its checkpoint landed
    return last, len(epochs)


def test_kill_9_during_training_and_checkpoint_writes_then_resume(tiny_shapes, tmp_path, cache_dir):
    epochs = 12
    cfg = tiny_train_config(tiny_shapes, tmp_path / "runs", epochs=epochs, cache_dir=str(cache_dir), **SMALL)
    run_dir = tmp_path / "runs" / "tiny"
    # 1. Killed during epoch 3, at an arbitrary point (training, validation, logging or saving).
    proc = start(cli_flags(cfg), tmp_path)
    kill_when(proc, lambda: len(logged_epochs(run_dir)) >= 2, tmp_path, "epoch 3", delay=0.1)
    last, logged = check_after_kill(run_dir)
    assert last >= 1
    # 2. Resumed without --epochs (the run's own count is kept), killed again a few epochs later.
    proc = start(["--resume", run_dir], tmp_path)
    kill_when(proc, lambda: len(logged_epochs(run_dir)) >= last + 2, tmp_path, f"epoch {last + 3}", delay=0.15)
    before = last
    last, logged = check_after_kill(run_dir)
    assert last > before
    # 3. Resumed, and killed half-way through writing last.pt: the old last.pt is intact, the half file is a
    #    temporary one, and this epoch's metrics row was logged without its checkpoint.
    proc = start(["--resume", run_dir], tmp_path, half_write=".last.pt")
    # This process's own temporary file (atomic_save names it by pid): a kill above may have left a complete
    # one of its own behind, which this process removes when it starts, but maybe not before it is looked for.
    half_written = lambda: [p for p in run_dir.glob(f".last.pt.tmp{proc.pid}") if p.stat().st_size > 0]
    kill_when(proc, half_written, tmp_path, "the checkpoint write", delay=0.05)
    (tmp,) = half_written()
    with pytest.raises(Exception):
        torch.load(tmp, weights_only=True)
    before = last
    last, logged = check_after_kill(run_dir)
    assert last == before and logged == last + 1
    # 4. `python train.py --resume RUN` finishes: the orphan row is dropped and its epoch trained again.
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--resume", str(run_dir)], cwd=tmp_path,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert logged_epochs(run_dir) == list(range(1, epochs + 1))
    assert not list(run_dir.glob(".*tmp*"))
    final = torch.load(run_dir / "last.pt", weights_only=True)
    assert final["epoch"] == epochs and torch.load(run_dir / "best.pt", weights_only=True)["epoch"] <= epochs
    # Nothing was lost: the same weights as a run that was never interrupted.
    clean = torch.load(train_mod.train(dataclasses.replace(cfg, out_dir=str(tmp_path / "clean"))) / "last.pt",
                       weights_only=True)
    assert final["step"] == clean["step"]
    for part in ("encoder", "decoder"):
        for name, tensor in clean[part].items():
            assert torch.allclose(tensor, final[part][name], atol=1e-6), f"{part}.{name} differs"


# ---------------------------------------------------------------------------------------------------
# 10: kill -9 while the feature cache is being built
# ---------------------------------------------------------------------------------------------------
def test_kill_9_during_feature_cache_build(small_run, tiny_shapes, tmp_path, cache_dir, capsys):
    fresh_cache = tmp_path / "cache"
    cfg = tiny_train_config(tiny_shapes, tmp_path / "runs", epochs=1, cache_dir=str(fresh_cache), **SMALL)
    run_dir = tmp_path / "runs" / "tiny"
    # Killed while the CNN runs over the images (the progress bar has started).
    proc = start(cli_flags(cfg), tmp_path)
    kill_when(proc, lambda: "caching train" in (tmp_path / "stderr.txt").read_text(), tmp_path, "caching")
    for path in fresh_cache.glob("*.pt"):  # nothing under the final name, or a complete file
        assert torch.load(path, weights_only=True)["features"].shape[0] == 64
        path.unlink()  # (if the kill came that late) so that the next run builds the cache again
    assert not (run_dir / "last.pt").exists()
    assert train_mod.main(["--resume", str(run_dir)]) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"error: {run_dir} holds no complete checkpoint (last.pt) to resume from; start a new run instead")
    # Killed half-way through writing the cache file.
    proc = start(cli_flags(cfg), tmp_path, half_write="px-g1-")
    half_written = lambda: [p for p in fresh_cache.glob(f".*.tmp{proc.pid}") if p.stat().st_size > 0]
    kill_when(proc, half_written, tmp_path, "the cache write", delay=0.05)
    assert not list(fresh_cache.glob("*.pt")) and half_written()
    # The next run builds a complete cache, the same as one built without interruption, and trains.
    run_dir = train_mod.train(cfg)
    (built,) = fresh_cache.glob("*.pt")
    clean = cache_dir / built.name  # the module's cache: same key (same files, backbone, size, grid)
    new, old = torch.load(built, weights_only=True), torch.load(clean, weights_only=True)
    assert new["key"] == old["key"] and bool(new["ok"].all()) and torch.equal(new["features"], old["features"])
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1


# ---------------------------------------------------------------------------------------------------
# 11: a NaN or infinite loss
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_nan_or_inf_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(small_run, tiny_shapes, tmp_path,
                                                                               cache_dir, monkeypatch, capsys, bad):
    ref = torch.load(small_run / "last.pt", weights_only=True)
    per_epoch = ref["step"] // ref["epoch"]
    bad_step = 2 * per_epoch + 3  # the third step of epoch 3
    real_loss, training_steps = train_mod.caption_loss, []

    def poisoned(scores, captions):
        loss = real_loss(scores, captions)
        if torch.is_grad_enabled():  # a training step, not validation
            training_steps.append(1)
            if len(training_steps) == bad_step:
                return loss * float(bad)
        return loss

    monkeypatch.setattr(train_mod, "caption_loss", poisoned)
    cfg = tiny_train_config(tiny_shapes, tmp_path / "runs", epochs=4, cache_dir=str(cache_dir), **SMALL)
    assert train_mod.main(cli_flags(cfg)) == 1
    assert one_error_line(capsys.readouterr().err) == (
        f"error: loss became {bad} at epoch 3, step {bad_step}; training stopped and the last good checkpoint is "
        "kept. Try a lower --lr or --grad-clip.")
    run_dir = tmp_path / "runs" / "tiny"
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["step"] == 2 * per_epoch
    assert all(torch.isfinite(t).all() for t in last["decoder"].values())
    assert [r["epoch"] for r in train_mod.read_metrics(run_dir)] == [1, 2]
    monkeypatch.setattr(train_mod, "caption_loss", real_loss)  # the cause fixed: the run resumes from epoch 2
    assert train_mod.main(["--resume", str(run_dir)]) == 0
    assert [r["epoch"] for r in train_mod.read_metrics(run_dir)] == [1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------
# 12: a checkpoint that holds pickled code is refused, and the code never runs
# ---------------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this calls open(marker, 'w'): it creates a file, as an attack could do anything else."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_checkpoint_with_pickled_code_is_refused_and_never_runs(small_run, tiny_shapes, tmp_path, capsys,
                                                                monkeypatch):
    real = torch.load(small_run / "last.pt", weights_only=True)
    # The payload is live: an unsafe load runs it.
    torch.save(dict(real, extra=Payload(tmp_path / "proof")), tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert (tmp_path / "proof").exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(dict(real, extra=Payload(marker)), evil)
    expected = (f"{evil} is not a loadable checkpoint (it holds pickled code (GLOBAL io.open)). Checkpoints are "
                "plain dicts of tensors; files that need pickled code are refused.")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(evil)
    assert str(e.value) == expected
    for cli, argv in ((caption, [str(REPO_ROOT / "images")]), (evaluate, [])):
        assert cli.main(["--checkpoint", str(evil), *argv]) == 1
        assert one_error_line(capsys.readouterr().err) == f"error: {expected}"
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    shutil.copy(evil, run_dir / "last.pt")
    assert train_mod.main(["--resume", str(run_dir)]) == 1
    assert one_error_line(capsys.readouterr().err) == f"error: {expected.replace(str(evil), str(run_dir / 'last.pt'))}"
    # A feature cache file holding code is not used either: it is rebuilt.
    cfg = train_mod.TrainConfig(data_root=str(tiny_shapes), cache_dir=str(tmp_path / "cache"), image_size=64)
    files = sorted((tiny_shapes / "val2017").glob("*.jpg"))
    key = features_mod.cache_key(dataclasses.asdict(cfg), files, "w0")
    cache_file = Path(cfg.cache_dir) / f"{cfg.backbone}-{cfg.image_size}px-g{cfg.grid}-{key[:16]}.pt"
    cache_file.parent.mkdir()
    torch.save({"key": key, "features": Payload(marker)}, cache_file)
    monkeypatch.setattr(features_mod, "compute_features",
                        lambda encoder, f, *a, **k: (torch.zeros(len(f), 3).half(), torch.ones(len(f), dtype=torch.bool), {}))
    features, ok, _ = features_mod.cached_features(None, files, dataclasses.asdict(cfg), cfg.cache_dir, "cpu",
                                                   weights="w0")
    assert features.shape == (len(files), 3)
    assert "is unreadable (UnpicklingError); rebuilding it" in capsys.readouterr().out
    assert not marker.exists()
