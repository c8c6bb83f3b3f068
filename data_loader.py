"""COCO-format caption data: image loading, transforms, the dataset, the one-length-per-batch sampler.

Data flow (see design.md):
    annotations/captions_<split><year>.json + <split><year>/*.jpg + vocab ──> CocoCaptionDataset
    LengthBatchSampler groups captions of one token length, so batches need no padding
    get_loader(...) wires them into a DataLoader, like the Udacity CVND project's get_loader

The layout under `data_root` is COCO's own (2014 or 2017 names), which is also what shapes_dataset.py writes:
    data_root/annotations/captions_train2017.json, data_root/train2017/000000000001.jpg, ...
"""
import contextlib
import hashlib
import io
import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin
from pycocotools.coco import COCO
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision import transforms

import data_sources
from vocabulary import caption_tokens, load_or_build_vocab

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224
TRAIN_RESIZE_RATIO = 8 / 7  # resize to 256 then crop 224, the usual ImageNet training recipe
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own limit (about 9500 x 9500): bigger images are refused, not decoded
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode: libjpeg skips the detail) while their shorter side
# stays at least DRAFT_SIDE: far more than the model's input (224 px), so a phone photo of 12 to 200 megapixels
# decodes in a fraction of the time and memory, and no dataset image (Flickr8k, COCO: 640 px at most) changes.
DRAFT_SIDE = 1024
MAX_JPEG_PIXELS = 4 * MAX_IMAGE_PIXELS  # about 21,900 x 16,400: any phone or camera photo; beyond, refused unread
# Dataset images are read as stored, their EXIF orientation tag ignored: COCO's boxes are in the stored pixels'
# coordinates, and pycocotools, torchvision's CocoCaptions and most captioning code read the stored pixels. Your
# own photos are turned upright, as an image viewer shows them. docs/data.md says why; the feature cache key
# holds the choice.
DATASET_UPRIGHT = False
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1")
MAX_CAPTION_WORDS = 60  # longer "captions" are broken annotations; COCO's longest real one has 49 words
YEARS = ("2017", "2014")

COCO_HELP = ("Real COCO: download e.g. http://images.cocodataset.org/zips/train2017.zip, val2017.zip and "
             "http://images.cocodataset.org/annotations/annotations_trainval2017.zip, and unzip them into the data "
             "root so that it holds annotations/ and train2017/. The built-in dataset: "
             "python shapes_dataset.py --out data/shapes")

# Truncated JPEGs must fail loudly so that they are counted as unreadable, never half-decoded.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# ---------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------
class ImageLoadError(ValueError):
    """An image that cannot be used; `reason` is one of 'missing', 'unreadable', 'too large'."""

    def __init__(self, path, reason, detail=""):
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path, self.reason = str(path), reason


@contextlib.contextmanager
def open_image(path):
    """PIL's Image.open with this project's checks: the file exists, and it is not a decompression bomb.

    A large JPEG is set to decode at reduced scale (jpeg_draft), and the pixel limit applies to what will be
    decoded: a 12000 x 9000 phone photo opens at 1500 x 1125. HEIC/HEIF photos open when the optional
    pillow-heif package is installed. Any failure inside the block, opening or decoding, becomes an
    ImageLoadError with a reason: 'missing', 'unreadable' (also truncated files) or 'too large'.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_any(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise ImageLoadError(path, "too large", f"{img.width}x{img.height} pixels")
                yield img
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(path, "too large", str(e)) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL's ways of saying "not an image I can decode"
        raise ImageLoadError(path, "unreadable", str(e) or type(e).__name__) from None


def open_any(path):
    """An unloaded PIL image of the file. JPEGs bypass Image.open, whose bomb check looks at the full size:
    they open with a draft scale set, and open_image checks the size they will decode at."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:3] == b"\xff\xd8\xff":
        img = JpegImagePlugin.JpegImageFile(path)
        try:
            return jpeg_draft(img, path)
        except BaseException:
            img.close()
            raise
    if head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS:
        register_heif_opener(path)
    return Image.open(path)


def jpeg_draft(img, path):
    """Set a JPEG to decode at the smallest scale (1, 1/2, 1/4, 1/8) that keeps its shorter side at least
    DRAFT_SIDE. A header above MAX_JPEG_PIXELS is refused before any pixel is decoded."""
    if img.width * img.height > MAX_JPEG_PIXELS:
        raise ImageLoadError(path, "too large", f"{img.width}x{img.height} pixels; JPEGs above "
                             f"{MAX_JPEG_PIXELS:,} pixels are refused")
    if min(img.size) >= 2 * DRAFT_SIDE:
        img.draft(img.mode, (DRAFT_SIDE, DRAFT_SIDE))  # e.g. (12000, 9000) -> (1500, 1125)
    return img


def register_heif_opener(path):
    """Teach PIL to open HEIC/HEIF files (iPhones' default format) with pillow-heif, which this project does not
    require: imported on the first such file, so that everyone else never loads it."""
    try:
        import pillow_heif
    except ImportError:
        raise ImageLoadError(path, "unreadable", "a HEIC/HEIF photo; to read it: pip install pillow-heif") from None
    pillow_heif.register_heif_opener()  # idempotent


def load_image(path, upright=True):
    """Open any image PIL reads as 8-bit RGB: grayscale, CMYK, palette, 16-bit and RGBA (over white).

    upright: turn the pixels as the file's EXIF orientation tag says, as image viewers do (phone photos are
    stored sideways with such a tag); False for dataset images (DATASET_UPRIGHT). Large JPEGs decode at
    reduced scale (open_image). Raises ImageLoadError for a missing file, an unreadable or truncated one, and a
    decompression bomb.
    """
    with open_image(path) as img:
        img.load()
        return to_rgb(img, upright)


def to_rgb(img, upright=True):
    """Convert a decoded PIL image of any mode to 8-bit RGB; upright: first apply its EXIF orientation."""
    if upright:
        img = exif_upright(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and 32-bit grey: scale to 0..255 ourselves, PIL's convert would clip to white.
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA", "LA", "La", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def exif_upright(img):
    """The image as a viewer shows it: rotated or flipped as its EXIF orientation tag (1-8) says.

    A broken EXIF block leaves the pixels as stored, as viewers do, rather than losing the photo.
    """
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # PIL's EXIF parser raises many kinds (SyntaxError, struct.error, ...) on malformed tags
        return img


def check_image_header(path):
    """Cheap check (header only, no decoding) that a file exists and is an image of sane size."""
    with open_image(path):
        pass


def get_transform(train, image_size=DEFAULT_IMAGE_SIZE, hflip=True):
    """Image -> normalised tensor (3, image_size, image_size).

    train: resize, random crop and (optionally) horizontal flip. Turn hflip off when captions name sides,
    as the shapes captions do ("to the left of"): a flipped image would contradict its caption.
    eval: resize the shorter side to image_size and centre-crop, deterministic.
    """
    normalise = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not train:
        return transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), *normalise])
    steps = [transforms.Resize(round(image_size * TRAIN_RESIZE_RATIO)), transforms.RandomCrop(image_size)]
    if hflip:
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(steps + normalise)


def tensor_eval_transform(images, image_size=DEFAULT_IMAGE_SIZE, device=None):
    """get_transform(train=False) for decoded uint8 tensors, on any device: the GPU feature cache's transform.

    images: a uint8 tensor (3, H, W) or (B, 3, H, W), or a list of (3, H, W) tensors of any sizes (1-channel
    grey is repeated to RGB). Same steps as the PIL transform: the shorter side resized to image_size
    (bilinear, antialiased; the longer side truncated as torchvision does), a centre crop, ImageNet
    normalisation. Images of one size are resized together. Returns (B, 3, image_size, image_size) float32 on
    `device` (default: the images' own). It differs from the PIL transform only by PIL's rounding of the
    resized image to 8 bits: tests/test_features.py measures the gap.
    """
    if torch.is_tensor(images):
        images = list(images) if images.dim() == 4 else [images]
    device = torch.device(device) if device is not None else (images[0].device if images else torch.device("cpu"))
    # Host-to-device copies with non_blocking=True: a blocking one would wait for all queued GPU work.
    mean = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255).to(device, non_blocking=True)
    std = (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255).to(device, non_blocking=True)
    out = torch.empty(len(images), 3, image_size, image_size, device=device)  # (B, 3, S, S)
    by_size = {}
    for i, img in enumerate(images):
        by_size.setdefault(tuple(img.shape[-2:]), []).append(i)
    for (h, w), members in by_size.items():
        x = torch.stack([images[i].to(device, non_blocking=True) for i in members]).float()  # (b, C, h, w)
        x = x.expand(-1, 3, -1, -1) if x.size(1) == 1 else x
        short, long = min(h, w), max(h, w)
        new_long = int(image_size * long / short)  # torchvision's Resize(int) rule
        new_h, new_w = (new_long, image_size) if w <= h else (image_size, new_long)
        if (new_h, new_w) != (h, w):
            x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False,
                                                antialias=True)  # (b, 3, new_h, new_w)
        top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))  # CenterCrop's
        x = x[:, :, top:top + image_size, left:left + image_size]  # (b, 3, S, S)
        out[torch.tensor(members).to(device, non_blocking=True)] = (x - mean) / std
    return out


JPEG_FRAME_MARKERS = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman: what nvJPEG decodes


def jpeg_header(data):
    """(height, width, components) from a JPEG's frame header when a GPU decoder can take the file, else None.

    None for anything that is not a plain 8-bit Huffman JPEG ending in its end-of-image marker: PNGs and other
    formats, arithmetic-coded or 12-bit JPEGs, files cut short (PIL must name them 'unreadable', never
    half-decode them). Callers send those to load_image, as they do CMYK files (4 components). Reads only
    the headers, never the image data.
    """
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\x00\r\n ")[-2:] != b"\xff\xd9":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker == 0xDA or (0xC3 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)):
            return None  # image data before any frame header, or a frame kind left to PIL
        if marker in JPEG_FRAME_MARKERS:
            if i + 10 > len(data) or data[i + 4] != 8:  # cut short, or not 8 bits per sample
                return None
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            return height, width, data[i + 9]
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


# ---------------------------------------------------------------------------------------------------
# Where a split lives
# ---------------------------------------------------------------------------------------------------
def find_split(data_root, split, converted_dir=None):
    """(image folder, caption file) of a split: COCO's 2017 or 2014 names, or a Flickr8k / Kaggle / Karpathy
    root converted to COCO's format under data/converted/ (data_sources.py; `converted_dir` moves it)."""
    root = Path(data_root)
    for year in YEARS:
        ann = root / "annotations" / f"captions_{split}{year}.json"
        if ann.is_file():
            return root / f"{split}{year}", ann
    if split == "test" and any((root / "annotations" / f"image_info_test{y}.json").is_file() for y in YEARS):
        raise FileNotFoundError(f"COCO's test split under {root} has no public captions; evaluate on val instead")
    source = data_sources.detect(root)
    if source is not None:
        return data_sources.converted_split(source, split, converted_dir)
    missing = "" if root.exists() else f" (the data root {root} does not exist)"
    tried = ", ".join(str(root / "annotations" / f"captions_{split}{y}.json") for y in YEARS)
    raise FileNotFoundError(f"no caption file for split {split!r}: looked for {tried} (COCO), "
                            f"{data_sources.layouts_help(root)}{missing}. {COCO_HELP}")


def data_defaults(data_root):
    """The settings a data root decides by itself, for knobs left to it (a preset of None or "auto", a split of
    None), as a dict:
        kind        'shapes' (the built-in data: shapes_meta.json, or a data/shapes not generated yet), 'coco', or
                    a data_sources layout: 'flickr8k', 'kaggle', 'karpathy'
        preset      the train.PRESETS entry made for that data: 'shapes-cpu' (the demo recipe, best.pt by
                    object F1, which only shapes has), 'flickr8k' (the real-photograph recipe) for the
                    data_sources layouts, or 'coco' (ResNet-50 at 224 px, best.pt by CIDEr) for COCO in
                    its own layout or Karpathy's dataset_coco.json
        eval_split  the split to score: 'test' when the root has test captions (shapes; Flickr8k with its test
                    split file), else 'val' (COCO's test split has no public captions)
    One place to teach the defaults a new kind of data: add it here, and its preset to train.PRESETS.
    """
    root = Path(data_root)
    shapes = (root / "shapes_meta.json").exists() or (root.name == "shapes" and not (root / "annotations").is_dir())
    coco = any((root / "annotations" / f"captions_train{y}.json").is_file() for y in YEARS)
    source = None if shapes or coco else data_sources.detect(root)
    if source is not None:
        has_test = "test" in data_sources.convert(source)["splits"]
        coco_photos = source.kind == "karpathy" and Path(source.root).name == "dataset_coco.json"
        return {"kind": source.kind, "preset": "coco" if coco_photos else "flickr8k",
                "eval_split": "test" if has_test else "val"}
    has_test = shapes or any((root / "annotations" / f"captions_test{y}.json").is_file() for y in YEARS)
    return {"kind": "shapes" if shapes else "coco", "preset": "shapes-cpu" if shapes else "coco",
            "eval_split": "test" if has_test else "val"}


def image_digests(file_names):
    """A sorted int64 tensor, one value per distinct image: a hash of its file name (the last path part, so
    Karpathy's COCO names meet COCO's own). Checkpoints keep it for the images they trained and were chosen on,
    small and loadable with weights_only=True, and evaluate.py counts how many images of a split are among them.
    """
    values = {int.from_bytes(hashlib.sha256(Path(f).name.encode("utf-8")).digest()[:8], "big", signed=True)
              for f in file_names}
    return torch.tensor(sorted(values), dtype=torch.int64)


def images_among(file_names, digests):
    """How many of the images named are among `digests` (image_digests of others); 0 when digests is None."""
    if digests is None or not len(file_names):
        return 0
    return int(torch.isin(image_digests(file_names), torch.as_tensor(digests).cpu()).sum())


def train_captions_file(data_root):
    """The vocabulary is always counted from the training captions."""
    return find_split(data_root, "train")[1]


def default_vocab_file(data_root, threshold, cache_dir="data/cache"):
    """Where a data root's vocabulary is saved: beside the feature caches, never inside the data root, which
    may be read-only. The file records the caption files' hashes, so two roots of one name cannot mix."""
    return Path(cache_dir) / f"vocab-{Path(data_root).name}-t{threshold}.json"


# ---------------------------------------------------------------------------------------------------
# Skips are counted, named and summarised, never silent
# ---------------------------------------------------------------------------------------------------
class SkipReport:
    """Counts what was skipped, by reason, with a few examples of each."""

    def __init__(self, what, total=0):
        self.what, self.total = what, total
        self.counts, self.examples = Counter(), {}

    def add(self, reason, example):
        self.counts[reason] += 1
        if self.counts[reason] <= 3:
            self.examples.setdefault(reason, []).append(str(example))

    @property
    def skipped(self):
        return sum(self.counts.values())

    def summary(self):
        if not self.skipped:
            return f"all {self.total:,} {self.what} usable"
        parts = ", ".join(f"{n} {reason}" for reason, n in self.counts.most_common())
        return f"skipped {self.skipped:,} of {self.total:,} {self.what}: {parts}"

    def details(self):
        return "; ".join(f"{r}: {', '.join(ex)}" for r, ex in self.examples.items())

    def describe(self):
        """The summary with up to 3 names per reason, e.g. '... 1 missing (missing: 3.jpg)': what gets printed."""
        return self.summary() + (f" ({self.details()})" if self.skipped else "")

    def raise_if(self, strict):
        if strict and self.skipped:
            raise ValueError(f"{self.summary()} (strict mode). Examples: {self.details()}")


def load_coco(annotations_file, require_captions=True):
    """pycocotools' COCO index over a caption file, after checking that the file is what it claims."""
    path = Path(annotations_file)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"caption file not found: {path}. {COCO_HELP}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-download or regenerate it") from None
    missing = [k for k in ("images", "annotations") if not isinstance(data, dict) or not isinstance(data.get(k), list)]
    if missing and (require_captions or "images" in missing):
        raise ValueError(f"{path} lacks the COCO key(s) {missing}: it is not a COCO caption file")
    # pycocotools indexes by these fields and would fail with a bare KeyError; say which entry lacks what.
    for key, needed in (("images", ("id",)), ("annotations", ("id", "image_id"))):
        for i, entry in enumerate(data.get(key) or []):
            lacks = [f for f in needed if not isinstance(entry, dict) or f not in entry]
            if lacks:
                raise ValueError(f"{path}: {key}[{i}] has no {' or '.join(map(repr, lacks))} field, so it is not "
                                 f"a well-formed COCO caption file (found {str(entry)[:80]})")
    coco = COCO()  # built from the dict we already parsed, so the file is read once
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints on every index
        coco.createIndex()
    return coco


# ---------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------
class CocoCaptionDataset(Dataset):
    """One item per caption: (image tensor, caption ids framed by <start> and <end>).

    At construction it tokenizes every caption and checks every image header, skipping (and counting)
    images that are missing or unreadable, captions of unknown images, and empty or overlong captions.
    Arrays a fast training loop can use directly:
        tokens (N, max_len) int64, lengths (N,), caption_image (N,) index into image_files / image_ids.
    """

    def __init__(self, image_dir, annotations_file, vocab, transform=None, strict=False, check_images=True,
                 cache_dir=None):
        self.image_dir, self.annotations_file = Path(image_dir), Path(annotations_file)
        self.vocab, self.transform, self.strict = vocab, transform, strict
        self.cache_dir = cache_dir  # where the captions' tokens are cached (vocabulary.caption_tokens); None: not
        self.coco = load_coco(annotations_file)
        self.image_report = SkipReport("images", len(self.coco.imgs))
        self.caption_report = SkipReport("captions", len(self.coco.anns))
        self._index_images(check_images)
        self._index_captions()
        for report in (self.image_report, self.caption_report):
            if report.skipped:
                print(f"{self.annotations_file.name}: {report.describe()}")
            report.raise_if(strict)
        if len(self) == 0:
            raise ValueError(f"{self.annotations_file} gives no usable captions ({self.image_report.summary()}; "
                             f"{self.caption_report.summary()})")

    def _index_images(self, check_images):
        self.image_ids, self.image_files = [], []
        for img_id in sorted(self.coco.imgs):
            path = self.image_dir / str(self.coco.imgs[img_id].get("file_name", ""))
            try:
                check_image_header(path) if check_images else None
            except ImageLoadError as e:
                self.image_report.add(e.reason, path.name)
                continue
            self.image_ids.append(img_id)
            self.image_files.append(path)
        self.id_to_index = {img_id: i for i, img_id in enumerate(self.image_ids)}

    def _index_captions(self):
        encoded, owners, self.ann_ids = [], [], []
        texts = [a["caption"] for a in self.coco.anns.values() if isinstance(a.get("caption"), str)]
        tokens = caption_tokens(self.annotations_file, texts, self.cache_dir)  # {text: words}
        for ann_id in sorted(self.coco.anns):
            ann = self.coco.anns[ann_id]
            img_index = self.id_to_index.get(ann.get("image_id"))
            words = tokens[ann["caption"]] if isinstance(ann.get("caption"), str) else []
            if ann.get("image_id") not in self.coco.imgs:
                self.caption_report.add("for unknown image ids", ann_id)
            elif img_index is None:
                self.caption_report.add("of skipped images", ann_id)
            elif not words:
                self.caption_report.add("empty", ann_id)
            elif len(words) > MAX_CAPTION_WORDS:
                self.caption_report.add(f"longer than {MAX_CAPTION_WORDS} words", ann_id)
            else:
                encoded.append([self.vocab.start_id] + [self.vocab(w) for w in words] + [self.vocab.end_id])
                owners.append(img_index)
                self.ann_ids.append(ann_id)
        self.lengths = np.array([len(c) for c in encoded], dtype=np.int64)
        self.tokens = np.full((len(encoded), max(self.lengths, default=2)), self.vocab.end_id, dtype=np.int64)
        for i, c in enumerate(encoded):
            self.tokens[i, : len(c)] = c
        self.caption_image = np.array(owners, dtype=np.int64)

    def __len__(self):
        return len(self.lengths)

    def caption(self, index):
        return torch.from_numpy(self.tokens[index, : self.lengths[index]])

    def __getitem__(self, index):
        """(image, caption); None when the image passed the header check but cannot be decoded (a truncated
        file, say): collate_skipping drops it with a warning naming the file, or strict mode raises."""
        try:
            image = load_image(self.image_files[self.caption_image[index]], upright=DATASET_UPRIGHT)
        except ImageLoadError as e:
            if self.strict:
                raise
            warnings.warn(f"skipping an image that cannot be decoded: {e}", stacklevel=2)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, self.caption(index)

    def references(self):
        """{image_id: [raw caption, ...]} of the usable captions of usable images, for scoring."""
        refs = {}
        for ann_id in self.ann_ids:
            ann = self.coco.anns[ann_id]
            refs.setdefault(ann["image_id"], []).append(ann["caption"])
        return refs


class ImageListDataset(Dataset):
    """Images from a list of paths, for the feature cache and for captioning: (tensor, index, ok).

    A file that cannot be read yields a zero image and ok=False rather than an exception, so that one bad
    file neither kills a long pass nor hides: the caller counts and names it. upright: as in load_image;
    the default is for your photos, the feature cache passes DATASET_UPRIGHT.
    """

    def __init__(self, paths, transform, upright=True):
        self.paths, self.transform, self.upright = [Path(p) for p in paths], transform, upright

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            return self.transform(load_image(self.paths[index], self.upright)), index, ""
        except ImageLoadError as e:
            return None, index, e.reason


def collate_skipping(batch):
    """default_collate over the (image, caption) pairs that loaded; None if none did."""
    items = [b for b in batch if b is not None]
    return default_collate(items) if items else None


def collate_images(batch):
    """Stack the readable images; report the failed ones as (index, reason) pairs."""
    ok = [b for b in batch if b[0] is not None]
    failed = [(b[1], b[2]) for b in batch if b[0] is None]
    images = torch.stack([b[0] for b in ok]) if ok else None
    return images, torch.tensor([b[1] for b in ok], dtype=torch.long), failed


# ---------------------------------------------------------------------------------------------------
# The sampler: every caption once per epoch, one token length per batch
# ---------------------------------------------------------------------------------------------------
class LengthBatchSampler(Sampler):
    """Batches of caption indices that share one length, so no padding is needed.

    The seed drew a random length and then indices with replacement at every step, so an "epoch" saw some
    captions twice and others never. Here each epoch is a seeded permutation: captions are grouped by
    length, cut into batches, and the batches shuffled. `set_epoch(e)` changes the order, as for
    DistributedSampler. With world_size > 1 each rank takes every world_size-th batch; the last
    len % world_size batches are dropped that epoch so that all ranks take the same number of steps.
    """

    def __init__(self, lengths, batch_size, seed=0, rank=0, world_size=1, drop_last=False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.drop_last, self.epoch = drop_last, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def batches(self, epoch=None):
        """This rank's batches for an epoch, as a list of int64 arrays."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        order = order[np.argsort(self.lengths[order], kind="stable")]  # grouped by length, shuffled within
        lens = self.lengths[order]
        group_start = np.flatnonzero(np.r_[True, lens[1:] != lens[:-1]])
        starts_of = np.repeat(group_start, np.diff(np.r_[group_start, len(order)]))
        cut = np.flatnonzero((np.arange(len(order)) - starts_of) % self.batch_size == 0)
        batches = np.split(order, cut[1:])
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        usable = len(batches) - len(batches) % self.world_size
        return batches[self.rank:usable:self.world_size]

    def __iter__(self):
        return (b.tolist() for b in self.batches())

    def __len__(self):
        return len(self.batches())


# ---------------------------------------------------------------------------------------------------
# The Udacity-style entry point
# ---------------------------------------------------------------------------------------------------
def get_loader(transform, mode="train", batch_size=128, vocab_threshold=5, vocab_file=None, vocab_from_file=None,
               num_workers=0, data_root="data/shapes", seed=0, rank=0, world_size=1, strict=False, cache_dir=None):
    """A DataLoader of (images, captions) batches whose dataset exposes `.vocab`, as in the Udacity project.

    mode: the split to read, 'train', 'val' or 'test' (any split name the data root has works).
    The vocabulary is always counted from the training captions with `vocab_threshold`, saved to
    `vocab_file` (default data/cache/vocab-<data root name>-t<threshold>.json, where train.py keeps it) and
    reused while it matches. The captions' tokens are cached in cache_dir (None: the vocabulary's folder).
    Each batch holds captions of a single length: images (B, 3, H, W), captions (B, L).
    """
    vocab_file = vocab_file or default_vocab_file(data_root, vocab_threshold)
    cache_dir = cache_dir if cache_dir is not None else Path(vocab_file).parent
    vocab = load_or_build_vocab([train_captions_file(data_root)], vocab_threshold, vocab_file, vocab_from_file,
                                cache_dir=cache_dir)
    image_dir, annotations_file = find_split(data_root, mode)
    dataset = CocoCaptionDataset(image_dir, annotations_file, vocab, transform, strict=strict, cache_dir=cache_dir)
    sampler = LengthBatchSampler(dataset.lengths, batch_size, seed=seed, rank=rank, world_size=world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_skipping,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
