"""Shapes: a small captioning dataset in COCO format that the repository generates itself.

Each image holds 1 to 3 coloured shapes on a muted background; each has five true captions such as
"a red circle to the left of a small blue square". A few colour-shape pairs (HELD_OUT_PAIRS) never occur in
train or val and make up the `test_novel` split, which tests whether a model composes colours and shapes it
has only seen apart. Ground-truth objects are saved next to the captions so that generated captions can be
checked against the scene (`parse_caption`, `object_f1`).

    python shapes_dataset.py --out data/shapes            # 5000/500/500/500 images at 128 px
"""
import argparse
import json
import multiprocessing
import os
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SPLITS = ("train", "val", "test", "test_novel")
SHAPES = ("circle", "square", "triangle", "star", "hexagon")
# Saturated RGB values, far from each other and from the muted backgrounds below.
COLOURS = {
    "red": (225, 30, 35),
    "green": (30, 170, 50),
    "blue": (30, 80, 225),
    "yellow": (245, 220, 30),
    "purple": (145, 45, 190),
    "orange": (250, 140, 20),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
# 4 of the 40 colour-shape pairs (10%), never in train or val. Each uses a different colour and shape, so every
# colour and every shape still appears in train through its other pairs.
HELD_OUT_PAIRS = (("red", "triangle"), ("green", "star"), ("blue", "hexagon"), ("orange", "circle"))
ALL_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)

IMAGE_SIZE = 128  # px; the CNN encoder runs ~4x faster on CPU at 128 than at 224
MIN_IMAGE_SIZE = 32  # px; below this a small shape is a few pixels wide
DEFAULT_SIZES = {"train": 5000, "val": 500, "test": 500, "test_novel": 500}
DEFAULT_SEED = 0
JPEG_QUALITY = 95  # with 4:4:4 chroma (no subsampling) so colours stay clean at shape edges
CAPTIONS_PER_IMAGE = 5  # as in COCO
MAX_OBJECTS = 3

# Objects sit in distinct cells of a 3x3 grid, so a position word ("top left") is just the cell's name.
GRID = 3
# Diameter of the circle each shape is inscribed in, as a fraction of the image side. A grid cell is 1/3 of the
# side: a large shape (0.30) nearly fills one, a small one (0.19) is ~0.6 of it, ~2.5x smaller in area. At
# 128 px that is 38 and 24 px, both well above what an ImageNet CNN resolves.
SIZE_FRACTIONS = {"small": 0.19, "large": 0.30}
JITTER_FRACTION = 0.05  # centre offset from the cell centre; keeps centres >= 0.11 of the side from cell borders
MIN_GAP_FRACTION = 0.02  # minimal empty space between two objects' bounding squares
EDGE_MARGIN_FRACTION = 0.02  # minimal space between an object and the image border
ROTATION_DEG = 15  # small, so that a square never reads as a diamond
CIRCLE_SCALE = 0.9  # a circle filling its whole circumscribing circle looks bigger than the polygons
STAR_INNER_RATIO = 0.45  # inner / outer radius of the five-pointed star
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, for anti-aliased edges
MAX_PLACEMENT_TRIES = 200

# Muted mid-tone backgrounds: grey levels in this range plus a small tint, so that white, black and every
# saturated colour stay clearly distinct from them.
BACKGROUNDS = ("plain", "gradient", "noise")
BG_LEVEL_RANGE = (100, 160)
BG_TINT = 15
BG_NOISE_STD = 6.0

# "A left of B" when A's centre is this fraction of the side left of B's. Centres in the same column differ by at
# most 2 * JITTER_FRACTION (0.10) and in different columns by at least 1/3 - 0.10 (0.23), so this margin makes
# the relations coincide with grid columns (rows for above/below) and never borderline.
SPATIAL_MARGIN_FRACTION = 0.15
SIZE_WORD_PROB = 0.5  # share of captions that name the sizes
MAX_CAPTION_TRIES = 50
FORMAT_VERSION = 1
META_FILE = "shapes_meta.json"
IN_PROGRESS_FILE = ".shapes_in_progress"  # exists only while a generation runs
CHUNK_SIZE = 100  # images per worker task
PARALLEL_MIN_IMAGES = 400  # below this a process pool costs more than it saves

# Caption templates per object count. {aN}: "a/an [size] colour shape", {oneN}: "one ...", {nN}: no determiner,
# {posN}: "at the top left" etc., {rel}: a true relation of object 0 to object 1.
# Every template names every object exactly once, so a caption parses back to the scene's objects.
TEMPLATES = {
    1: (
        "{a0}",
        "{one0}",
        "there is {a0}",
        "a single {n0}",
        "{a0} {pos0}",
        "there is {one0} {pos0}",
        "a single {n0} {pos0}",
    ),
    2: (
        "{a0} and {a1}",
        "{one0} and {one1}",
        "there is {a0} and {a1}",
        "two shapes, {a0} and {a1}",
        "{a0} {pos0} and {a1} {pos1}",
        "{a0} {rel} {a1}",
        "there is {a0} {rel} {a1}",
    ),
    3: (
        "{a0}, {a1} and {a2}",
        "{one0}, {one1} and {one2}",
        "there is {a0}, {a1} and {a2}",
        "three shapes, {a0}, {a1} and {a2}",
        "{a0} {pos0}, {a1} {pos1} and {a2} {pos2}",
        "{a0} {rel} {a1} and {a2} {pos2}",
    ),
}
RELATIONS = ("to the left of", "to the right of", "above", "below", "next to", "beside")
SIZE_WORDS = tuple(SIZE_FRACTIONS)


class ShapesDatasetError(RuntimeError):
    """The output folder holds something that generation will not overwrite without force."""


# ---------------------------------------------------------------------------------------------------------------
# Scenes


def _image_rng(seed, split, index):
    """One generator per image, so images do not depend on worker count or on other images."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _cell_name(row, col):
    """Position words of a grid cell: 'top left', 'left', 'centre', ..."""
    vertical = {0: "top", GRID - 1: "bottom"}.get(row, "")
    horizontal = {0: "left", GRID - 1: "right"}.get(col, "")
    return " ".join(w for w in (vertical, horizontal) if w) or "centre"


def position_phrase(position):
    """'at the top left', 'on the left', 'in the centre', ... for a position from _cell_name."""
    if position == "centre":
        return "in the centre"
    return f"{'on' if position in ('left', 'right') else 'at'} the {position}"


def _sample_pairs(rng, split, k):
    """k distinct (colour, shape) pairs; test_novel scenes include at least one held-out pair."""
    if split != "test_novel":
        idx = rng.choice(len(SEEN_PAIRS), size=k, replace=False)
        return [SEEN_PAIRS[i] for i in idx]
    first = HELD_OUT_PAIRS[rng.integers(len(HELD_OUT_PAIRS))]
    rest = [p for p in ALL_PAIRS if p != first]
    pairs = [first] + [rest[i] for i in rng.choice(len(rest), size=k - 1, replace=False)]
    return [pairs[i] for i in rng.permutation(k)]  # the held-out object is not always first


def _place(rng, sizes, image_size):
    """Centres (x, y), grid cells and radii of objects of the given sizes, no two closer than the gap."""
    cell = image_size / GRID
    gap, edge = MIN_GAP_FRACTION * image_size, EDGE_MARGIN_FRACTION * image_size
    radii = [SIZE_FRACTIONS[s] * image_size / 2 for s in sizes]
    for _ in range(MAX_PLACEMENT_TRIES):
        cells = rng.choice(GRID * GRID, size=len(sizes), replace=False)
        jitter = rng.uniform(-JITTER_FRACTION, JITTER_FRACTION, size=(len(sizes), 2)) * image_size
        centres = []
        for c, r, (jx, jy) in zip(cells, radii, jitter):
            row, col = divmod(int(c), GRID)
            x = np.clip((col + 0.5) * cell + jx, r + edge, image_size - r - edge)
            y = np.clip((row + 0.5) * cell + jy, r + edge, image_size - r - edge)
            centres.append((float(x), float(y)))
        if all(_apart(centres[i], radii[i], centres[j], radii[j], gap)
               for i in range(len(sizes)) for j in range(i)):
            return centres, [divmod(int(c), GRID) for c in cells], radii
    raise RuntimeError(f"could not place {len(sizes)} objects in {MAX_PLACEMENT_TRIES} tries")


def _apart(c1, r1, c2, r2, gap):
    """True when the bounding squares of two objects are at least `gap` apart along x or y."""
    return abs(c1[0] - c2[0]) >= r1 + r2 + gap or abs(c1[1] - c2[1]) >= r1 + r2 + gap


def _vertices(shape, x, y, r, rotation_deg):
    """Polygon vertices of a shape inscribed in the circle of radius r around (x, y); None for a circle."""
    if shape == "circle":
        return None
    if shape == "star":
        angles = np.deg2rad(rotation_deg - 90 + 36 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, r, STAR_INNER_RATIO * r)
    else:
        n, start = {"square": (4, 45), "triangle": (3, -90), "hexagon": (6, 0)}[shape]
        angles = np.deg2rad(rotation_deg + start + 360 / n * np.arange(n))
        radii = np.full(n, r)
    return np.stack([x + radii * np.cos(angles), y + radii * np.sin(angles)], axis=1)  # (n, 2)


def _bbox(shape, x, y, r, vertices):
    """COCO box [x, y, width, height] in pixels."""
    if vertices is None:
        rc = CIRCLE_SCALE * r
        return [x - rc, y - rc, 2 * rc, 2 * rc]
    (x0, y0), (x1, y1) = vertices.min(axis=0), vertices.max(axis=0)
    return [x0, y0, x1 - x0, y1 - y0]


def _sample_scene(rng, split, image_size):
    """Objects (plain dicts, as saved in the ground truth) and a background description."""
    k = int(rng.integers(1, MAX_OBJECTS + 1))
    pairs = _sample_pairs(rng, split, k)
    sizes = [SIZE_WORDS[i] for i in rng.integers(len(SIZE_WORDS), size=k)]
    centres, cells, radii = _place(rng, sizes, image_size)
    objects = []
    for (colour, shape), size, (x, y), (row, col), r in zip(pairs, sizes, centres, cells, radii):
        rotation = 0.0 if shape == "circle" else float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
        box = _bbox(shape, x, y, r, _vertices(shape, x, y, r, rotation))
        objects.append({
            "colour": colour, "shape": shape, "size": size, "position": _cell_name(row, col),
            "cell": [row, col], "center": _round([x, y]), "radius": round(r, 2),
            "rotation": round(rotation, 2), "bbox": _round(box),
        })
    background = {"kind": BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
                  "colours": [_muted_tone(rng), _muted_tone(rng)], "angle": round(float(rng.uniform(0, 360)), 2)}
    return objects, background


def _muted_tone(rng):
    """A low-saturation mid-grey RGB triple."""
    level = rng.uniform(*BG_LEVEL_RANGE)
    return [int(round(level + t)) for t in rng.uniform(-BG_TINT, BG_TINT, size=3)]


def _round(values, digits=2):
    return [round(float(v), digits) for v in values]


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _render_background(rng, background, image_size):
    """(H, W, 3) float32 background: plain, a linear gradient, or a plain tone with light noise."""
    c0, c1 = (np.array(c, dtype=np.float32) for c in background["colours"])
    img = np.broadcast_to(c0, (image_size, image_size, 3)).astype(np.float32)
    if background["kind"] == "gradient":
        coords = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size - 0.5
        theta = np.deg2rad(background["angle"])
        t = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]  # (H, W)
        t = (t - t.min()) / (t.max() - t.min())
        img = c0 + (c1 - c0) * t[..., None]  # (H, W, 3)
    elif background["kind"] == "noise":
        img = img + rng.normal(0.0, BG_NOISE_STD, size=(image_size, image_size, 1)).astype(np.float32)
    return img


def _object_alpha(obj, image_size):
    """(H, W) float32 coverage of one object, anti-aliased by supersampling."""
    s = SUPERSAMPLE
    mask = Image.new("L", (image_size * s, image_size * s), 0)
    draw = ImageDraw.Draw(mask)
    (x, y), r = obj["center"], obj["radius"]
    vertices = _vertices(obj["shape"], x, y, r, obj["rotation"])
    if vertices is None:
        rc = CIRCLE_SCALE * r
        draw.ellipse([(x - rc) * s, (y - rc) * s, (x + rc) * s, (y + rc) * s], fill=255)
    else:
        draw.polygon([tuple(v) for v in vertices * s], fill=255)
    return np.asarray(mask.reduce(s), dtype=np.float32) / 255.0


def render(objects, background, rng, image_size):
    """The scene as an (H, W, 3) uint8 array."""
    img = _render_background(rng, background, image_size)
    for obj in objects:
        alpha = _object_alpha(obj, image_size)[..., None]  # (H, W, 1)
        img = img * (1 - alpha) + np.array(COLOURS[obj["colour"]], dtype=np.float32) * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Captions


def relations(a, b, image_size):
    """Relation phrases that are true of object a with respect to object b."""
    margin = SPATIAL_MARGIN_FRACTION * image_size
    (ax, ay), (bx, by) = a["center"], b["center"]
    found = []
    if ax < bx - margin:
        found.append("to the left of")
    if ax > bx + margin:
        found.append("to the right of")
    if ay < by - margin:
        found.append("above")
    if ay > by + margin:
        found.append("below")
    # Same row, neighbouring columns: what "next to" and "beside" mean in a grid scene.
    if a["cell"][0] == b["cell"][0] and abs(a["cell"][1] - b["cell"][1]) == 1:
        found += ["next to", "beside"]
    return found


def _phrases(obj, with_size):
    """Fill-ins for one object: with 'a/an', with 'one', and bare."""
    bare = " ".join(([obj["size"]] if with_size else []) + [obj["colour"], obj["shape"]])
    article = "an" if bare[0] in "aeiou" else "a"
    return {"a": f"{article} {bare}", "one": f"one {bare}", "n": bare}


def _one_caption(rng, objects, image_size):
    """One random true caption for the scene."""
    order = [objects[i] for i in rng.permutation(len(objects))]
    template = TEMPLATES[len(objects)][rng.integers(len(TEMPLATES[len(objects)]))]
    with_size = bool(rng.random() < SIZE_WORD_PROB)
    fields = {}
    for i, obj in enumerate(order):
        fields.update({f"{k}{i}": v for k, v in _phrases(obj, with_size).items()})
        fields[f"pos{i}"] = position_phrase(obj["position"])
    if "{rel}" in template:
        true_rels = relations(order[0], order[1], image_size)  # never empty: objects are in distinct cells
        fields["rel"] = true_rels[rng.integers(len(true_rels))]
    return template.format(**fields)


def make_captions(rng, objects, image_size, n=CAPTIONS_PER_IMAGE):
    """n true captions, distinct where the templates allow it."""
    captions = []
    for _ in range(MAX_CAPTION_TRIES):
        caption = _one_caption(rng, objects, image_size)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == n:
            return captions
    return [captions[i % len(captions)] for i in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# Parsing and scoring


def parse_caption(caption):
    """The (colour, shape) mentions of a caption, in order; size words between them are ignored."""
    words = re.sub(r"[^a-z]+", " ", caption.lower()).split()
    mentions = []
    for i, word in enumerate(words):
        if word not in COLOURS:
            continue
        j = i + 1
        while j < len(words) and words[j] in SIZE_WORDS:
            j += 1
        if j < len(words) and words[j] in SHAPES:
            mentions.append((word, words[j]))
    return mentions


def object_f1(candidates, ground_truth):
    """Micro precision/recall/F1 of caption mentions against scene objects, and the share of exact matches.

    candidates: {image_id: caption}; ground_truth: {image_id: [object dict, ...]} from load_ground_truth.
    Images missing from candidates count as empty captions; candidates for unknown images are ignored.
    """
    tp = n_pred = n_true = exact = 0
    for image_id, objects in ground_truth.items():
        truth = Counter((o["colour"], o["shape"]) for o in objects)
        pred = Counter(parse_caption(candidates.get(image_id, "")))
        tp += sum((truth & pred).values())
        n_pred += sum(pred.values())
        n_true += sum(truth.values())
        exact += truth == pred
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = len(ground_truth)
    return {"precision": precision, "recall": recall, "f1": f1, "exact": exact / n if n else 0.0, "n": n}


# ---------------------------------------------------------------------------------------------------------------
# Files


def image_dir(root, split):
    return Path(root) / f"{split}2017"


def captions_file(root, split):
    return Path(root) / "annotations" / f"captions_{split}2017.json"


def objects_file(root, split):
    return Path(root) / "annotations" / f"objects_{split}2017.json"


def load_ground_truth(path_or_root, split="test"):
    """{image_id: [object dict, ...]} from an objects_<split>2017.json file or a dataset root."""
    path = Path(path_or_root)
    if path.is_dir():
        path = objects_file(path, split) if (path / "annotations").is_dir() else path / f"objects_{split}2017.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shapes ground truth at {path}; "
                                f"make it with: python shapes_dataset.py --out {Path(path_or_root)}")
    with open(path) as f:
        data = json.load(f)
    return {img["id"]: img["objects"] for img in data["images"]}


def _make_image(task):
    """Render, save and describe one image. task = (split, index, image_id, image_size, seed, folder)."""
    split, index, image_id, image_size, seed, folder = task
    rng = _image_rng(seed, split, index)
    objects, background = _sample_scene(rng, split, image_size)
    pixels = render(objects, background, rng, image_size)
    captions = make_captions(rng, objects, image_size)
    file_name = f"{image_id:012d}.jpg"
    Image.fromarray(pixels).save(Path(folder) / file_name, "JPEG", quality=JPEG_QUALITY, subsampling=0)
    return {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size,
            "background": background["kind"], "objects": objects, "captions": captions}


def _make_chunk(tasks):
    return [_make_image(t) for t in tasks]


def _info(args):
    # Nothing time-dependent here: the same arguments must give byte-identical files.
    return {"description": "Shapes: synthetic captioning dataset made by shapes_dataset.py",
            "version": str(FORMAT_VERSION), "contributor": "shapes_dataset.py", "url": "",
            "date_created": "", "generator_args": args}


LICENSES = [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]


def _write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, sort_keys=True, separators=(",", ":"))


def _write_split(root, split, records, args):
    """Write the COCO captions file and the ground-truth objects file of one split."""
    records = sorted(records, key=lambda r: r["id"])
    images = [{"id": r["id"], "file_name": r["file_name"], "width": r["width"], "height": r["height"],
               "license": 1} for r in records]
    # Annotation ids are unique across splits because image ids are.
    annotations = [{"id": (r["id"] - 1) * CAPTIONS_PER_IMAGE + k + 1, "image_id": r["id"], "caption": c}
                   for r in records for k, c in enumerate(r["captions"])]
    _write_json(captions_file(root, split), {"info": _info(args), "licenses": LICENSES,
                                            "images": images, "annotations": annotations})
    gt_images = [{k: r[k] for k in ("id", "file_name", "width", "height", "background", "objects")}
                 for r in records]
    held_out = [list(p) for p in HELD_OUT_PAIRS]
    _write_json(objects_file(root, split), {"info": _info(args), "held_out_pairs": held_out, "images": gt_images})


def _run_tasks(tasks, workers, desc, progress):
    """_make_image over tasks, in order, in a process pool when it is worth it."""
    from tqdm import tqdm  # imported here so that importing this module stays cheap

    chunks = [tasks[i:i + CHUNK_SIZE] for i in range(0, len(tasks), CHUNK_SIZE)]
    records = []
    with tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress) as bar:
        if workers <= 1 or len(tasks) < PARALLEL_MIN_IMAGES:
            for chunk in chunks:
                records += _make_chunk(chunk)
                bar.update(len(chunk))
        else:
            with multiprocessing.Pool(workers) as pool:
                for chunk_records in pool.imap(_make_chunk, chunks):
                    records += chunk_records
                    bar.update(len(chunk_records))
    return records


# ---------------------------------------------------------------------------------------------------------------
# Generation


def _args(n_train, n_val, n_test, n_novel, image_size, seed):
    """The arguments that determine the dataset's content, as recorded in shapes_meta.json."""
    return {"format_version": FORMAT_VERSION, "image_size": image_size, "seed": seed,
            "sizes": {"train": n_train, "val": n_val, "test": n_test, "test_novel": n_novel}}


def _our_paths(root):
    """Everything generation writes, so that --force removes nothing else."""
    return ([image_dir(root, s) for s in SPLITS] + [captions_file(root, s) for s in SPLITS]
            + [objects_file(root, s) for s in SPLITS] + [root / META_FILE, root / IN_PROGRESS_FILE])


def _recorded_args(root):
    """The arguments in root's shapes_meta.json, or None when it is missing or unreadable."""
    try:
        with open(root / META_FILE) as f:
            return json.load(f).get("args")
    except (OSError, ValueError, AttributeError):
        return None


def _is_complete(root, args):
    """True when root holds a finished dataset generated with exactly these arguments."""
    if (root / IN_PROGRESS_FILE).exists() or _recorded_args(root) != args:
        return False
    for split in SPLITS:
        if not (captions_file(root, split).is_file() and objects_file(root, split).is_file()):
            return False
        folder = image_dir(root, split)
        n_images = sum(1 for p in folder.iterdir() if p.suffix == ".jpg") if folder.is_dir() else -1
        if n_images != args["sizes"][split]:
            return False
    return True


def _refusal(root, args):
    """Why root must not be overwritten without force, or None when it may be written."""
    if not root.exists() or not any(root.iterdir()):
        return None
    if (root / IN_PROGRESS_FILE).exists():
        return None  # an interrupted generation of ours: safe to redo
    hint = "pass --force (force=True) to overwrite it, or choose another --out"
    old = _recorded_args(root)
    if old is None:
        return f"{root} exists and does not hold a shapes dataset (no readable {META_FILE}); {hint}"
    if old != args:
        return f"{root} holds a shapes dataset made with other arguments ({old}, wanted {args}); {hint}"
    return f"{root} holds an incomplete shapes dataset (files are missing); {hint}"


def _clear(root):
    for path in _our_paths(root):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def generate(out, n_train=DEFAULT_SIZES["train"], n_val=DEFAULT_SIZES["val"], n_test=DEFAULT_SIZES["test"],
             n_novel=DEFAULT_SIZES["test_novel"], image_size=IMAGE_SIZE, seed=DEFAULT_SEED, force=False,
             *, workers=None, progress=True):
    """Write the dataset to `out` and return its Path.

    A complete dataset made with the same arguments is kept (unless force); anything else already in `out`
    raises ShapesDatasetError unless force, which removes only the files this function writes.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ShapesDatasetError(f"{root} is a file, not a folder; choose another --out")
    args = _args(n_train, n_val, n_test, n_novel, image_size, seed)
    if min(args["sizes"].values()) < 0 or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"need image counts >= 0 and image_size >= {MIN_IMAGE_SIZE}, got {args}")
    if not force and _is_complete(root, args):
        print(f"{root} already holds a complete shapes dataset made with these arguments; "
              f"nothing to do (use --force to regenerate)")
        return root
    if not force and (reason := _refusal(root, args)):
        raise ShapesDatasetError(reason)
    _clear(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / IN_PROGRESS_FILE).write_text(json.dumps(args, sort_keys=True))
    _write_splits(root, args, workers or os.cpu_count() or 1, progress)
    # Written last: a folder without it (or still with the in-progress marker) is a half-written one.
    _write_json(root / META_FILE, {"args": args, "generator": "shapes_dataset.py"})
    (root / IN_PROGRESS_FILE).unlink()
    return root


def _write_splits(root, args, workers, progress):
    """Render and write the images and annotation files of every split."""
    next_id = 1  # image ids are unique across splits
    for split in SPLITS:
        folder = image_dir(root, split)
        folder.mkdir(parents=True)
        n = args["sizes"][split]
        tasks = [(split, i, next_id + i, args["image_size"], args["seed"], str(folder)) for i in range(n)]
        _write_split(root, split, _run_tasks(tasks, workers, split, progress), args)
        next_id += n


def ensure_shapes(out="data/shapes", **kwargs):
    """The dataset at `out`, generated first unless it is already complete with these arguments."""
    return generate(out, **kwargs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="data/shapes", help="output folder")
    p.add_argument("--train", type=int, default=DEFAULT_SIZES["train"], help="number of train images")
    p.add_argument("--val", type=int, default=DEFAULT_SIZES["val"], help="number of val images")
    p.add_argument("--test", type=int, default=DEFAULT_SIZES["test"], help="number of test images")
    p.add_argument("--novel", type=int, default=DEFAULT_SIZES["test_novel"],
                   help="number of test_novel images (each with a held-out colour-shape pair)")
    p.add_argument("--image-size", type=int, default=IMAGE_SIZE, help="image side in pixels")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes")
    p.add_argument("--force", action="store_true", help="overwrite whatever generated files the folder holds")
    return p.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    try:
        root = generate(a.out, a.train, a.val, a.test, a.novel, a.image_size, a.seed, a.force, workers=a.workers)
    except (ShapesDatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"shapes dataset ready in {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
