"""Tests of shapes_dataset.py: COCO layout, true captions, held-out pairs, determinism, refusal, object_f1."""
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import shapes_dataset as sd

REPO_ROOT = Path(__file__).resolve().parents[1]
COLOUR_TOLERANCE = 40  # per channel, at an object's centre pixel after JPEG
# Much smaller than the generator's defaults, for the tests that generate their own sets.
SMALL = dict(n_train=12, n_val=4, n_test=4, n_novel=4, image_size=48)

# "a/an/one [size] colour shape", capturing colour and shape.
MENTION = r"(?:a|an|one) (?:(?:small|large) )?(\w+) (\w+)"
RELATION_RE = re.compile(rf"{MENTION} ({'|'.join(sd.RELATIONS)}) {MENTION}")
POSITION_RE = re.compile(rf"{MENTION} (in the centre|(?:at|on) the (?:(?:top|bottom)(?: left| right)?|left|right))")


def tiny_args(root):
    """The arguments the tiny_shapes fixture was made with, read back from its meta file."""
    return json.loads((Path(root) / sd.META_FILE).read_text())["args"]


def generate_kwargs(args):
    """generate() keyword arguments that reproduce a dataset from its recorded arguments."""
    sizes = args["sizes"]
    return dict(n_train=sizes["train"], n_val=sizes["val"], n_test=sizes["test"], n_novel=sizes["test_novel"],
                image_size=args["image_size"], seed=args["seed"])


def captions_by_image(root, split):
    with open(sd.captions_file(root, split)) as f:
        data = json.load(f)
    caps = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        caps[ann["image_id"]].append(ann["caption"])
    return caps


def pairs(objects):
    return Counter((o["colour"], o["shape"]) for o in objects)


def box_centre(obj):
    x, y, w, h = obj["bbox"]
    return x + w / 2, y + h / 2


def tree_hashes(root):
    """{relative path: sha256} of every file under root."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# Layout and content


@pytest.mark.parametrize("split", sd.SPLITS)
def test_split_loads_with_pycocotools(tiny_shapes, split):
    args = tiny_args(tiny_shapes)
    side = args["image_size"]
    coco = COCO(str(sd.captions_file(tiny_shapes, split)))
    assert len(coco.getImgIds()) == args["sizes"][split] > 0
    for img in coco.loadImgs(coco.getImgIds()):
        assert re.fullmatch(r"\d{12}\.jpg", img["file_name"])
        with Image.open(sd.image_dir(tiny_shapes, split) / img["file_name"]) as im:
            assert im.size == (img["width"], img["height"]) == (side, side)
        assert len(coco.getAnnIds(imgIds=img["id"])) == sd.CAPTIONS_PER_IMAGE


def test_image_and_annotation_ids_unique_across_splits(tiny_shapes):
    image_ids, ann_ids = [], []
    for split in sd.SPLITS:
        with open(sd.captions_file(tiny_shapes, split)) as f:
            data = json.load(f)
        image_ids += [img["id"] for img in data["images"]]
        ann_ids += [ann["id"] for ann in data["annotations"]]
        assert set(data) >= {"info", "licenses", "images", "annotations"}
    assert len(set(image_ids)) == len(image_ids) == sum(tiny_args(tiny_shapes)["sizes"].values())
    assert len(set(ann_ids)) == len(ann_ids)
    assert (tiny_shapes / sd.META_FILE).is_file() and not (tiny_shapes / sd.IN_PROGRESS_FILE).exists()


@pytest.mark.parametrize("split", sd.SPLITS)
def test_captions_parse_back_to_ground_truth(tiny_shapes, split):
    truth = sd.load_ground_truth(tiny_shapes, split)
    caps = captions_by_image(tiny_shapes, split)
    assert set(caps) == set(truth)
    for image_id, captions in caps.items():
        assert len(captions) == sd.CAPTIONS_PER_IMAGE
        for caption in captions:
            assert Counter(sd.parse_caption(caption)) == pairs(truth[image_id]), caption
            assert caption == caption.lower()
            n = len(truth[image_id])
            assert ("two shapes" in caption) <= (n == 2) and ("three shapes" in caption) <= (n == 3)


def test_every_object_count_occurs(tiny_shapes):
    counts = Counter(len(objs) for objs in sd.load_ground_truth(tiny_shapes, "train").values())
    assert set(counts) == {1, 2, 3}


def test_spatial_claims_agree_with_boxes(tiny_shapes):
    n_relations = n_positions = 0
    third = tiny_args(tiny_shapes)["image_size"] / 3
    for split in sd.SPLITS:
        truth = sd.load_ground_truth(tiny_shapes, split)
        for image_id, captions in captions_by_image(tiny_shapes, split).items():
            objects = {(o["colour"], o["shape"]): o for o in truth[image_id]}  # pairs are distinct in a scene
            for caption in captions:
                for ca, sa, rel, cb, sb in RELATION_RE.findall(caption):
                    (ax, ay), (bx, by) = box_centre(objects[ca, sa]), box_centre(objects[cb, sb])
                    expected = {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by,
                                "below": ay > by,
                                "next to": abs(ay - by) < third / 2 and third / 2 < abs(ax - bx) < 2 * third,
                                "beside": abs(ay - by) < third / 2 and third / 2 < abs(ax - bx) < 2 * third}
                    assert expected[rel], (caption, objects[ca, sa], objects[cb, sb])
                    n_relations += 1
                for colour, shape, phrase in POSITION_RE.findall(caption):
                    x, y = box_centre(objects[colour, shape])
                    column = "left" if x < third else "right" if x > 2 * third else None
                    row = "top" if y < third else "bottom" if y > 2 * third else None
                    words = set(phrase.split())
                    assert (column in words if column else not words & {"left", "right"}), (caption, x, y)
                    assert (row in words if row else not words & {"top", "bottom"}), (caption, x, y)
                    assert ("centre" in words) == (row is None and column is None)
                    n_positions += 1
    assert n_relations > 20 and n_positions > 20  # the checks above actually ran


def test_objects_are_drawn_where_the_ground_truth_says(tiny_shapes):
    side = tiny_args(tiny_shapes)["image_size"]
    for image_id, objects in sd.load_ground_truth(tiny_shapes, "train").items():
        with Image.open(sd.image_dir(tiny_shapes, "train") / f"{image_id:012d}.jpg") as im:
            pixels = np.asarray(im.convert("RGB"), dtype=int)  # (H, W, 3)
        for i, obj in enumerate(objects):
            x, y = obj["center"]
            assert np.abs(pixels[int(y), int(x)] - sd.COLOURS[obj["colour"]]).max() < COLOUR_TOLERANCE, obj
            bx, by, bw, bh = obj["bbox"]
            assert 0 <= bx and 0 <= by and bx + bw <= side and by + bh <= side
            for other in objects[:i]:  # bounding boxes never overlap
                ox, oy, ow, oh = other["bbox"]
                assert bx + bw <= ox or ox + ow <= bx or by + bh <= oy or oy + oh <= by


def test_sizes_are_clearly_different(tiny_shapes):
    side_by_size = {"small": [], "large": []}
    for objects in sd.load_ground_truth(tiny_shapes, "train").values():
        for obj in objects:
            side_by_size[obj["size"]].append(max(obj["bbox"][2:]))
    assert max(side_by_size["small"]) < min(side_by_size["large"])


def test_vocabulary_is_small(tiny_shapes):
    words = set()
    for split in sd.SPLITS:
        for captions in captions_by_image(tiny_shapes, split).values():
            for caption in captions:
                words.update(re.findall(r"[a-z]+", caption))
    assert set(sd.COLOURS) | set(sd.SHAPES) <= words
    assert len(words) < 100


# ---------------------------------------------------------------------------------------------------------------
# Held-out pairs


def test_held_out_pairs_are_a_tenth_and_leave_every_colour_and_shape_seen():
    assert len(sd.HELD_OUT_PAIRS) == 4 and len(sd.ALL_PAIRS) == 40
    assert {c for c, _ in sd.SEEN_PAIRS} == set(sd.COLOURS)
    assert {s for _, s in sd.SEEN_PAIRS} == set(sd.SHAPES)


def test_held_out_pairs_only_in_test_novel(tiny_shapes):
    held_out = set(sd.HELD_OUT_PAIRS)
    for split in ("train", "val", "test"):
        truth = sd.load_ground_truth(tiny_shapes, split)
        assert not any(set(pairs(objs)) & held_out for objs in truth.values()), split
        for captions in captions_by_image(tiny_shapes, split).values():
            assert not any(set(sd.parse_caption(c)) & held_out for c in captions), split
            # also as plain text, in case a caption ever names a pair in a way the parser misses
            assert not any(f"{c} {s}" in " ".join(captions) for c, s in held_out)
    for image_id, objs in sd.load_ground_truth(tiny_shapes, "test_novel").items():
        assert set(pairs(objs)) & held_out, image_id


# ---------------------------------------------------------------------------------------------------------------
# Determinism, refusal and --force


def test_same_arguments_give_identical_bytes_whatever_the_worker_count(tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(sd, "PARALLEL_MIN_IMAGES", 0)  # force the process pool on a tiny set
    monkeypatch.setattr(sd, "CHUNK_SIZE", 7)
    kwargs = generate_kwargs(tiny_args(tiny_shapes))
    again = sd.generate(tmp_path / "again", **kwargs, workers=2, progress=False)
    assert tree_hashes(again) == tree_hashes(tiny_shapes)


def test_another_seed_gives_other_images_and_captions(tmp_path):
    a = tree_hashes(sd.generate(tmp_path / "a", **SMALL, seed=0, progress=False))
    b = tree_hashes(sd.generate(tmp_path / "b", **SMALL, seed=1, progress=False))
    assert a.keys() == b.keys()
    differing = [name for name in a if a[name] != b[name]]
    assert all(sd.captions_file(Path(), s).as_posix() in differing for s in sd.SPLITS)
    assert sum(name.endswith(".jpg") for name in differing) == sum(SMALL[k] for k in SMALL if k.startswith("n_"))


def test_complete_dataset_is_kept(tmp_path, capsys):
    root = sd.generate(tmp_path / "s", **SMALL, progress=False)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert sd.ensure_shapes(root, **SMALL, progress=False) == root
    assert "already holds a complete shapes dataset" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    assert sd.main(["--out", str(root), "--train", "12", "--val", "4", "--test", "4", "--novel", "4",
                    "--image-size", "48"]) == 0


def test_other_arguments_are_refused_without_force(tmp_path, capsys):
    root = sd.generate(tmp_path / "s", **SMALL, progress=False)
    with pytest.raises(sd.ShapesDatasetError, match="other arguments"):
        sd.generate(root, **{**SMALL, "n_train": 13}, progress=False)
    argv = ["--out", str(root), "--train", "13", "--val", "4", "--test", "4", "--novel", "4", "--image-size", "48"]
    assert sd.main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert sd.main(argv + ["--force"]) == 0
    assert len(list(sd.image_dir(root, "train").glob("*.jpg"))) == 13
    assert json.loads((root / sd.META_FILE).read_text())["args"]["sizes"]["train"] == 13


def test_cli_exits_non_zero_on_refusal(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "notes.txt").write_text("not a dataset")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "shapes_dataset.py"), "--out", str(root), "--train",
                             "4", "--val", "1", "--test", "1", "--novel", "1"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "does not hold a shapes dataset" in result.stderr and "--force" in result.stderr


def test_force_on_a_foreign_folder_removes_only_its_own_files(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(sd.ShapesDatasetError, match="does not hold a shapes dataset"):
        sd.generate(root, **SMALL, progress=False)
    sd.generate(root, **SMALL, force=True, progress=False)
    assert (root / "notes.txt").read_text() == "keep me"
    assert (root / sd.META_FILE).is_file()


def test_interrupted_generation_is_redone(tmp_path):
    root = sd.generate(tmp_path / "s", **SMALL, progress=False)
    reference = tree_hashes(root)
    # What an interruption leaves: the in-progress marker, no meta file, some images.
    (root / sd.META_FILE).unlink()
    (root / sd.IN_PROGRESS_FILE).write_text("{}")
    next(sd.image_dir(root, "val").glob("*.jpg")).unlink()
    sd.ensure_shapes(root, **SMALL, progress=False)
    assert tree_hashes(root) == reference


def test_missing_files_are_refused_without_force(tmp_path):
    root = sd.generate(tmp_path / "s", **SMALL, progress=False)
    next(sd.image_dir(root, "test").glob("*.jpg")).unlink()
    with pytest.raises(sd.ShapesDatasetError, match="incomplete"):
        sd.ensure_shapes(root, **SMALL, progress=False)
    (root / sd.META_FILE).unlink()  # a folder without meta file nor marker is not recognised as ours
    with pytest.raises(sd.ShapesDatasetError, match="does not hold a shapes dataset"):
        sd.ensure_shapes(root, **SMALL, progress=False)
    sd.generate(root, **SMALL, force=True, progress=False)
    assert len(list(sd.image_dir(root, "test").glob("*.jpg"))) == SMALL["n_test"]


# ---------------------------------------------------------------------------------------------------------------
# Parsing, ground truth and object_f1


def test_parse_caption_ignores_case_punctuation_and_sizes():
    assert sd.parse_caption("A Red Circle, next to a LARGE blue-square.") == [("red", "circle"), ("blue", "square")]
    assert sd.parse_caption("one red large star and an orange hexagon") == [("red", "star"), ("orange", "hexagon")]
    assert sd.parse_caption("a red thing beside a circle") == []
    assert sd.parse_caption("") == []


def test_load_ground_truth_from_root_or_file(tiny_shapes, tmp_path):
    from_root = sd.load_ground_truth(tiny_shapes, "val")
    assert from_root == sd.load_ground_truth(sd.objects_file(tiny_shapes, "val"))
    assert len(from_root) == tiny_args(tiny_shapes)["sizes"]["val"] and all(isinstance(k, int) for k in from_root)
    with pytest.raises(FileNotFoundError, match="python shapes_dataset.py"):
        sd.load_ground_truth(tmp_path, "val")


def obj(colour, shape):
    return {"colour": colour, "shape": shape}


GT = {
    1: [obj("red", "circle"), obj("blue", "square")],
    2: [obj("green", "star")],
    3: [obj("white", "hexagon"), obj("black", "triangle"), obj("yellow", "square")],
    4: [obj("purple", "circle")],
}


def test_object_f1_is_one_on_ground_truth_captions(tiny_shapes):
    truth = sd.load_ground_truth(tiny_shapes, "test_novel")
    first = {image_id: caps[0] for image_id, caps in captions_by_image(tiny_shapes, "test_novel").items()}
    assert sd.object_f1(first, truth) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "exact": 1.0,
                                          "n": len(truth)}


@pytest.mark.parametrize("image_id, caption, precision, recall", [
    (1, "a green circle and a blue square", 1 / 2, 1 / 2),  # wrong colour: 1 of 2 mentions right
    (3, "a white hexagon and a black triangle", 2 / 2, 2 / 3),  # missing object
    (2, "a green star beside a small purple hexagon", 1 / 2, 1 / 1),  # extra object
])
def test_object_f1_on_one_wrong_caption(image_id, caption, precision, recall):
    scores = sd.object_f1({image_id: caption}, {image_id: GT[image_id]})
    assert scores["precision"] == pytest.approx(precision) and scores["recall"] == pytest.approx(recall)
    assert scores["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert scores["exact"] == 0.0 and scores["n"] == 1


def test_object_f1_micro_averages_and_counts_exact_matches():
    candidates = {1: "a green circle and a blue square", 2: "a green star beside a small purple hexagon",
                  3: "a white hexagon and a black triangle", 4: "one large purple circle",
                  99: "a red star for an image that is not in the ground truth"}
    scores = sd.object_f1(candidates, GT)
    # true positives 1 + 1 + 2 + 1 = 5; mentions 2 + 2 + 2 + 1 = 7; objects 2 + 1 + 3 + 1 = 7
    assert scores["precision"] == pytest.approx(5 / 7) and scores["recall"] == pytest.approx(5 / 7)
    assert scores["f1"] == pytest.approx(5 / 7)
    assert scores["exact"] == pytest.approx(1 / 4) and scores["n"] == 4


def test_object_f1_handles_empty_and_missing_captions():
    # image 4 is missing: it counts as an empty caption
    scores = sd.object_f1({1: "a red circle and a blue square", 2: "", 3: "nothing to see"}, GT)
    assert scores["precision"] == 1.0
    assert scores["recall"] == pytest.approx(2 / 7) and scores["exact"] == pytest.approx(1 / 4)
    assert sd.object_f1({}, GT) == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "exact": 0.0, "n": 4}
    assert sd.object_f1({}, {})["n"] == 0


def test_import_is_cheap_and_side_effect_free(tmp_path):
    code = "import sys, shapes_dataset; print(sorted(m for m in ('tqdm', 'torch', 'pycocotools') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.stdout.strip() == "[]"
    assert list(tmp_path.iterdir()) == []
