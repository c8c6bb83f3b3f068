"""Your own photos as an image viewer shows them: EXIF orientation, very large JPEGs, HEIC/HEIF; and dataset
images read as stored, with the feature cache key saying so."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import data_loader as dl
import features
from data_loader import DATASET_UPRIGHT, ImageListDataset, ImageLoadError, get_transform, load_image
from test_data_loader import png_header

ORIENTATION = 0x0112  # the EXIF tag
S = 32  # the model's input size in these tests


def noise(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def save_sideways(upright, path, **save_args):
    """Save `upright` as a phone does when held upright: pixels turned a quarter left, EXIF orientation 6."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "turn 90 degrees clockwise to show"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **save_args)
    return path


def tensor(path, upright=True):
    return get_transform(train=False, image_size=S)(load_image(path, upright))  # (3, S, S)


def with_jpeg_size(data, width, height):
    """A JPEG's bytes with the size in its frame header replaced: what a decoder is told to expect."""
    sof = data.index(b"\xff\xc0")  # baseline frame header: FFC0, length (2), precision (1), height, width
    return data[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


# ---------------------------------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------------------------------
def test_a_photo_stored_sideways_with_its_orientation_tag_reads_upright(tmp_path):
    upright = noise(48, 30)  # landscape, so a quarter turn shows in the size
    upright.save(tmp_path / "upright.png")
    sideways = save_sideways(upright, tmp_path / "sideways.png")
    assert Image.open(sideways).size == (30, 48)
    assert load_image(sideways).size == (48, 30)
    assert np.array_equal(np.asarray(load_image(sideways)), np.asarray(upright))
    assert torch.equal(tensor(sideways), tensor(tmp_path / "upright.png"))
    # As stored, for dataset images: the raw pixels, which differ from the upright photo.
    assert load_image(sideways, upright=False).size == (30, 48)
    # A JPEG, as phones write them: the same picture up to JPEG's loss.
    upright.save(tmp_path / "upright.jpg", quality=95)
    sideways_jpg = save_sideways(upright, tmp_path / "sideways.jpg", quality=95)
    assert Image.open(sideways_jpg).getexif()[ORIENTATION] == 6
    gap = (tensor(sideways_jpg) - tensor(tmp_path / "upright.jpg")).abs().mean()
    raw_gap = (tensor(sideways_jpg, upright=False) - tensor(tmp_path / "upright.jpg")).abs().mean()
    assert gap < 0.1 < raw_gap, (gap, raw_gap)


def test_pil_images_and_every_orientation_read_upright(tmp_path):
    upright = noise(20, 12, seed=1)
    # Each EXIF orientation (2-8) names how the stored pixels must be turned or mirrored to show them.
    stored_as = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_270}
    for tag, transpose in stored_as.items():
        exif = Image.Exif()
        exif[ORIENTATION] = tag
        upright.transpose(transpose).save(tmp_path / f"{tag}.png", exif=exif)
        assert np.array_equal(np.asarray(load_image(tmp_path / f"{tag}.png")), np.asarray(upright)), tag
        # A PIL image a caller opened itself (ImageCaptioner takes those) is turned too.
        assert np.array_equal(np.asarray(dl.to_rgb(Image.open(tmp_path / f"{tag}.png"))), np.asarray(upright)), tag


def test_a_broken_exif_block_leaves_the_pixels_as_stored(tmp_path, monkeypatch):
    img = noise(16, 8)
    img.save(tmp_path / "x.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")  # an IFD cut short
    assert load_image(tmp_path / "x.jpg").size == (16, 8)  # PIL 13 shrugs this one off with a warning

    def parser_failure(image):
        raise SyntaxError("not a TIFF file")  # what PIL's EXIF parser raises on other malformed blocks

    monkeypatch.setattr(dl.ImageOps, "exif_transpose", parser_failure)
    assert np.array_equal(np.asarray(load_image(tmp_path / "x.jpg")), np.asarray(Image.open(tmp_path / "x.jpg")))


def test_dataset_images_are_read_as_stored_and_the_cache_key_says_which(tmp_path):
    upright = noise(48, 30)
    sideways = save_sideways(upright, tmp_path / "sideways.png")
    assert DATASET_UPRIGHT is False  # docs/data.md says why
    kind, image = features.pil_eval_item(sideways, S)  # the feature cache's reading
    assert kind == "image" and torch.equal(image, tensor(sideways, upright=False))
    listed, _, _ = ImageListDataset([sideways], get_transform(train=False, image_size=S), upright=DATASET_UPRIGHT)[0]
    assert torch.equal(listed, tensor(sideways, upright=False))
    # One key per choice, so that a cache never mixes upright and stored pixels; the default is the key of
    # the caches built before the choice was part of it.
    args = dict(backbone="mobilenet_v2", image_size=S)
    as_stored = features.cache_key(args, [sideways], "w")
    assert as_stored == features.cache_key(args, [sideways], "w", upright=False)
    assert features.cache_key(args, [sideways], "w", upright=True) != as_stored


# ---------------------------------------------------------------------------------------------------
# Very large JPEGs decode at reduced size; bombs are still refused
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """A real 12000 x 9000 JPEG (108 megapixels, above PIL's 89M limit) of flat grey: 1.3 MB, under a second."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    Image.new("L", (12000, 9000), 90).save(path, quality=90)
    return path


def test_a_12000_by_9000_jpeg_decodes_at_an_eighth_of_its_size(huge_jpeg, tmp_path):
    dl.check_image_header(huge_jpeg)
    img = load_image(huge_jpeg)
    assert img.size == (1500, 1125)  # 1/8 scale: the shorter side is still above DRAFT_SIDE
    assert min(img.size) >= dl.DRAFT_SIDE
    Image.new("L", (400, 300), 90).save(tmp_path / "small.jpg", quality=90)
    assert (tensor(huge_jpeg) - tensor(tmp_path / "small.jpg")).abs().max() < 0.02  # the same flat grey


def test_jpegs_of_dataset_sizes_decode_at_full_size_bit_for_bit(tmp_path):
    path = tmp_path / "coco-sized.jpg"
    noise(640, 480).save(path, quality=90)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(Image.open(path).convert("RGB")))
    noise(2100, 2050).save(tmp_path / "big.jpg", quality=50)  # shorter side over twice DRAFT_SIDE: halved
    assert load_image(tmp_path / "big.jpg").size == (1050, 1025)


def test_bombs_are_still_refused(tmp_path):
    small = tmp_path / "small.jpg"
    noise(16, 16).save(small)
    # A JPEG claiming 30000 x 30000: beyond MAX_JPEG_PIXELS, refused from its header, nothing decoded.
    (tmp_path / "bomb.jpg").write_bytes(with_jpeg_size(small.read_bytes(), 30_000, 30_000))
    # Another format cannot be decoded smaller: PIL's own limit stands (12000 x 9000 as for the JPEG above).
    (tmp_path / "huge.png").write_bytes(png_header(12000, 9000))
    for name, detail in (("bomb.jpg", "30000x30000"), ("huge.png", "")):
        for check in (load_image, dl.check_image_header):
            with pytest.raises(ImageLoadError) as e:
                check(tmp_path / name)
            assert e.value.reason == "too large" and detail in str(e.value), str(e.value)


# ---------------------------------------------------------------------------------------------------
# HEIC/HEIF: read with the optional pillow-heif package, else an error that names it
# ---------------------------------------------------------------------------------------------------
HEIF_START = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"  # an ISO box header with the HEIC brand


def test_heic_without_pillow_heif_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if not installed: importing it fails
    (tmp_path / "IMG_0001.HEIC").write_bytes(HEIF_START + b"\x00" * 64)
    for check in (load_image, dl.check_image_header):
        with pytest.raises(ImageLoadError) as e:
            check(tmp_path / "IMG_0001.HEIC")
        assert e.value.reason == "unreadable" and "pip install pillow-heif" in str(e.value)
        assert len(str(e.value).splitlines()) == 1


def test_heic_with_pillow_heif_installed_opens(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    picture = Image.new("RGB", (64, 40), (200, 60, 20))
    pillow_heif.from_pillow(picture).save(tmp_path / "IMG_0002.HEIC", quality=95)
    assert (tmp_path / "IMG_0002.HEIC").read_bytes()[4:12] in (b"ftypheic", b"ftypmif1")
    out = load_image(tmp_path / "IMG_0002.HEIC")
    assert out.size == (64, 40)
    assert np.abs(np.asarray(out, dtype=int) - np.asarray(picture, dtype=int)).max() < 12
