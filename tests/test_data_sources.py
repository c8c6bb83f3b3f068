"""Tests of data_sources.py: Flickr8k (original and Kaggle layouts) and Karpathy's split JSON, converted to COCO.

The fixtures are tiny datasets the tests write (image files are a few bytes unless a test decodes them). The
last tests read ../shared/data/flickr8k and skip when it is absent.
"""
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import data_loader as dl
import data_sources as ds
from vocabulary import Vocabulary, read_captions

FLICKR8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"


@pytest.fixture(autouse=True)
def converted_dir(tmp_path, monkeypatch):
    """Every conversion of these tests goes to a temporary folder, never to the repository's data/."""
    out = tmp_path / "converted"
    monkeypatch.setenv(ds.CONVERTED_ENV, str(out))
    return out


# ---------------------------------------------------------------------------------------------------
# Fixtures: the three layouts, written small
# ---------------------------------------------------------------------------------------------------
def image_names(n, prefix="img"):
    return [f"{prefix}{i:03d}_a1b2.jpg" for i in range(n)]


def captions_of(name, k):
    return [f"a dog number {k} runs on grass near {name[:6]}", "two people , one with a red hat , wave",
            'a sign reads "stop" by the road', "a child jumps into water", "the end of the day"][:k]


def write_images(folder, names, size=(6, 4)):
    """Small real JPEGs (the conversion reads their headers for width and height)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(folder / name, "JPEG")


def make_flickr(root, n_train=6, n_val=2, n_test=2, k=5, size=(6, 4)):
    """Flickr8k's original layout: Flicker8k_Dataset/, Flickr8k_text/Flickr8k.token.txt and the split files."""
    names = image_names(n_train + n_val + n_test)
    write_images(root / "Flicker8k_Dataset", names, size)
    text = root / "Flickr8k_text"
    text.mkdir(parents=True)
    lines = [f"{n}#{i}\t{c}" for n in names for i, c in enumerate(captions_of(n, k))]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    splits = {"train": names[:n_train], "val": names[n_train:n_train + n_val], "test": names[n_train + n_val:]}
    for split, part in splits.items():
        if part:
            (text / ds.FLICKR_SPLIT_FILES[split]).write_text("\n".join(part) + "\n")
    return root, splits


def make_kaggle(root, n=24, rows=None):
    """Kaggle's layout: Images/ and captions.txt (a CSV with a header), written by hand to control quoting.
    24 images: the split by file-name hash (no split files) then gives each split at least one (19 / 3 / 2)."""
    names = image_names(n)
    write_images(root / "Images", names)
    if rows is None:
        rows = []
        for name in names:
            for c in captions_of(name, 5):
                rows.append(f'{name},"{c.replace(chr(34), chr(34) * 2)}"' if ("," in c or '"' in c) else f"{name},{c}")
    (root / "captions.txt").write_text("image,caption\n" + "\n".join(rows) + "\n")
    return root, names


def make_karpathy(root, file="dataset_flickr8k.json", splits=("train", "restval", "val", "test"), coco=False):
    """Karpathy's split JSON with one image per split label (two for train), and the images beside it."""
    images = []
    for i, split in enumerate(["train", *splits]):
        name = f"COCO_x_{i:03d}.jpg" if coco else f"k{i:03d}.jpg"
        entry = {"filename": name, "imgid": i, "split": split,
                 "sentences": [{"raw": c, "tokens": c.split()} for c in captions_of(name, 5)]}
        if coco:
            entry["filepath"] = "val2014" if split != "train" else "train2014"
            write_images(root / entry["filepath"], [name])
        else:
            write_images(root / "Images", [name])
        images.append(entry)
    root.mkdir(parents=True, exist_ok=True)
    (root / file).write_text(json.dumps({"images": images, "dataset": file}))
    return root / file, images


def load(path):
    return json.loads(Path(path).read_text())


def all_files(root):
    return sorted(str(p) for p in Path(root).rglob("*"))


# ---------------------------------------------------------------------------------------------------
# The three readers
# ---------------------------------------------------------------------------------------------------
def test_flickr8k_original_layout(tmp_path, converted_dir):
    root, splits = make_flickr(tmp_path / "flickr8k")
    source = ds.detect(root)
    assert source.kind == "flickr8k" and source.image_dir == root / "Flicker8k_Dataset"
    ids = set()
    for split, names in splits.items():
        image_dir, ann = dl.find_split(root, split)
        assert image_dir == root / "Flicker8k_Dataset" and converted_dir in ann.parents
        data = load(ann)
        assert [im["file_name"] for im in data["images"]] == names  # the split file's order
        assert {(im["width"], im["height"]) for im in data["images"]} == {(6, 4)}
        assert len(data["annotations"]) == 5 * len(names)  # every caption kept
        by_image = {im["id"]: im["file_name"] for im in data["images"]}
        for a in data["annotations"]:
            assert a["caption"] in captions_of(by_image[a["image_id"]], 5)
        ids |= set(by_image)
        assert all((image_dir / n).is_file() for n in names)
    assert len(ids) == 10  # image ids are unique across splits


def test_flickr8k_without_test_split(tmp_path):
    root, _ = make_flickr(tmp_path / "f", n_test=0)
    assert len(load(dl.find_split(root, "val")[1])["images"]) == 2
    with pytest.raises(FileNotFoundError, match=r"no 'test' split.*Flickr_8k\.testImages\.txt is absent.*train, val"):
        dl.find_split(root, "test")


def test_kaggle_layout_csv_quirks(tmp_path, capsys):
    rows = ['a.jpg,A dog runs .',
            'a.jpg,"A man , a woman and a dog sit ."',  # a quoted comma
            'a.jpg,"A sign says ""stop"" ."',  # doubled quotes inside quotes
            'a.jpg,A girl, in red, jumps .',  # unquoted commas: joined back, counted
            'a.jpg,"A caption over',  # a quoted line break
            'two lines ."',
            'b.jpg,A cat sleeps .']
    root, _ = make_kaggle(tmp_path / "kaggle", n=0, rows=rows)
    write_images(root / "Images", ["a.jpg", "b.jpg"])
    source = ds.detect(root)
    assert source.kind == "kaggle"
    data = source.read()
    assert data.captions["a.jpg"] == ["A dog runs .", "A man , a woman and a dog sit .", 'A sign says "stop" .',
                                      "A girl, in red, jumps .", "A caption over\ntwo lines ."]
    assert data.skips.counts == {"captions with unquoted commas, joined back": 1}
    assert "captions.txt:5" in data.skips.examples["captions with unquoted commas, joined back"][0]


def test_kaggle_fixed_split_says_so(tmp_path, capsys):
    root, names = make_kaggle(tmp_path / "kaggle", n=24)
    train = load(dl.find_split(root, "train")[1])
    out = capsys.readouterr().out
    assert "NOT the official Flickr8k split" in out and "19 / 3 / 2" in out
    sizes = {s: len(load(dl.find_split(root, s)[1])["images"]) for s in ds.SPLITS}
    assert sizes == {"train": 19, "val": 3, "test": 2}
    assert len(train["annotations"]) == 95
    # Deterministic: the same names land in the same split every time.
    assert ds.fixed_split(names) == ds.fixed_split(list(reversed(names)))
    split = ds.fixed_split(image_names(8091))
    assert [len(split[s]) for s in ds.SPLITS] == [5992, 1002, 1097]  # about 6,000 / 1,000 / 1,091
    assert set(split["train"]).isdisjoint(split["val"]) and set(split["val"]).isdisjoint(split["test"])


def test_kaggle_split_of_an_image_depends_on_its_name_alone(tmp_path, capsys):
    """Removing or adding images moves no other image between splits: the test images stay unseen by a model
    trained on the earlier train split. (A shuffle of the whole list moved most of them, 72 of 99 test images
    into the old train split after one removal from 800.)"""
    names = image_names(800)
    before = ds.fixed_split(names)
    owner = {name: split for split, part in before.items() for name in part}
    for changed in (names[1:], names[:400], names + image_names(50, prefix="new")):
        after = ds.fixed_split(changed)
        assert all(owner.get(name, split) == split for split, part in after.items() for name in part)
    # through the conversion: one image and its captions gone, the others keep their splits
    root, names = make_kaggle(tmp_path / "kaggle", n=40)
    splits = {s: [im["file_name"] for im in load(dl.find_split(root, s)[1])["images"]] for s in ds.SPLITS}
    gone = splits["train"][0]
    (root / "Images" / gone).unlink()
    rows = (root / "captions.txt").read_text().splitlines()
    (root / "captions.txt").write_text("\n".join(r for r in rows if not r.startswith(gone)) + "\n")
    again = {s: [im["file_name"] for im in load(dl.find_split(root, s)[1])["images"]] for s in ds.SPLITS}
    assert again == {**splits, "train": splits["train"][1:]}


@pytest.mark.parametrize("where", ["beside", "Flickr8k_text"])
def test_kaggle_uses_official_split_files(tmp_path, capsys, where):
    root, names = make_kaggle(tmp_path / "kaggle", n=10)
    folder = root if where == "beside" else root / "Flickr8k_text"
    folder.mkdir(exist_ok=True)
    (folder / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:7]))
    (folder / "Flickr_8k.devImages.txt").write_text("\n".join(names[7:]))
    assert [im["file_name"] for im in load(dl.find_split(root, "val")[1])["images"]] == names[7:]
    assert "NOT the official" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        dl.find_split(root, "test")


def test_karpathy_flickr_restval_joins_train(tmp_path):
    path, images = make_karpathy(tmp_path / "k8")
    for root in (tmp_path / "k8", path):  # the folder, or the JSON file itself
        image_dir, ann = dl.find_split(root, "train")
        assert image_dir == tmp_path / "k8" / "Images"
        assert [im["file_name"] for im in load(ann)["images"]] == ["k000.jpg", "k001.jpg", "k002.jpg"]
        assert len(load(ann)["annotations"]) == 15
        for split, name in (("val", "k003.jpg"), ("test", "k004.jpg")):
            assert [im["file_name"] for im in load(dl.find_split(root, split)[1])["images"]] == [name]


def test_karpathy_coco_filepath(tmp_path):
    path, _ = make_karpathy(tmp_path / "coco", file="dataset_coco.json", coco=True)
    image_dir, ann = dl.find_split(path, "test")
    assert image_dir == tmp_path / "coco"
    names = [im["file_name"] for im in load(ann)["images"]]
    assert names == ["val2014/COCO_x_004.jpg"] and (image_dir / names[0]).is_file()
    assert [im["file_name"] for im in load(dl.find_split(path, "train")[1])["images"]] == [
        "train2014/COCO_x_000.jpg", "train2014/COCO_x_001.jpg", "val2014/COCO_x_002.jpg"]


def test_coco_layout_wins_and_unknown_root_lists_every_layout(tmp_path):
    make_flickr(tmp_path / "both")
    ann = tmp_path / "both" / "annotations" / "captions_val2017.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": [], "annotations": []}))
    assert dl.find_split(tmp_path / "both", "val") == (tmp_path / "both" / "val2017", ann)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError) as e:
        dl.find_split(tmp_path / "empty", "train")
    msg = str(e.value)
    for looked_for in ("captions_train2017.json", "Flicker8k_Dataset", "Flickr8k.token.txt", "captions.txt",
                       "Images", "dataset_flickr8k.json", "dataset_coco.json", "python shapes_dataset.py"):
        assert looked_for in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dl.find_split(tmp_path / "nowhere", "train")


# ---------------------------------------------------------------------------------------------------
# Bad input: counted skips naming file and line, or one clear error
# ---------------------------------------------------------------------------------------------------
def converted(root):
    source = ds.detect(root)
    manifest = ds.convert(source)
    return manifest, {s: load(ds.output_dir(source) / f) for s, f in manifest["splits"].items()}


def skip_lines(manifest, reason):
    return [line for line in manifest["skipped"] if reason in line]


def test_flickr8k_bad_lines_are_counted(tmp_path, capsys):
    root, splits = make_flickr(tmp_path / "f", k=2)
    tokens = root / "Flickr8k_text" / "Flickr8k.token.txt"
    with open(tokens, "ab") as f:
        f.write(b"no tab on this line\n")  # line 21
        f.write(b"img000_a1b2.jpg\tno caption number\n")  # line 22
        f.write(b"img000_a1b2.jpg#0\ta repeated caption number\n")  # line 23
        f.write(b"img001_a1b2.jpg#3\tcaf\xe9 in latin-1\n")  # line 24: not UTF-8
        f.write(b"gone.jpg#0\ta caption of a missing image\n")
        f.write(b"gone.jpg#1\tanother one\n")
    write_images(root / "Flicker8k_Dataset", ["uncaptioned.jpg"])
    (root / "Flicker8k_Dataset" / splits["train"][5]).write_bytes(b"not an image")
    with open(root / "Flickr8k_text" / "Flickr_8k.trainImages.txt", "a") as f:
        f.write("unknown.jpg\nimg000_a1b2.jpg\n")  # an unknown image, a repeat
    manifest, data = converted(root)
    out = capsys.readouterr().out
    assert sum(len(d["annotations"]) for d in data.values()) == 18  # the good captions of readable images
    assert [len(d["images"]) for d in data.values()] == [5, 2, 2]
    expect = {"malformed lines": ["Flickr8k.token.txt:21", "Flickr8k.token.txt:22"],
              "repeated caption numbers": ["Flickr8k.token.txt:23"],
              "not UTF-8": ["Flickr8k.token.txt:24"],
              "captions whose image file is missing": ["2 ", "gone.jpg"],
              "images without captions": ["1 ", "uncaptioned.jpg"],
              "split-file names of unknown images": ["Flickr_8k.trainImages.txt:7 unknown.jpg"],
              "repeated split-file names": ["Flickr_8k.trainImages.txt:8 img000_a1b2.jpg"],
              "not readable images": [f"1 ", splits["train"][5], "UnidentifiedImageError"]}
    for reason, parts in expect.items():
        [line] = skip_lines(manifest, reason)
        assert all(p in line for p in parts), line
        assert line in out  # reported when converting
    ds.convert(ds.detect(root))
    assert "malformed" not in capsys.readouterr().out  # reported once, not on every use


def test_image_in_two_splits_is_an_error(tmp_path):
    root, splits = make_flickr(tmp_path / "f")
    with open(root / "Flickr8k_text" / "Flickr_8k.devImages.txt", "a") as f:
        f.write(splits["train"][0] + "\n")
    with pytest.raises(ds.DataSourceError, match=f"Flickr8k_text: image {splits['train'][0]} is in both the train "
                                                 "and the val split"):
        dl.find_split(root, "train")


def test_kaggle_bad_rows(tmp_path):
    rows = ["a.jpg,A dog runs .", "b.jpg,", "missing.jpg,A ghost ."]
    root, _ = make_kaggle(tmp_path / "k", n=0, rows=rows)
    with open(root / "captions.txt", "ab") as f:
        f.write(b"a.jpg,caf\xe9 au lait\n")
    write_images(root / "Images", ["a.jpg", "b.jpg", "c.jpg"])
    manifest, data = converted(root)
    assert sum(len(d["annotations"]) for d in data.values()) == 1 and list(data) == ["train"]
    assert "captions.txt:3" in skip_lines(manifest, "malformed lines")[0]  # line 1 is the header
    assert "captions.txt:5 (byte 10)" in skip_lines(manifest, "not UTF-8")[0]
    assert "missing.jpg" in skip_lines(manifest, "captions whose image file is missing")[0]
    assert skip_lines(manifest, "images without captions")[0].startswith("2 ")  # b.jpg and c.jpg


def test_kaggle_keeps_a_caption_written_twice_for_one_image(tmp_path):
    """Flickr8k has images with one caption written by two annotators: the original layout gives them 5
    references, so Kaggle's must too."""
    rows = [f"a.jpg,{c}" for c in ["A dog runs .", "A dog runs .", "A brown dog .", "A dog on grass .", "Dog ."]]
    root, _ = make_kaggle(tmp_path / "k", n=0, rows=rows)
    write_images(root / "Images", ["a.jpg"])
    data = ds.detect(root).read()
    assert data.captions["a.jpg"] == [r.split(",", 1)[1] for r in rows] and not data.skips.counts


def test_kaggle_without_header_is_an_error(tmp_path):
    root = tmp_path / "k"
    write_images(root / "Images", ["a.jpg"])
    (root / "captions.txt").write_text("name;text\na.jpg;A dog .\n")
    with pytest.raises(ds.DataSourceError, match=r"captions.txt:1: expected the header `image,caption`"):
        dl.find_split(root, "train")


def test_karpathy_bad_entries(tmp_path):
    path, images = make_karpathy(tmp_path / "k")
    data = load(path)
    data["images"] += [dict(images[1]),  # a repeated file name
                       {"filename": "k099.jpg", "split": "train"},  # no sentences
                       {"filename": "nothere.jpg", "split": "val", "sentences": [{"raw": "a ghost ."}]}]
    data["images"][0]["sentences"].append({"raw": 5})
    path.write_text(json.dumps(data))
    manifest, out = converted(tmp_path / "k")
    assert sum(len(d["annotations"]) for d in out.values()) == 25
    assert "dataset_flickr8k.json: images[5] k001.jpg" in skip_lines(manifest, "repeated image names")[0]
    assert "images[6]" in skip_lines(manifest, "malformed entries")[0]
    assert "images[0]" in skip_lines(manifest, "malformed or empty sentences")[0]
    assert "nothere.jpg" in skip_lines(manifest, "captions whose image file is missing")[0]


def test_karpathy_json_errors_name_the_line(tmp_path):
    root = tmp_path / "k"
    root.mkdir()
    (root / "dataset_flickr8k.json").write_bytes(b'{"images": [\n{"filename": "caf\xe9.jpg"}]}')
    with pytest.raises(ds.DataSourceError, match=r"dataset_flickr8k.json:2: bytes that are not UTF-8"):
        dl.find_split(root, "train")
    (root / "dataset_flickr8k.json").write_text('{"images": [\n\n{"filename" "a.jpg"}]}')
    with pytest.raises(ds.DataSourceError, match=r"dataset_flickr8k.json:3: not valid JSON"):
        dl.find_split(root, "train")
    path, _ = make_karpathy(tmp_path / "k2")
    for image in (tmp_path / "k2" / "Images").iterdir():
        image.unlink()
    with pytest.raises(ds.DataSourceError, match="its images .k000.jpg, ....? are in none of"):
        dl.find_split(path, "train")


def test_karpathy_partial_download_finds_the_folder_and_counts_the_missing_images(tmp_path):
    """The JSON's first image is missing (a partial download): the folder is found from those that exist."""
    path, images = make_karpathy(tmp_path / "k")
    (tmp_path / "k" / "Images" / "k000.jpg").unlink()
    manifest, data = converted(tmp_path / "k")
    assert manifest["image_dir"] == str(tmp_path / "k" / "Images")
    assert [im["file_name"] for im in data["train"]["images"]] == ["k001.jpg", "k002.jpg"]
    [line] = skip_lines(manifest, "captions whose image file is missing")
    assert line.startswith("5 ") and line.count("k000.jpg") == 1  # five captions, one example named once


def test_karpathy_json_and_readme_beside_the_images_are_not_images(tmp_path):
    root = tmp_path / "k"
    path, images = make_karpathy(root)
    for image in (root / "Images").iterdir():
        image.rename(root / image.name)  # the images beside the JSON (the candidate folder "")
    (root / "Images").rmdir()
    (root / "README.md").write_text("Karpathy's splits")
    write_images(root, ["uncaptioned.jpg"])
    manifest, _ = converted(root)
    assert manifest["image_dir"] == str(root)
    [line] = skip_lines(manifest, "images without captions")
    assert line.startswith("1 ") and "uncaptioned.jpg" in line


def test_karpathy_coco_conversion_is_redone_when_any_image_folder_changes(tmp_path):
    path, _ = make_karpathy(tmp_path / "coco", file="dataset_coco.json", coco=True)
    source = ds.detect(path)
    assert {tmp_path / "coco" / "train2014", tmp_path / "coco" / "val2014"} <= set(source.inputs)
    stamp = ds.fingerprint(source)
    time.sleep(0.01)
    write_images(tmp_path / "coco" / "val2014", ["COCO_x_099.jpg"])  # val2014: not the first image's folder
    assert ds.fingerprint(ds.detect(path)) != stamp


# ---------------------------------------------------------------------------------------------------
# Where conversions live, and when they are rebuilt
# ---------------------------------------------------------------------------------------------------
def test_rebuilt_when_sources_change_and_never_written_into_the_root(tmp_path, converted_dir):
    root, _ = make_flickr(tmp_path / "f")
    before = all_files(root)
    ann = dl.find_split(root, "train")[1]
    written = ann.stat().st_mtime_ns
    assert dl.find_split(root, "train")[1] == ann and ann.stat().st_mtime_ns == written  # reused as is
    assert not list(converted_dir.rglob(".*tmp*"))  # no temporary file left behind
    tokens = root / "Flickr8k_text" / "Flickr8k.token.txt"
    with open(tokens, "a") as f:
        f.write("img000_a1b2.jpg#5\ta sixth caption arrives\n")
    data = load(dl.find_split(root, "train")[1])
    assert len(data["annotations"]) == 31 and data["annotations"][5]["caption"] == "a sixth caption arrives"
    (root / "Flickr8k_text" / "Flickr_8k.testImages.txt").unlink()  # a removed split file counts too
    with pytest.raises(FileNotFoundError, match="no 'test' split"):
        dl.find_split(root, "test")
    assert all_files(root) == [f for f in before if "testImages" not in f]  # the root itself is untouched
    assert ds.converted_root() == converted_dir and ann.parent.parent == converted_dir


def test_half_written_conversion_is_redone(tmp_path):
    root, _ = make_flickr(tmp_path / "f")
    ann = dl.find_split(root, "val")[1]
    (ann.parent / "captions_train.json").unlink()  # as if a crash struck between two files
    assert len(load(dl.find_split(root, "train")[1])["images"]) == 6
    (ann.parent / "manifest.json").write_text("{half")
    assert len(load(dl.find_split(root, "train")[1])["images"]) == 6


def test_read_only_root(tmp_path):
    """A read-only data root converts (as root, chmod does not stop writes: the file list checks it too)."""
    root, _ = make_flickr(tmp_path / "ro")
    before = all_files(root)
    modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")]}
    for p in modes:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        assert len(load(dl.find_split(root, "train")[1])["annotations"]) == 30
        assert all_files(root) == before
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_two_roots_of_one_name_do_not_mix(tmp_path):
    a, _ = make_flickr(tmp_path / "a" / "flickr8k")
    b, _ = make_flickr(tmp_path / "b" / "flickr8k", n_train=3)
    assert dl.find_split(a, "train")[1] != dl.find_split(b, "train")[1]
    assert len(load(dl.find_split(b, "train")[1])["images"]) == 3


def test_converted_split_trains_like_coco(tmp_path):
    """The vocabulary, the dataset and the loader read a Flickr8k root through find_split like a COCO root."""
    root, splits = make_flickr(tmp_path / "f", size=(24, 24))
    vocab = Vocabulary.build([dl.train_captions_file(root)], threshold=1)
    assert {"dog", "hat", "stop"} <= set(vocab.word2idx)
    assert len(read_captions(dl.train_captions_file(root))) == 30
    dataset = dl.CocoCaptionDataset(*dl.find_split(root, "val"), vocab, dl.get_transform(False, image_size=32))
    assert len(dataset) == 10 and [Path(f).name for f in dataset.image_files] == splits["val"]
    assert dataset.image_report.skipped == 0
    image, caption = dataset[0]
    assert image.shape == (3, 32, 32) and caption[0] == vocab.start_id


# ---------------------------------------------------------------------------------------------------
# The real Flickr8k beside the repository (skipped when absent)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flickr8k():
    if not (FLICKR8K / "Flickr8k_text" / "Flickr8k.token.txt").is_file():
        pytest.skip(f"Flickr8k not found at {FLICKR8K}")
    return FLICKR8K


def test_shared_flickr8k(flickr8k, tmp_path):
    source = ds.detect(flickr8k)
    start = time.perf_counter()
    manifest = ds.convert(source, tmp_path)
    seconds = time.perf_counter() - start
    print(f"Flickr8k converted in {seconds:.2f} s")  # a figure for the notes, not asserted
    assert manifest["sizes"] == {"train": 6000, "val": 1000} and manifest["skipped"] == []
    assert manifest["captions"] == {"train": 30000, "val": 5000}
    val = load(ds.converted_split(source, "val", tmp_path)[1])
    per_image = np.bincount([a["image_id"] for a in val["annotations"]])
    assert set(per_image[per_image > 0]) == {5} and len(val["images"]) == 1000
    names = (flickr8k / "Flickr8k_text" / "Flickr_8k.devImages.txt").read_text().split()
    assert [im["file_name"] for im in val["images"]] == names
    with pytest.raises(FileNotFoundError, match="testImages.txt is absent"):
        ds.converted_split(source, "test", tmp_path)
    assert not os.access(flickr8k, os.W_OK) or not list(flickr8k.rglob("captions_*.json"))


# ---------------------------------------------------------------------------------------------------
# The two commands, end to end, on a Flickr8k folder that holds a test split
# ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::metrics.MissingMetricWarning")  # --backend python: no METEOR
def test_flickr8k_preset_trains_and_evaluate_scores_the_test_split(tmp_path, capsys):
    """train.py --preset flickr8k, then evaluate.py --split test --beam 3 --out EVAL, as the issue runs them
    (sizes shrunk so that it takes seconds): EVAL/scores_test_beam3.json holds every metric, METEOR with Java."""
    import shutil

    import evaluate
    import train

    root, splits = make_flickr(tmp_path / "flickr8k", n_train=8, n_val=2, n_test=3, size=(40, 30))
    run = tmp_path / "out"
    code = train.main(["--preset", "flickr8k", "--data-root", str(root), "--out-dir", str(run), "--run-name", "tiny",
                       "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--image-size", "64",
                       "--hidden-size", "32", "--embed-size", "16", "--vocab-threshold", "1", "--num-workers", "0"])
    assert code in (0, None) and (run / "tiny" / "best.pt").is_file()
    rows = [json.loads(line) for line in (run / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and all("CIDEr" in r and "Bleu_4" in r for r in rows)  # the dev split scored each epoch
    out = tmp_path / "EVAL"
    assert evaluate.main(["--checkpoint", str(run / "tiny" / "best.pt"), "--data-root", str(root), "--split", "test",
                          "--beam", "3", "--out", str(out)]) == 0
    record = json.loads((out / "scores_test_beam3.json").read_text())
    assert record["n_images"] == 3 and record["split"] == "test"
    expected = {"Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"} | ({"METEOR"} if shutil.which("java") else set())
    assert expected <= set(record["scores"])
    captions = json.loads((out / "captions_test_beam3.json").read_text())
    test_ids = {im["id"] for im in load(dl.find_split(root, "test")[1])["images"]}
    assert {c["image_id"] for c in captions} == test_ids
    assert record["chosen_on_this_split"] is False and record["images_trained_on"] == 0
    # the dev split chose best.pt: its scores say so, whichever way the data root is written
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(run / "tiny" / "best.pt"), "--data-root", str(root) + "/",
                          "--split", "val", "--out", str(out), "--backend", "python"]) == 0
    assert "chosen on these val images (its validation split), so these scores are optimistic" in \
        capsys.readouterr().out
    assert json.loads((out / "scores_val_beam1.json").read_text())["chosen_on_this_split"] is True
    # a split redrawn after training: two training images moved to test are counted
    text = root / "Flickr8k_text"
    (text / ds.FLICKR_SPLIT_FILES["train"]).write_text("\n".join(splits["train"][2:]) + "\n")
    (text / ds.FLICKR_SPLIT_FILES["test"]).write_text("\n".join(splits["test"] + splits["train"][:2]) + "\n")
    assert evaluate.main(["--checkpoint", str(run / "tiny" / "best.pt"), "--data-root", str(root), "--split", "test",
                          "--out", str(out), "--backend", "python"]) == 0
    assert "warning: 2 of these 5 test images are among those the checkpoint was trained on" in capsys.readouterr().out
    assert json.loads((out / "scores_test_beam1.json").read_text())["images_trained_on"] == 2


def test_dataset_notebook_on_shared_flickr8k(flickr8k, tmp_path, monkeypatch):
    """0_Dataset with DATA_ROOT set to the Flickr8k folder: its splits, real photos with their five captions."""
    from test_notebooks import n_images, run_notebook, text

    monkeypatch.setenv(ds.CONVERTED_ENV, str(tmp_path / "converted"))  # the kernel inherits it
    nb = run_notebook("0_Dataset", tmp_path, DATA_ROOT=str(flickr8k), N_SAMPLES=4)
    shown = text(nb)
    assert "splits ['train', 'val']" in shown
    assert "| train | 6,000 | 30,000 | 5 |" in shown and "| val | 1,000 | 5,000 | 5 |" in shown
    assert "| 224 x 224 | Flicker8k_Dataset |" in shown
    assert n_images(nb) >= 2  # the walk-through image and the sample grid (then the charts)
    assert "is not a shapes dataset" in shown


def test_data_defaults_pick_the_flickr8k_preset_and_the_split_to_score(tmp_path):
    from train import AUTO_PRESET, PRESETS, make_config

    with_test, _ = make_flickr(tmp_path / "full")
    without, _ = make_flickr(tmp_path / "dev", n_test=0)
    kaggle, _ = make_kaggle(tmp_path / "kaggle")
    assert dl.data_defaults(with_test) == {"kind": "flickr8k", "preset": "flickr8k", "eval_split": "test"}
    assert dl.data_defaults(without) == {"kind": "flickr8k", "preset": "flickr8k", "eval_split": "val"}
    assert dl.data_defaults(kaggle) == {"kind": "kaggle", "preset": "flickr8k", "eval_split": "test"}
    cfg = make_config(AUTO_PRESET, data_root=str(without))
    assert cfg.decoder_dropout == PRESETS["flickr8k"]["decoder_dropout"] and cfg.best_metric == "CIDEr"
    # Karpathy's COCO split is COCO's photographs: the coco preset, wherever the JSON lies
    coco_json, _ = make_karpathy(tmp_path / "karpathy-coco", file="dataset_coco.json", coco=True)
    for root in (coco_json, coco_json.parent):
        assert dl.data_defaults(root) == {"kind": "karpathy", "preset": "coco", "eval_split": "test"}
        assert make_config(AUTO_PRESET, data_root=str(root)).backbone == PRESETS["coco"]["backbone"]
    flickr_json, _ = make_karpathy(tmp_path / "karpathy-8k")
    assert dl.data_defaults(flickr_json)["preset"] == "flickr8k"
