"""COCO at full size: the rehearsal's stand-in, the feature cache that resumes, the COCO presets."""
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import features as features_mod
import train as train_mod
from conftest import COCO_MINI, REPO_ROOT
from train import TrainConfig


def load_rehearsal():
    spec = importlib.util.spec_from_file_location("coco_rehearsal", REPO_ROOT / "bench" / "coco_rehearsal.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------
# The stand-in, at 1/500 of COCO's size
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    if not (COCO_MINI / "annotations" / "captions_val2017_all5000.json").is_file():
        pytest.skip(f"real COCO captions not found under {COCO_MINI}")
    rehearsal = load_rehearsal()
    root = tmp_path_factory.mktemp("rehearsal")
    rehearsal.make_stand_in(root, quick=True, workers=1)
    return rehearsal, root


def test_stand_in_has_cocos_counts_layout_and_captions(stand_in):
    rehearsal, root = stand_in
    n = rehearsal.sizes(quick=True)
    train = json.loads((root / "annotations" / "captions_train2017.json").read_text())
    val = json.loads((root / "annotations" / "captions_val2017.json").read_text())
    assert set(train) == {"info", "licenses", "images", "annotations"}
    assert (len(train["images"]), len(train["annotations"])) == (n["train_images"], n["train_captions"])
    assert len(val["images"]) == n["val_images"]
    # Every image has a file of its own, at least 5 captions (COCO: 5, a few 6 or 7), and ids are unique.
    for split, data in (("train", train), ("val", val)):
        assert all((root / f"{split}2017" / im["file_name"]).is_file() for im in data["images"])
        per_image = {im["id"]: 0 for im in data["images"]}
        for a in data["annotations"]:
            per_image[a["image_id"]] += 1
        assert min(per_image.values()) >= 5
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    assert not {im["id"] for im in train["images"]} & {im["id"] for im in val["images"]}
    # The captions are COCO's real ones, recapitalised: the same words.
    source = json.loads((COCO_MINI / "annotations" / "captions_val2017_all5000.json").read_text())
    real = {" ".join(a["caption"].lower().split()) for a in source["annotations"]}
    assert all(a["caption"].lower() in real for a in train["annotations"])
    assert len({a["caption"] for a in train["annotations"]}) > 0.95 * len(train["annotations"])
    # Karpathy's file: train, restval, val and test in its own format, over train2014/ and val2014/.
    karpathy = json.loads((root / "karpathy" / "dataset_coco.json").read_text())["images"]
    counts = {s: sum(e["split"] == s for e in karpathy) for s in ("train", "restval", "val", "test")}
    assert counts == n["karpathy"]
    entry = karpathy[0]
    assert entry["filename"].startswith("COCO_train2014_") and entry["sentences"][0]["raw"]
    assert all((root / "karpathy" / e["filepath"] / e["filename"]).is_file() for e in karpathy)


def test_karpathy_stand_in_reads_through_the_repositorys_path(stand_in, tmp_path, monkeypatch):
    """dataset_coco.json of the stand-in converts into Karpathy's split sizes, and picks the coco preset."""
    import data_sources
    from data_loader import data_defaults, find_split
    rehearsal, root = stand_in
    monkeypatch.setenv(data_sources.CONVERTED_ENV, str(tmp_path))
    n = rehearsal.sizes(quick=True)["karpathy"]
    json_file = root / "karpathy" / "dataset_coco.json"
    sizes = {s: len(json.loads(find_split(json_file, s)[1].read_text())["images"]) for s in ("train", "val", "test")}
    assert sizes == {"train": n["train"] + n["restval"], "val": n["val"], "test": n["test"]}
    assert data_defaults(json_file)["preset"] == "coco"


# ---------------------------------------------------------------------------------------------------
# The feature cache resumes a build killed in the middle
# ---------------------------------------------------------------------------------------------------
class Killed(Exception):
    """Stands in for a kill: the build stops between two pieces."""


def numbered_features(encoder, files, *args, **kwargs):
    """Features that name their file: row i is the file's number, three times."""
    values = torch.tensor([float(Path(f).stem) for f in files]).half()[:, None].repeat(1, 3)  # (B, 3)
    return values, torch.ones(len(files), dtype=torch.bool), {}


def test_a_killed_cache_build_resumes_where_it_stopped(tmp_path, monkeypatch):
    files = [tmp_path / "img" / f"{i}.jpg" for i in range(10)]
    args = dataclasses.asdict(TrainConfig(cache_dir=str(tmp_path / "cache"), image_size=64))
    calls = []

    def dies_after_two_pieces(encoder, chunk_files, *a, **k):
        calls.append([Path(f).stem for f in chunk_files])
        if len(calls) == 3:
            raise Killed
        return numbered_features(encoder, chunk_files)

    monkeypatch.setattr(features_mod, "compute_features", dies_after_two_pieces)
    build = lambda: features_mod.cached_features(None, files, args, args["cache_dir"], "cpu", weights="w", chunk=3)
    with pytest.raises(Killed):
        build()
    assert not list((tmp_path / "cache").glob("*.pt"))  # no cache file yet: only its finished pieces
    calls.clear()
    features, ok, _ = build()
    assert calls == [["6", "7", "8"], ["9"]]  # pieces 1 and 2 were not computed again
    assert torch.equal(features, numbered_features(None, files)[0]) and bool(ok.all())
    assert not list((tmp_path / "cache").glob(".pieces-*"))  # the pieces go once the cache is whole
    calls.clear()
    again, _, _ = build()
    assert calls == [] and torch.equal(again, features)


# ---------------------------------------------------------------------------------------------------
# The COCO presets
# ---------------------------------------------------------------------------------------------------
def test_coco_preset_is_the_seeds_model_with_the_levers_that_won_on_flickr8k():
    coco = train_mod.make_config("coco")
    assert (coco.backbone, coco.image_size, coco.num_layers, coco.embed_size, coco.hidden_size) == \
        ("resnet50", 224, 1, 100, 512)
    flickr = train_mod.PRESETS["flickr8k"]
    levers = ("feature_norm", "embed_norm", "image_every_step", "decoder_dropout", "best_metric")
    assert {k: getattr(coco, k) for k in levers} == {k: flickr[k] for k in levers}


def test_coco_best_is_the_coco_preset_then_self_critical_epochs():
    """`--preset coco-best` trains exactly what `--preset coco` trains, then the self-critical epochs that
    flickr8k-best adds: a coco run resumed with coco-best's extra settings is that preset's run."""
    coco, best = train_mod.PRESETS["coco"], train_mod.PRESETS["coco-best"]
    extra = {k: v for k, v in best.items() if coco.get(k) != v}
    assert set(extra) <= set(train_mod.RESUMABLE) and extra.get("scst_epochs", 0) > 0
    assert {k: v for k, v in best.items() if k not in extra} == coco
    flickr_extra = {k for k, v in train_mod.PRESETS["flickr8k-best"].items() if train_mod.PRESETS["flickr8k"].get(k) != v}
    assert set(extra) == flickr_extra
