"""Tests of data_loader.py: image loading, transforms, the dataset's skip report, find_split, the sampler, get_loader.

Everything runs on tiny images and caption files the tests write; the last tests read ../shared/data/coco-mini
(real COCO files) and skip when it is absent.
"""
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader as dl
from data_loader import CocoCaptionDataset, ImageLoadError, LengthBatchSampler, get_loader, get_transform, load_image
from vocabulary import Vocabulary

COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini"
S = 32  # image size for the transforms: small keeps the tests fast


# ---------------------------------------------------------------------------------------------------
# Helpers: tiny COCO-format data
# ---------------------------------------------------------------------------------------------------
def coco_json(images, annotations):
    """images: {id: file_name}; annotations: [(ann_id, image_id, caption)]."""
    return {"images": [{"id": i, "file_name": f, "width": 16, "height": 16} for i, f in images.items()],
            "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in annotations]}


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def noise_image(path, size=(16, 16), seed=0, fmt=None):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path, fmt)
    return path


def png_header(width, height):
    """A PNG with a valid signature and IHDR claiming width x height, and no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


WORDS = "red green blue small large circle square triangle left right above below".split()


def make_root(root, n_images=6, captions_per_image=4, split="train", year="2017"):
    """A tiny COCO-layout data root whose captions are all different and have 3 to 6 words."""
    rng = np.random.default_rng(1)
    images, anns = {}, []
    for i in range(1, n_images + 1):
        images[i] = f"{i:012d}.jpg"
        noise_image(root / f"{split}{year}" / images[i], size=(20 + i, 16), seed=i)
        for j in range(captions_per_image):
            n_words = 3 + (i + j) % 4
            words = [WORDS[k] for k in rng.integers(0, len(WORDS), n_words)]
            anns.append((len(anns) + 1, i, f"{' '.join(words)} {i}x{j}."))  # the "ixj" token makes it unique
    write_json(root / "annotations" / f"captions_{split}{year}.json", coco_json(images, anns))
    return root


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------
def test_eval_transform_is_deterministic_and_normalises():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    t = get_transform(train=False, image_size=S)
    a, b = t(img), t(img)
    assert a.shape == (3, S, S) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # An image of the ImageNet mean colour normalises to about zero everywhere.
    mean_colour = tuple(round(m * 255) for m in dl.IMAGENET_MEAN)
    out = t(Image.new("RGB", (50, 40), mean_colour))
    assert out.abs().max() < 0.01


def test_train_transform_shape_and_randomness():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    t = get_transform(train=True, image_size=S)
    torch.manual_seed(0)
    outs = [t(img) for _ in range(6)]
    assert all(o.shape == (3, S, S) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])  # random crops (and flips) differ


def left_right(image_size, hflip, n=30):
    """For n train-transform draws of a red-left / blue-right image: how many came out flipped."""
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:, :32, 0] = 255  # left half red
    arr[:, 32:, 2] = 255  # right half blue
    img, t = Image.fromarray(arr), get_transform(train=True, image_size=image_size, hflip=hflip)
    torch.manual_seed(0)
    flipped = 0
    for _ in range(n):
        x = t(img)  # (3, S, S)
        left_red = bool(x[0, :, 0].mean() > x[2, :, 0].mean())
        right_blue = bool(x[2, :, -1].mean() > x[0, :, -1].mean())
        assert left_red == right_blue  # either as drawn or mirrored, nothing else
        flipped += not left_red
    return flipped


def test_train_transform_without_hflip_never_flips():
    assert left_right(S, hflip=False) == 0
    assert left_right(S, hflip=True) > 0  # the check above can see a flip


# ---------------------------------------------------------------------------------------------------
# load_image: every mode to 8-bit RGB
# ---------------------------------------------------------------------------------------------------
def pixel(path, xy=(0, 0)):
    img = load_image(path)
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_load_image_rgb_png_exact(tmp_path):
    path = noise_image(tmp_path / "x.png", size=(7, 5))
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (7, 5)
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(path)))


def test_load_image_grayscale(tmp_path):
    Image.new("L", (6, 4), 100).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.size == (6, 4) and img.getpixel((3, 2)) == (100, 100, 100)


def test_load_image_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    r, g, b = pixel(tmp_path / "c.jpg", (4, 4))
    assert r > 240 and g < 15 and b < 15


def test_load_image_rgba_over_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])  # transparent, opaque, half
    img.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not the hidden red
    assert out.getpixel((1, 0)) == (0, 0, 255)
    assert all(abs(v - 127) <= 1 for v in out.getpixel((2, 0)))


def test_load_image_palette(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([10, 20, 30, 200, 100, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2])
    img.save(tmp_path / "p.png")
    img.save(tmp_path / "pt.png", transparency=0)  # index 0 transparent
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = load_image(tmp_path / "p.png")
    assert [out.getpixel((x, 0)) for x in range(3)] == [(10, 20, 30), (200, 100, 0), (0, 255, 0)]
    out = load_image(tmp_path / "pt.png")
    assert [out.getpixel((x, 0)) for x in range(3)] == [(255, 255, 255), (200, 100, 0), (0, 255, 0)]


def test_load_image_16bit_keeps_grey_levels(tmp_path):
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    out = load_image(tmp_path / "i16.png")
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


# ---- errors ------------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError) as e:
        load_image(tmp_path / "nope.jpg")
    assert e.value.reason == "missing" and e.value.path == str(tmp_path / "nope.jpg")
    assert isinstance(e.value, ValueError)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError) as e:
        load_image(tmp_path / "empty.jpg")
    assert e.value.reason == "unreadable"


def test_truncated_jpeg(tmp_path):
    full = noise_image(tmp_path / "full.jpg", size=(64, 64)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    # The header is intact, so the cheap check the dataset does at construction passes...
    dl.check_image_header(tmp_path / "cut.jpg")
    # ...but decoding fails loudly instead of returning a half-grey image.
    with pytest.raises(ImageLoadError) as e:
        load_image(tmp_path / "cut.jpg")
    assert e.value.reason == "unreadable"


def test_decompression_bomb_by_limit(tmp_path, monkeypatch):
    noise_image(tmp_path / "x.png", size=(16, 16))
    assert load_image(tmp_path / "x.png").size == (16, 16)
    monkeypatch.setattr(dl, "MAX_IMAGE_PIXELS", 255)
    for check in (load_image, dl.check_image_header):
        with pytest.raises(ImageLoadError) as e:
            check(tmp_path / "x.png")
        assert e.value.reason == "too large" and "16x16" in str(e.value)


@pytest.mark.parametrize("side", [10_000, 100_000])  # PIL warns above 89M pixels and refuses above twice that
def test_decompression_bomb_header(tmp_path, side):
    (tmp_path / "bomb.png").write_bytes(png_header(side, side))
    for check in (load_image, dl.check_image_header):
        with pytest.raises(ImageLoadError) as e:
            check(tmp_path / "bomb.png")
        assert e.value.reason == "too large"


# ---------------------------------------------------------------------------------------------------
# The dataset: skips are counted and summarised
# ---------------------------------------------------------------------------------------------------
LONG_61 = " ".join(["dog"] * 61)
LONG_60 = " ".join(["cat"] * 60)


@pytest.fixture
def messy_root(tmp_path):
    """4 images (1 missing, 1 unreadable) and 10 captions of which 4 are usable."""
    root = tmp_path / "messy"
    noise_image(root / "train2017" / "1.jpg", seed=1)
    noise_image(root / "train2017" / "2.jpg", seed=2)
    (root / "train2017" / "4.jpg").write_bytes(b"this is not a jpeg")  # 3.jpg is missing
    anns = [(1, 1, "A red dog."), (2, 1, "a blue cat"), (3, 2, "red dog"),
            (4, 3, "caption of the missing image"), (5, 4, "caption of the unreadable image"),
            (6, 99, "caption of an image that is not listed"),
            (7, 1, ""), (8, 2, "... !!"), (9, 1, LONG_61), (10, 2, LONG_60)]
    write_json(root / "annotations" / "captions_train2017.json",
               coco_json({1: "1.jpg", 2: "2.jpg", 3: "3.jpg", 4: "4.jpg"}, anns))
    return root


@pytest.fixture
def small_vocab():
    return Vocabulary(["red", "dog", "a", "cat"])


def test_dataset_skips_and_counts(messy_root, small_vocab, capsys):
    ds = CocoCaptionDataset(messy_root / "train2017", messy_root / "annotations" / "captions_train2017.json",
                            small_vocab, transform=get_transform(False, S))
    assert dict(ds.image_report.counts) == {"missing": 1, "unreadable": 1}
    assert ds.image_report.examples == {"missing": ["3.jpg"], "unreadable": ["4.jpg"]}
    assert ds.image_report.summary() == "skipped 2 of 4 images: 1 missing, 1 unreadable"
    assert dict(ds.caption_report.counts) == {"of skipped images": 2, "for unknown image ids": 1, "empty": 2,
                                              "longer than 60 words": 1}
    assert ds.caption_report.summary() == ("skipped 6 of 10 captions: 2 of skipped images, 2 empty, "
                                           "1 for unknown image ids, 1 longer than 60 words")
    printed = capsys.readouterr().out
    assert ds.image_report.summary() in printed and ds.caption_report.summary() in printed
    # What is left: the 4 usable captions, tokenized and framed, pointing at the right images.
    assert ds.image_ids == [1, 2] and ds.ann_ids == [1, 2, 3, 10]
    assert len(ds) == 4
    assert ds.lengths.tolist() == [5, 5, 4, 62]  # a 60-word caption is kept, plus <start> and <end>
    v = small_vocab
    assert ds.caption(0).tolist() == [0, v("a"), v("red"), v("dog"), 1]
    assert ds.caption(1).tolist() == [0, v("a"), v.unk_id, v("cat"), 1]
    assert ds.caption_image.tolist() == [0, 0, 1, 1]
    image, caption = ds[2]
    assert image.shape == (3, S, S) and caption.tolist() == [0, v("red"), v("dog"), 1]
    assert torch.equal(image, get_transform(False, S)(load_image(messy_root / "train2017" / "2.jpg")))
    assert set(ds.references()) == {1, 2}


def test_dataset_strict_raises(messy_root, small_vocab):
    with pytest.raises(ValueError, match=r"skipped 2 of 4 images.*strict mode"):
        CocoCaptionDataset(messy_root / "train2017", messy_root / "annotations" / "captions_train2017.json",
                           small_vocab, strict=True)


def test_dataset_with_nothing_usable(tmp_path, small_vocab):
    ann = write_json(tmp_path / "annotations" / "c.json", coco_json({1: "1.jpg"}, [(1, 1, "a dog")]))
    with pytest.raises(ValueError, match="gives no usable captions"):
        CocoCaptionDataset(tmp_path / "images", ann, small_vocab)


def test_annotation_file_errors(tmp_path, small_vocab):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        CocoCaptionDataset(tmp_path, tmp_path / "bad.json", small_vocab)
    write_json(tmp_path / "inst.json", {"images": [], "categories": []})
    with pytest.raises(ValueError, match=r"lacks the COCO key\(s\) \['annotations'\]"):
        CocoCaptionDataset(tmp_path, tmp_path / "inst.json", small_vocab)
    write_json(tmp_path / "list.json", [1, 2])
    with pytest.raises(ValueError, match="not a COCO caption file"):
        CocoCaptionDataset(tmp_path, tmp_path / "list.json", small_vocab)
    with pytest.raises(FileNotFoundError, match="caption file not found.*shapes_dataset.py"):
        CocoCaptionDataset(tmp_path, tmp_path / "missing.json", small_vocab)


# ---------------------------------------------------------------------------------------------------
# find_split
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("year", ["2014", "2017"])
def test_find_split_coco_names(tmp_path, year):
    ann = write_json(tmp_path / "annotations" / f"captions_val{year}.json", coco_json({}, []))
    assert dl.find_split(tmp_path, "val") == (tmp_path / f"val{year}", ann)


def test_find_split_prefers_2017(tmp_path):
    for year in ("2014", "2017"):
        write_json(tmp_path / "annotations" / f"captions_train{year}.json", coco_json({}, []))
    assert dl.find_split(tmp_path, "train")[0] == tmp_path / "train2017"


def test_find_split_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        dl.find_split(tmp_path, "val")
    msg = str(e.value)
    assert str(tmp_path / "annotations" / "captions_val2017.json") in msg
    assert str(tmp_path / "annotations" / "captions_val2014.json") in msg
    assert "annotations_trainval2017.zip" in msg and "python shapes_dataset.py" in msg
    write_json(tmp_path / "annotations" / "image_info_test2017.json", {"images": []})
    with pytest.raises(FileNotFoundError, match="no public captions"):
        dl.find_split(tmp_path, "test")


# ---------------------------------------------------------------------------------------------------
# LengthBatchSampler
# ---------------------------------------------------------------------------------------------------
LENGTHS = np.random.default_rng(0).integers(4, 9, 103)  # 103 captions of 5 lengths


def flat(batches):
    return np.concatenate([np.asarray(b) for b in batches]) if len(batches) else np.array([], int)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_one_epoch(drop_last):
    s = LengthBatchSampler(LENGTHS, batch_size=4, seed=0, drop_last=drop_last)
    batches = list(s)
    assert len(batches) == len(s)
    assert all(isinstance(i, int) for b in batches for i in b)
    assert all(len({int(LENGTHS[i]) for i in b}) == 1 for b in batches)  # one length per batch
    seen = Counter(flat(batches).tolist())
    assert max(seen.values()) == 1  # nobody twice
    per_length = Counter(LENGTHS.tolist())
    if drop_last:
        assert all(len(b) == 4 for b in batches)
        assert len(seen) == sum(n - n % 4 for n in per_length.values())
    else:
        assert sorted(seen) == list(range(len(LENGTHS)))  # everybody once
        # Only one partial batch per length.
        sizes = Counter(int(LENGTHS[b[0]]) for b in batches if len(b) < 4)
        assert all(v == 1 for v in sizes.values())
        assert len(batches) == sum(-(-n // 4) for n in per_length.values())


def test_sampler_order_depends_on_seed_and_epoch():
    def order(seed, epoch):
        s = LengthBatchSampler(LENGTHS, batch_size=4, seed=seed)
        s.set_epoch(epoch)
        return [list(b) for b in s]

    assert order(0, 0) == order(0, 0)
    assert order(0, 3) == order(0, 3)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0) != order(0, 1)
    s = LengthBatchSampler(LENGTHS, batch_size=4, seed=0)
    assert [b.tolist() for b in s.batches(epoch=1)] == order(0, 1)


@pytest.mark.parametrize("n", [103, 96])  # an odd and an even number of batches
def test_sampler_shards_across_two_ranks(n):
    lengths = LENGTHS[:n]
    whole = [set(b.tolist()) for b in LengthBatchSampler(lengths, 4, seed=5).batches(epoch=2)]
    shards = []
    for rank in (0, 1):
        s = LengthBatchSampler(lengths, 4, seed=5, rank=rank, world_size=2)
        s.set_epoch(2)
        shards.append([set(b) for b in s])
    a, b = (set().union(*shard) for shard in shards)
    assert not a & b  # disjoint
    assert len(shards[0]) == len(shards[1]) == len(whole) // 2  # same number of steps on each rank
    left_out = set(range(n)) - a - b
    if len(whole) % 2:
        assert left_out in whole  # exactly one whole batch is dropped this epoch
    else:
        assert left_out == set()
    assert sorted(flat([sorted(x) for x in shards[0] + shards[1]]).tolist()) == sorted(a | b)  # no repeats


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        LengthBatchSampler(LENGTHS, 0)
    with pytest.raises(ValueError, match="rank 2"):
        LengthBatchSampler(LENGTHS, 4, rank=2, world_size=2)


# ---------------------------------------------------------------------------------------------------
# get_loader
# ---------------------------------------------------------------------------------------------------
def test_get_loader_with_workers_covers_every_caption_each_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default vocabulary goes to ./data/cache
    root = make_root(tmp_path / "data", n_images=6, captions_per_image=4)
    loader = get_loader(get_transform(False, S), mode="train", batch_size=3, vocab_threshold=1, num_workers=2,
                        data_root=root, seed=0)
    ds = loader.dataset
    assert len(ds) == 24 and len(ds.vocab) > 20
    assert (tmp_path / "data" / "cache" / "vocab-data-t1.json").is_file()  # the default: beside the caches
    assert not list(root.glob("*.json"))  # nothing written into the data root
    assert loader.persistent_workers and loader.num_workers == 2
    expected = sorted(tuple(ds.caption(i).tolist()) for i in range(len(ds)))
    orders = []
    for epoch in range(2):
        loader.batch_sampler.set_epoch(epoch)
        seen = []
        for images, captions in loader:
            assert images.shape == (captions.size(0), 3, S, S) and images.dtype == torch.float32
            assert captions.dtype == torch.int64 and captions.dim() == 2
            assert (captions[:, 0] == ds.vocab.start_id).all() and (captions[:, -1] == ds.vocab.end_id).all()
            seen += [tuple(c) for c in captions.tolist()]  # one length per batch, or stacking would fail
        assert sorted(seen) == expected  # every caption exactly once (they are all different)
        orders.append(seen)
    assert orders[0] != orders[1]


def test_get_loader_reads_a_2014_val_split(tmp_path):
    root = make_root(tmp_path / "data", n_images=3, captions_per_image=2, split="train", year="2014")
    make_root(root, n_images=2, captions_per_image=2, split="val", year="2014")
    vocab_file = tmp_path / "v.json"
    loader = get_loader(get_transform(False, S), mode="val", batch_size=8, vocab_threshold=1,
                        vocab_file=vocab_file, data_root=root)
    assert loader.dataset.annotations_file.name == "captions_val2014.json" and len(loader.dataset) == 4
    # The vocabulary is counted from the training captions, whatever the split.
    assert Vocabulary.load(vocab_file).sources[0]["name"] == "captions_train2014.json"
    assert sum(c.size(0) for _, c in loader) == 4



# ---------------------------------------------------------------------------------------------------
# What the data root decides (issue 13, item 10)
# ---------------------------------------------------------------------------------------------------
def test_the_data_root_chooses_its_preset_and_the_split_to_score(tmp_path, tiny_shapes):
    assert dl.data_defaults(tiny_shapes) == {"kind": "shapes", "preset": "shapes-cpu", "eval_split": "test"}
    assert dl.data_defaults(tmp_path / "data" / "shapes")["preset"] == "shapes-cpu"  # generated on first use
    coco = tmp_path / "coco"
    for split in ("train", "val"):
        write_json(coco / "annotations" / f"captions_{split}2017.json", coco_json({}, []))
    write_json(coco / "annotations" / "image_info_test2017.json", {"images": []})  # test images, no captions
    assert dl.data_defaults(coco) == {"kind": "coco", "preset": "coco", "eval_split": "val"}
    write_json(coco / "annotations" / "captions_test2014.json", coco_json({}, []))  # a root with test captions
    assert dl.data_defaults(coco)["eval_split"] == "test"


def test_make_config_auto_follows_the_data_root(tmp_path, tiny_shapes):
    from train import PRESETS, TrainConfig, make_config, parse_args

    coco = tmp_path / "coco"
    write_json(coco / "annotations" / "captions_train2017.json", coco_json({}, []))
    on_coco = make_config(None, data_root=str(coco), epochs=1)
    assert on_coco.data_root == str(coco) and on_coco.epochs == 1  # the root and the flags given win
    assert (on_coco.backbone, on_coco.best_metric) == (PRESETS["coco"]["backbone"], "CIDEr")
    assert make_config("auto", data_root=str(tiny_shapes)).best_metric == "object_f1"
    assert make_config(None) == make_config("shapes-cpu")  # the default root is the shapes data
    assert parse_args(["--preset", "auto", "--data-root", str(coco)]) == make_config("coco", data_root=str(coco))
    assert make_config("seed", data_root=str(coco)) == TrainConfig(data_root=str(coco))  # a named preset stays


def test_get_loader_keeps_tokens_beside_its_vocabulary(tmp_path, tiny_shapes, monkeypatch):
    loader = get_loader(get_transform(False, S), mode="val", batch_size=4, vocab_threshold=1,
                        vocab_file=tmp_path / "v" / "vocab.json", data_root=tiny_shapes)
    names = sorted(p.name.split("-")[1] for p in (tmp_path / "v").glob("tokens-*.json"))
    assert names == ["captions_train2017", "captions_val2017"] and len(loader.dataset) == 80
    monkeypatch.chdir(tmp_path / "v")  # no vocab_file: where its docstring says, train.py's file
    get_loader(get_transform(False, S), mode="val", batch_size=4, vocab_threshold=1, data_root=tiny_shapes)
    assert (tmp_path / "v" / "data" / "cache" / "vocab-shapes-t1.json").is_file()
    assert len(list((tmp_path / "v" / "data" / "cache").glob("tokens-*.json"))) == 2


# ---------------------------------------------------------------------------------------------------
# Real COCO files (../shared/data/coco-mini), skipped when absent
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coco_mini_root():
    if not (COCO_MINI / "annotations" / "captions_train2017.json").is_file():
        pytest.skip(f"real COCO sample not found at {COCO_MINI}")
    return COCO_MINI


@pytest.mark.parametrize("split, n_images, n_captions", [("train", 80, 400), ("val", 159, 795)])
def test_real_coco_splits(coco_mini_root, tmp_path, split, n_images, n_captions):
    loader = get_loader(get_transform(False, S), mode=split, batch_size=16, vocab_threshold=2,
                        vocab_file=tmp_path / "vocab.json", data_root=coco_mini_root)
    ds = loader.dataset
    assert (len(ds.image_ids), len(ds)) == (n_images, n_captions)
    assert ds.image_report.skipped == 0 and ds.caption_report.skipped == 0
    assert ds.image_report.summary() == f"all {n_images} images usable"
    images, captions = next(iter(loader))
    assert images.shape == (captions.size(0), 3, S, S)
    assert (captions[:, -1] == ds.vocab.end_id).all()


def test_real_coco_grayscale_image_loads_as_rgb(coco_mini_root, tmp_path):
    image_dir, ann = dl.find_split(coco_mini_root, "val")
    grey = [p for p in sorted(image_dir.glob("*.jpg")) if Image.open(p).mode == "L"]
    assert grey, "coco-mini is expected to hold a grayscale image"
    vocab = Vocabulary.build([ann], threshold=5)
    ds = CocoCaptionDataset(image_dir, ann, vocab, transform=get_transform(False, S))
    index = next(i for i in range(len(ds)) if ds.image_files[ds.caption_image[i]] == grey[0])
    image, _ = ds[index]
    assert image.shape == (3, S, S)
    rgb = np.asarray(load_image(grey[0]))  # (H, W, 3)
    assert rgb.shape[2] == 3 and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
