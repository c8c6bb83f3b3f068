"""Caption datasets in other people's layouts, converted to the COCO captions format the rest of the code reads.

    source = detect("path/to/flickr8k")         # which layout a folder holds, or None
    image_dir, captions_json = converted_split(source, "val")   # converts once, then reuses

Layouts read (the splits are always named `train`, `val` (the development split) and `test`):
    flickr8k   Flickr8k as distributed: Flicker8k_Dataset/ (sic) and Flickr8k_text/ holding Flickr8k.token.txt
               (`<image>#<k>` TAB caption) and Flickr_8k.{train,dev,test}Images.txt (a missing one: no such split)
    kaggle     Kaggle's Flickr8k: Images/ and captions.txt (a CSV with the header `image,caption`). The official
               split files are used when they sit beside it (or in Flickr8k_text/); otherwise each image's split
               follows from a hash of its file name (about 6,000 / 1,000 / rest), with a note saying that it is
               not the official split
    karpathy   Karpathy's split JSON (dataset_flickr8k.json, dataset_flickr30k.json, dataset_coco.json): `images`
               with `filename` (+ `filepath` for COCO), `split` (train, val, test, restval: restval joins train,
               as in the papers) and `sentences[].raw`. The data root is the folder holding it, or the file itself

Images are never copied: each converted file's `file_name` is relative to the image folder that
`converted_split` returns. The converted files live under `data/converted/` (relative to the working
directory, like the feature caches; `converted_dir=` or the environment variable SHOW_TELL_CONVERTED_DIR move
it), never in the data root, which may be read-only. They are rebuilt when a source file changes (size and
modification time of every input, and of the image folders), and written to a temporary file and renamed.

Bad input is either a one-line error naming the file and line, or a counted skip, reported once when the
conversion runs: captions whose image is missing, images without captions, malformed lines, duplicates, split
files naming unknown images, lines that are not UTF-8.

Downloading the public datasets into these layouts is downloads.py's job.
"""
import csv
import hashlib
import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

SPLITS = ("train", "val", "test")
CONVERTED_ENV = "SHOW_TELL_CONVERTED_DIR"
DEFAULT_CONVERTED_DIR = "data/converted"
FORMAT = "show-and-tell-converted/2"  # bump when the converted output changes for the same inputs

FLICKR_IMAGES = ("Flicker8k_Dataset", "Flickr8k_Dataset")  # the original's spelling first
FLICKR_TEXT = "Flickr8k_text"
FLICKR_TOKENS = "Flickr8k.token.txt"
FLICKR_SPLIT_FILES = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                      "test": "Flickr_8k.testImages.txt"}
KAGGLE_IMAGES, KAGGLE_CAPTIONS = "Images", "captions.txt"
KARPATHY_FILES = ("dataset_flickr8k.json", "dataset_flickr30k.json", "dataset_coco.json")
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}
# Folders, relative to the JSON's folder, where Karpathy's file names are looked up (COCO's `filepath` is
# added below them): the usual unzip names of Flickr8k, Flickr30k and COCO.
KARPATHY_IMAGE_DIRS = ("", "Flicker8k_Dataset", "Flickr8k_Dataset", "Images", "images", "flickr30k_images",
                       "flickr30k-images")
# Kaggle's Flickr8k has no split: without the official files, each image's split follows from a hash of its own
# file name, in the official split's proportions (6,000 train and 1,000 val of Flickr8k's 8,091 images, the
# rest test). Adding or removing a file then moves no other image from one split to another.
KAGGLE_TRAIN_SHARE, KAGGLE_VAL_SHARE = 6000 / 8091, 1000 / 8091
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

FLICKR_HELP = ("Flickr8k: the original layout holds Flicker8k_Dataset/ and Flickr8k_text/Flickr8k.token.txt "
               "with Flickr8k_text/Flickr_8k.{train,dev,test}Images.txt; Kaggle's holds Images/ and captions.txt; "
               "Karpathy's split JSON is dataset_flickr8k.json, dataset_flickr30k.json or dataset_coco.json")


class DataSourceError(ValueError):
    """Input that cannot be converted; the message names the file (and line) and what to do."""


# ---------------------------------------------------------------------------------------------------
# What a reader returns
# ---------------------------------------------------------------------------------------------------
class Skips:
    """Counted skips by reason, with up to 3 examples each (`file:line` where there is a line)."""

    def __init__(self):
        self.counts, self.examples = Counter(), {}

    def add(self, reason, example):
        self.counts[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < 3 and str(example) not in examples:  # an image's five captions: one example
            examples.append(str(example))

    def lines(self):
        return [f"{n:,} {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.most_common()]


@dataclass
class Dataset:
    """A reader's output: captions per image file name, and each split's image names in order."""
    captions: dict = field(default_factory=dict)  # file name (relative to image_dir) -> [caption, ...]
    splits: dict = field(default_factory=dict)  # split -> [file name, ...]
    skips: Skips = field(default_factory=Skips)
    notes: list = field(default_factory=list)  # said at run time, e.g. that a split is not the official one


@dataclass
class Source:
    """A detected data root: its layout, the image folder, and the files the conversion reads."""
    kind: str  # flickr8k, kaggle or karpathy
    root: Path  # the data root as given
    image_dir: Path  # file names in the converted JSON are relative to this folder
    inputs: list  # files and folders whose change means the conversion is stale
    reader: object  # function(Source) -> Dataset

    def read(self):
        return self.reader(self)


# ---------------------------------------------------------------------------------------------------
# Reading text safely: line numbers, UTF-8 checked per line, any line ending
# ---------------------------------------------------------------------------------------------------
def text_lines(path, skips):
    """(line number, text) of a text file; a line that is not UTF-8 is skipped and counted, never guessed."""
    data = Path(path).read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):  # a byte-order mark, as Windows editors write
        data = data[3:]
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            skips.add("lines that are not UTF-8, skipped", f"{Path(path).name}:{number} (byte {e.start + 1})")


def list_images(folder):
    """Names of the files in an image folder (one directory listing, not one stat per caption)."""
    with os.scandir(folder) as entries:
        return {e.name for e in entries if not e.name.startswith(".") and e.is_file()}


def read_split_file(path, known, skips):
    """Image names of an official split file, in order: unknown names and repeats are skipped and counted."""
    names, seen = [], set()
    for number, line in text_lines(path, skips):
        name = line.strip()
        if not name:
            continue
        where = f"{path.name}:{number}"
        if name not in known:
            skips.add("split-file names of unknown images, skipped", f"{where} {name}")
        elif name in seen:
            skips.add("repeated split-file names, skipped", f"{where} {name}")
        else:
            names.append(name)
            seen.add(name)
    return names


def keep_captioned(ds, images_on_disk):
    """Drop captions of missing images and split entries without captions, counting both."""
    for name in list(ds.captions):
        if name not in images_on_disk:
            for _ in ds.captions.pop(name):
                ds.skips.add("captions whose image file is missing, skipped", name)
    for name in sorted(images_on_disk - set(ds.captions)):
        if name.lower().endswith(IMAGE_SUFFIXES):  # not the JSON or a README that shares the folder
            ds.skips.add("images without captions, left out", name)
    for split, names in ds.splits.items():
        ds.splits[split] = [n for n in names if n in ds.captions]


def image_sizes(image_dir, ds):
    """{name: (width, height)} of every image in a split, from its header only (a few ms per hundred images);
    a file PIL cannot identify is left out and counted, as the data loader would skip it anyway."""
    sizes = {}
    for names in ds.splits.values():
        for name in names:
            try:
                with Image.open(image_dir / name) as im:
                    sizes[name] = im.size
            except (OSError, UnidentifiedImageError, ValueError) as e:
                ds.skips.add("files that are not readable images, left out", f"{name} ({type(e).__name__})")
    for split, names in ds.splits.items():
        ds.splits[split] = [n for n in names if n in sizes]
    return sizes


def check_disjoint(ds, where):
    """An image in two splits would leak test data into training: that is an error, not a skip."""
    owner = {}
    for split, names in ds.splits.items():
        for name in names:
            if owner.setdefault(name, split) != split:
                raise DataSourceError(f"{where}: image {name} is in both the {owner[name]} and the {split} split; "
                                      "fix the split files so that every image is in one split")


# ---------------------------------------------------------------------------------------------------
# The three readers
# ---------------------------------------------------------------------------------------------------
def read_flickr8k(source):
    """Flickr8k.token.txt and the official split files (a missing split file means no such split)."""
    ds = Dataset()
    text = source.root / FLICKR_TEXT
    tokens = text / FLICKR_TOKENS
    seen = set()
    for number, line in text_lines(tokens, ds.skips):
        if not line.strip():
            continue
        where = f"{tokens.name}:{number}"
        key, tab, caption = line.partition("\t")
        name, _, k = key.strip().rpartition("#")
        if not tab or not name or not k.isdigit() or not caption.strip():
            ds.skips.add("malformed lines (not `<image>#<k>` TAB caption), skipped", f"{where} {line[:60]!r}")
            continue
        if (name, k) in seen:
            ds.skips.add("repeated caption numbers (the same `<image>#<k>` twice), skipped", f"{where} {key}")
            continue
        seen.add((name, k))
        ds.captions.setdefault(name, []).append(caption.strip())
    keep_captioned(ds, list_images(source.image_dir))
    for split, file_name in FLICKR_SPLIT_FILES.items():
        path = text / file_name
        if path.is_file():
            ds.splits[split] = read_split_file(path, ds.captions, ds.skips)
    check_disjoint(ds, text)
    return ds


def kaggle_rows(path, skips):
    """(line number, image, caption) of Kaggle's captions.txt, read with the csv module.

    Quoted captions may hold commas, quotes and even line breaks. A caption with an unquoted comma arrives
    as extra fields; image names hold no commas, so the extra fields are joined back into the caption.
    """
    lines = dict(text_lines(path, skips))
    reader = csv.reader(io.StringIO("\n".join(lines.get(i, "") for i in range(1, max(lines, default=0) + 1))))
    header_seen = False
    for row in reader:
        number = reader.line_num
        if not row or not any(c.strip() for c in row):
            continue
        if not header_seen:
            header_seen = True
            if [c.strip().lower() for c in row] == ["image", "caption"]:
                continue
            if not row[0].strip().lower().endswith((".jpg", ".jpeg", ".png")):
                raise DataSourceError(f"{path}:{number}: expected the header `image,caption`, found {row!r}; is this "
                                      "Kaggle's Flickr8k captions.txt?")
        image, caption = row[0].strip(), ",".join(row[1:]).strip()
        if len(row) > 2:
            skips.add("captions with unquoted commas, joined back", f"{path.name}:{number}")
        if not image or not caption:
            skips.add("malformed lines (not `image,caption`), skipped", f"{path.name}:{number} {row!r:.60}")
            continue
        yield number, image.split("#")[0], caption


def read_kaggle(source):
    """captions.txt, split by the official split files when present, else by a hash of each file name."""
    ds = Dataset()
    path = source.root / KAGGLE_CAPTIONS
    # A caption written twice for one image is kept: Flickr8k has such pairs, by two annotators, and the
    # original layout (Flickr8k.token.txt) gives those images five references too.
    for number, image, caption in kaggle_rows(path, ds.skips):
        ds.captions.setdefault(image, []).append(caption)
    keep_captioned(ds, list_images(source.image_dir))
    split_files = official_split_files(source.root)
    if split_files:
        for split, file in split_files.items():
            ds.splits[split] = read_split_file(file, ds.captions, ds.skips)
        check_disjoint(ds, path)
    else:
        ds.splits = fixed_split(ds.captions)
        sizes = " / ".join(f"{len(v):,}" for v in ds.splits.values())
        ds.notes.append(f"{path}: no official split files beside it ({', '.join(FLICKR_SPLIT_FILES.values())}), so "
                        f"the images are split {sizes} (train / val / test) by a hash of each file name. This is NOT "
                        "the official Flickr8k split: scores are not comparable with published ones")
    return ds


def official_split_files(root):
    """Flickr8k's split files beside a Kaggle captions.txt (or in Flickr8k_text/), by split; {} if none."""
    for folder in (root, root / FLICKR_TEXT):
        found = {s: folder / f for s, f in FLICKR_SPLIT_FILES.items() if (folder / f).is_file()}
        if found:
            return found
    return {}


def name_share(name):
    """A number in [0, 1) that depends on the file name alone: the same on every machine and Python version
    (hash() is salted per process), whatever other files the folder holds."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2 ** 64


def fixed_split(names):
    """Each name's split from its own name_share: below KAGGLE_TRAIN_SHARE train, then val, then test. About
    6,000 / 1,000 / 1,091 of Flickr8k's 8,091 images; names sorted, so the CSV's order does not matter."""
    splits = {split: [] for split in SPLITS}
    for name in sorted(names):
        share = name_share(name)
        split = "train" if share < KAGGLE_TRAIN_SHARE else "val" if share < KAGGLE_TRAIN_SHARE + KAGGLE_VAL_SHARE \
            else "test"
        splits[split].append(name)
    return splits


def read_karpathy(source):
    """Karpathy's split JSON: restval joins train; COCO's file names get their `filepath` folder."""
    ds = Dataset()
    path = source.inputs[0]
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataSourceError(f"{path} has no `images` list: it is not a Karpathy split file")
    for split in SPLITS:
        ds.splits[split] = []
    for i, entry in enumerate(data["images"]):
        where = f"{path.name}: images[{i}]"
        name = karpathy_name(entry)
        split = KARPATHY_SPLITS.get(entry.get("split")) if isinstance(entry, dict) else None
        sentences = entry.get("sentences") if isinstance(entry, dict) else None
        if not name or not split or not isinstance(sentences, list):
            ds.skips.add("malformed entries (no filename, split or sentences), skipped", f"{where} {str(entry)[:60]}")
            continue
        if name in ds.captions:
            ds.skips.add("repeated image names, skipped", f"{where} {name}")
            continue
        raws = [s.get("raw").strip() for s in sentences if isinstance(s, dict) and isinstance(s.get("raw"), str)]
        if len(raws) < len(sentences) or not all(raws):
            ds.skips.add("malformed or empty sentences, skipped", where)
        raws = [r for r in raws if r]
        if raws:
            ds.captions[name] = raws
            ds.splits[split].append(name)
    keep_captioned(ds, karpathy_images_on_disk(source.image_dir, ds.captions))
    ds.splits = {s: names for s, names in ds.splits.items() if names}
    return ds


def karpathy_name(entry):
    """`filepath/filename` (COCO) or `filename` (Flickr); None for a malformed entry."""
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str) or not entry["filename"]:
        return None
    folder = entry.get("filepath")
    return f"{folder}/{entry['filename']}" if isinstance(folder, str) and folder else entry["filename"]


def karpathy_images_on_disk(image_dir, names):
    """The names that exist under image_dir (one listing per sub-folder used: COCO's are train2014, val2014)."""
    present = set()
    for folder in sorted({str(Path(n).parent) for n in names}):
        sub = image_dir / folder
        if sub.is_dir():
            prefix = "" if folder == "." else folder + "/"
            present |= {prefix + f for f in list_images(sub)}
    return present


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[:e.start].count(b"\n") + 1
        raise DataSourceError(f"{path}:{line}: bytes that are not UTF-8 (byte {e.start + 1}); re-download the "
                              "file or save it as UTF-8") from None
    except json.JSONDecodeError as e:
        raise DataSourceError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); re-download it") from None


# ---------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------
def detect(data_root):
    """The Source a data root holds (Flickr8k original, Kaggle, or a Karpathy JSON), or None."""
    root = Path(data_root)
    if root.is_file() and root.suffix == ".json":
        return karpathy_source(root)
    if not root.is_dir():
        return None
    text = root / FLICKR_TEXT
    for images in FLICKR_IMAGES:
        if (root / images).is_dir() and (text / FLICKR_TOKENS).is_file():
            inputs = [text / FLICKR_TOKENS] + [text / f for f in FLICKR_SPLIT_FILES.values()] + [root / images]
            return Source("flickr8k", root, root / images, inputs, read_flickr8k)
    if (root / KAGGLE_IMAGES).is_dir() and (root / KAGGLE_CAPTIONS).is_file():
        split_inputs = [folder / f for folder in (root, text) for f in FLICKR_SPLIT_FILES.values()]
        return Source("kaggle", root, root / KAGGLE_IMAGES, [root / KAGGLE_CAPTIONS] + split_inputs
                      + [root / KAGGLE_IMAGES], read_kaggle)
    for name in KARPATHY_FILES:
        if (root / name).is_file():
            return karpathy_source(root / name)
    return None


def karpathy_source(path):
    """A Karpathy JSON and the folder its images are in: the candidate that holds its first image, or (a
    partial download) the one that holds the most of them. Every sub-folder the names use (COCO's train2014 and
    val2014) is an input of the conversion, so files added to any of them redo it."""
    base = path.parent
    names = karpathy_names(path)
    candidates = [base / d for d in KARPATHY_IMAGE_DIRS]
    image_dir = next((d for d in candidates if names and (d / names[0]).is_file()), None)
    if image_dir is None and names:
        wanted = set(names)
        found = {d: len(karpathy_images_on_disk(d, wanted) & wanted) for d in candidates if d.is_dir()}
        image_dir = max(found, key=found.get) if found and max(found.values()) else None
    if image_dir is None:
        tried = ", ".join(str(d) for d in candidates)
        example = names[0] if names else "none named"
        raise DataSourceError(f"{path}: its images ({example}, ...) are in none of {tried}; put the image "
                              "folder beside the JSON file")
    subs = sorted({str(Path(n).parent) for n in names} - {"."})
    inputs = [path, image_dir] + [image_dir / s for s in subs]
    return Source("karpathy", path, image_dir, inputs, read_karpathy)


def karpathy_names(path):
    """Every image name the JSON lists (karpathy_name), in order; malformed entries are left to the reader."""
    data = load_json(path)
    images = data.get("images") if isinstance(data, dict) else None
    return [name for name in map(karpathy_name, images if isinstance(images, list) else []) if name]


def layouts_help(root):
    """What detect() looked for under root, for the error of a folder that holds no known layout."""
    root = Path(root)
    return (f"{root / FLICKR_IMAGES[0]}/ with {root / FLICKR_TEXT / FLICKR_TOKENS} (Flickr8k), "
            f"{root / KAGGLE_IMAGES}/ with {root / KAGGLE_CAPTIONS} (Kaggle's Flickr8k), "
            f"or {' / '.join(str(root / n) for n in KARPATHY_FILES)} (Karpathy's splits)")


# ---------------------------------------------------------------------------------------------------
# Conversion to COCO's captions format, cached under data/converted/
# ---------------------------------------------------------------------------------------------------
def converted_root(converted_dir=None):
    return Path(converted_dir or os.environ.get(CONVERTED_ENV) or DEFAULT_CONVERTED_DIR)


def fingerprint(source):
    """What the conversion depends on: every input's size and modification time (folders: their mtime, which
    changes when files are added or removed), or absent."""
    parts = []
    for p in source.inputs:
        try:
            st = p.stat()
            parts.append([str(p), st.st_size if p.is_file() else 0, st.st_mtime_ns])
        except FileNotFoundError:
            parts.append([str(p), None, None])
    return {"format": FORMAT, "kind": source.kind, "inputs": parts}


def output_dir(source, converted_dir=None):
    """One folder per data root: its kind, its name and a hash of its absolute path, so roots never mix."""
    digest = hashlib.sha256(str(Path(source.root).resolve()).encode()).hexdigest()[:10]
    return converted_root(converted_dir) / f"{source.kind}-{Path(source.root).name}-{digest}"


_told = set()  # notes already printed by this process


def convert(source, converted_dir=None, quiet=False):
    """Convert the source (unless an up-to-date conversion exists); returns its manifest.

    The manifest ({'splits': {split: file}, 'image_dir', 'notes', 'skipped', ...}) is written last, after
    every caption file, so a conversion that was interrupted is redone, never half used.
    """
    out = output_dir(source, converted_dir)
    manifest_path = out / "manifest.json"
    stamp = fingerprint(source)
    manifest = read_manifest(manifest_path)
    if manifest is None or manifest.get("fingerprint") != stamp:
        manifest = write_conversion(source, out, stamp)
        if not quiet:
            report(source, manifest)
        _told.add(str(out))
    if not quiet and str(out) not in _told:
        for note in manifest["notes"]:
            print(f"note: {note}")
        _told.add(str(out))
    return manifest


def read_manifest(path):
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if all((path.parent / f).is_file() for f in manifest["splits"].values()):
            return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def write_conversion(source, out, stamp):
    """Read the source and write captions_<split>.json for every split it has, then the manifest."""
    ds = source.read()
    sizes = image_sizes(source.image_dir, ds)
    out.mkdir(parents=True, exist_ok=True)
    files, next_image, next_caption = {}, 1, 1
    for split, names in ds.splits.items():
        if not names:  # an empty split would only fail later, less clearly: it is reported as absent
            continue
        images, anns = [], []
        for name in names:
            width, height = sizes[name]
            images.append({"id": next_image, "file_name": name, "width": width, "height": height})
            for caption in ds.captions[name]:
                anns.append({"id": next_caption, "image_id": next_image, "caption": caption})
                next_caption += 1
            next_image += 1
        info = {"description": f"{source.kind} {split} split of {source.root}, converted by data_sources.py"}
        files[split] = f"captions_{split}.json"
        atomic_write_json({"info": info, "images": images, "annotations": anns}, out / files[split])
    manifest = {"fingerprint": stamp, "kind": source.kind, "root": str(source.root),
                "image_dir": str(source.image_dir), "splits": files,
                "sizes": {s: len(ds.splits[s]) for s in files},
                "captions": {s: sum(len(ds.captions[n]) for n in ds.splits[s]) for s in files},
                "skipped": ds.skips.lines(), "notes": ds.notes}
    atomic_write_json(manifest, out / "manifest.json")
    return manifest


def report(source, manifest):
    """One summary of a conversion: split sizes, then every kind of skip with examples, then notes."""
    sizes = ", ".join(f"{s} {manifest['sizes'][s]:,} images / {manifest['captions'][s]:,} captions"
                      for s in manifest["splits"])
    print(f"{source.root}: read as {source.kind} ({sizes or 'no splits'})")
    for line in manifest["skipped"]:
        print(f"  {line}")
    for note in manifest["notes"]:
        print(f"note: {note}")


def atomic_write_json(obj, path):
    """Write JSON to a temporary file in the same folder, then rename: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def converted_split(source, split, converted_dir=None):
    """(image folder, COCO caption file) of one split of a detected source, converting it if needed."""
    manifest = convert(source, converted_dir)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"]) or "none"
        extra = ""
        if source.kind == "flickr8k" and split in FLICKR_SPLIT_FILES:
            file = source.root / FLICKR_TEXT / FLICKR_SPLIT_FILES[split]
            extra = f" ({file} {'names no usable image' if file.exists() else 'is absent'})"
        raise FileNotFoundError(f"{source.root} ({source.kind}) has no {split!r} split{extra}; it has: {have}")
    return Path(manifest["image_dir"]), output_dir(source, converted_dir) / manifest["splits"][split]


if __name__ == "__main__":
    import sys

    sys.exit("data_sources.py has no command line of its own; downloads are "
             "`python downloads.py flickr8k|coco --dest FOLDER`")
