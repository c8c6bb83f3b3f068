"""The bundled model (bundle.py, models/): a compact copy of a trained checkpoint that captions photographs right
after set-up, the default of caption.py, ImageCaptioner and the hub entry."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

import bundle
from captioner import ImageCaptioner, which_checkpoint
from conftest import REPO_ROOT, SHARED
from data_loader import get_transform, load_image
from model import CheckpointError, MissingWeightsError, caption_batch, load_checkpoint, read_checkpoint

PHOTOS = sorted(p for p in (REPO_ROOT / "images").iterdir() if p.suffix == ".jpg")
FLICKR8K = SHARED / "data" / "flickr8k"
SHAPES_WORDS = {"circle", "square", "triangle", "shapes"}
# Words a Flickr8k captioner uses for what it sees most: people and dogs, and where they are.
FLICKR8K_WORDS = {"man", "woman", "boy", "girl", "dog", "person", "people", "child", "children", "player",
                  "group", "water", "grass", "field", "street", "snow", "shirt"}


def captions(checkpoint, beam=1):
    """model.caption_batch's captions of the sample photos, transformed as for evaluation."""
    encoder, decoder, vocab, ckpt = load_checkpoint(checkpoint)
    images = torch.stack([get_transform(False, ckpt["model_args"]["image_size"])(load_image(p)) for p in PHOTOS])
    return caption_batch(encoder, decoder, vocab, images=images, beam=beam, max_len=ckpt["config"]["max_len"])


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """(the run's best.pt, its bundled copy)."""
    out = tmp_path_factory.mktemp("bundle") / "tiny.pt"
    bundle.export(tiny_run / "best.pt", out)
    return tiny_run / "best.pt", out


def test_the_export_keeps_the_captions_and_drops_the_backbone_and_the_optimiser(exported):
    best, small = exported
    original, ckpt = read_checkpoint(best), read_checkpoint(small)
    assert not {"optimizer", "rng"} & set(ckpt) and {"optimizer", "rng"} <= set(original)
    assert not any(k.startswith("backbone.") for k in ckpt["encoder"])
    assert ckpt["backbone"]["file"] == "mobilenet_v2-b0353104.pth" and ckpt["backbone"]["weights"] == "IMAGENET1K_V1"
    halves = [k for k, v in ckpt["decoder"].items() if v.dtype == torch.float16]
    assert halves and all(ckpt["decoder"][k].numel() >= bundle.HALF_FROM for k in halves)
    assert all(v.dtype == torch.float32 for k, v in ckpt["encoder"].items() if v.numel() < bundle.HALF_FROM)
    assert small.stat().st_size < best.stat().st_size / 3
    assert ckpt["config"]["data_root"] == "data/flickr8k" and "out_dir" not in ckpt["config"]
    assert torch.equal(ckpt["train_images"], original["train_images"])  # evaluate.py still sees the overlap
    assert captions(small) == captions(best) and captions(small, beam=3) == captions(best, beam=3)
    encoder, _, _, _ = load_checkpoint(small)
    own, _, _, _ = load_checkpoint(best)
    for name, tensor in own.state_dict().items():  # the backbone bit for bit, the head within float16's rounding
        assert torch.allclose(encoder.state_dict()[name].float(), tensor.float(), rtol=1e-3, atol=1e-3), name


def test_exporting_twice_gives_the_same_bytes(exported, tmp_path):
    best, small = exported
    again = tmp_path / "elsewhere" / "other-name.pt"
    assert bundle.export(best, again) == bundle.sha256(small)
    assert again.read_bytes() == small.read_bytes()


def test_a_bundle_refuses_backbone_weights_it_was_not_trained_on(exported, tmp_path):
    ckpt = read_checkpoint(exported[1])
    ckpt["backbone"]["sha256"] = "0" * 64
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="holds other weights.*run `make weights`"):
        load_checkpoint(tmp_path / "other.pt")


def test_without_the_cnn_weights_offline_the_message_says_how_to_get_them(exported, tmp_path, monkeypatch):
    import torchvision.models._api as api

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty-hub"))
    with pytest.raises(MissingWeightsError) as error:
        load_checkpoint(exported[1])
    message = str(error.value)
    assert "mobilenet_v2-b0353104.pth" in message and "make weights" in message
    assert str(tmp_path / "empty-hub" / "checkpoints") in message


def test_an_attention_bundle_captions_with_its_attention(tiny_shapes, tmp_path):
    from conftest import tiny_train_config
    from train import train

    cfg = tiny_train_config(tiny_shapes, tmp_path, grid=1, head_hidden=0, backbone_blocks=14, local_hidden=32,
                            decoder="attention", attention_size=16, epochs=1, save_every=1)
    best = train(cfg) / "best.pt"
    bundle.export(best, tmp_path / "attention.pt")
    found = ImageCaptioner(tmp_path / "attention.pt")(PHOTOS[0], with_attention=True)
    assert found.caption == captions(best)[0] and found.weights.shape[0] == len(found.words)


# ---- the bundled file itself -------------------------------------------------------------------------
def bundled_ckpt():
    assert bundle.BUNDLED_MODEL.is_file(), f"{bundle.BUNDLED_MODEL} is missing: `make model` rebuilds it"
    return read_checkpoint(bundle.BUNDLED_MODEL)


def test_the_bundled_model_is_small_and_made_by_the_best_flickr8k_recipe():
    ckpt = bundled_ckpt()
    assert bundle.BUNDLED_MODEL.stat().st_size <= 10 * 1024 * 1024
    from train import make_config

    recipe = make_config("flickr8k-best")
    for key in ("epochs", "scst_epochs", "image_size", "feature_norm", "embed_norm", "image_every_step",
                "decoder_dropout", "embed_size", "hidden_size", "backbone", "best_metric"):
        assert ckpt["config"][key] == getattr(recipe, key), key
    assert ckpt["data"]["name"] == "Flickr8k" and ckpt["data"]["splits"]["train"]["images"] == 6000
    card = bundle.BUNDLED_MODEL.with_name(bundle.CARD).read_text()
    assert f"sha256: `{bundle.sha256(bundle.BUNDLED_MODEL)}`" in card  # the card names this very file
    assert "make model DATA_ROOT=" in card and "research" in card


def test_the_bundled_model_captions_photos_with_flickr8k_words_not_shapes_words():
    found = ImageCaptioner()(PHOTOS, beam=3)
    assert len(found) == 3 and ImageCaptioner().checkpoint == bundle.BUNDLED_MODEL
    words = [set(c.split()) for c in found]
    assert not set().union(*words) & SHAPES_WORDS, found
    assert all(w & FLICKR8K_WORDS for w in words), found
    assert all(3 <= len(c.split()) <= 20 and c.split()[-1] not in {"a", "an", "the", "of", "in", "on"} for c in found)


def test_with_no_checkpoint_the_hub_loads_the_bundled_model():
    captioner = torch.hub.load(str(REPO_ROOT), "captioner", source="local")
    assert captioner.checkpoint == bundle.BUNDLED_MODEL and captioner(PHOTOS[1]) == captions(bundle.BUNDLED_MODEL)[1]
    assert captioner.trained_on.startswith("trained on Flickr8k (6,000 train images)")


def test_the_hub_loads_the_bundled_model_from_a_github_download(tmp_path):
    """torch.hub.load("owner/repo", "captioner") unpacks GitHub's archive of the repository into the hub folder;
    this lays the tracked files there the same way, so no network is touched."""
    hub_dir = tmp_path / "hub"
    repo_copy = hub_dir / "someone_show-and-tell_main"
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    for name in files.split() + ["models/flickr8k.pt", "models/MODEL_CARD.md"]:
        if (REPO_ROOT / name).is_file() and not name.endswith(".ipynb"):
            (repo_copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, repo_copy / name)
    weights = Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v2-b0353104.pth"
    (hub_dir / "checkpoints").mkdir()
    shutil.copy2(weights, hub_dir / "checkpoints")
    script = (f"import torch; torch.hub.set_dir({str(hub_dir)!r}); "
              "c = torch.hub.load('someone/show-and-tell:main', 'captioner', trust_repo=True); "
              f"print(c.checkpoint); print(c({str(PHOTOS[1])!r}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    path, caption = done.stdout.strip().splitlines()[-2:]
    assert path == str(repo_copy / "models" / "flickr8k.pt") and caption == captions(bundle.BUNDLED_MODEL)[1]


def test_a_missing_bundle_says_how_to_get_it_back(monkeypatch, tmp_path):
    monkeypatch.setattr("captioner.BUNDLED_MODEL", tmp_path / "models" / "flickr8k.pt")
    with pytest.raises(FileNotFoundError, match="git checkout -- models/"):
        which_checkpoint(None)


@pytest.mark.skipif(not (FLICKR8K / "Flickr8k_text").is_dir(), reason=f"Flickr8k not found at {FLICKR8K}")
def test_the_cards_scores_are_what_evaluate_prints_for_the_bundled_file(tmp_path, capsys):
    import evaluate

    assert evaluate.main(["--checkpoint", str(bundle.BUNDLED_MODEL), "--data-root", str(FLICKR8K), "--split", "val",
                          "--beam", "1", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    card = bundle.BUNDLED_MODEL.with_name(bundle.CARD).read_text()
    row = next(line for line in card.splitlines() if line.startswith("| val | greedy |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "1,000"
    record = json.loads((tmp_path / "scores_val_beam1.json").read_text())
    for (key, _), cell in zip(bundle.SCORE_NAMES, cells[3:]):
        assert cell == f"{record['scores'][key]:.3f}", key
        assert re.search(rf"{key}\D+{re.escape(cell)}", printed), f"{key} {cell} not printed"


def test_photographs_go_to_the_bundled_model_only_when_the_checkpoint_learnt_shapes(tiny_run, exported):
    from captioner import for_photographs

    chosen, why = for_photographs(tiny_run / "best.pt")
    assert chosen == bundle.BUNDLED_MODEL and "learnt from the shapes set" in why
    assert for_photographs(bundle.BUNDLED_MODEL)[0] == bundle.BUNDLED_MODEL
    ckpt = read_checkpoint(exported[1])  # the same model, said to have learnt from Flickr8k: it is kept
    ckpt["data"] = {"kind": "flickr8k", "name": "Flickr8k"}
    torch.save(ckpt, exported[1].with_name("flickr8k-like.pt"))
    assert for_photographs(exported[1].with_name("flickr8k-like.pt"))[0] == exported[1].with_name("flickr8k-like.pt")


def test_make_demo_writes_the_sample_photos_captioned_by_the_bundled_model(tmp_path):
    import visualize

    printed = visualize.bundled_photos(str(REPO_ROOT / "images"), tmp_path, beam=3)
    rows = (tmp_path / "captions.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == [str(p) for p in PHOTOS]
    assert [r.split("\t")[1] for r in rows] == captions(bundle.BUNDLED_MODEL, beam=3)
    assert (tmp_path / "photos_images.png").stat().st_size > 10_000
    assert "captioned by the bundled model (trained on Flickr8k" in printed and all(r in printed for r in rows)


def test_two_rebuilds_on_the_same_machine_give_the_same_file(tiny_shapes, tmp_path):
    """`make model` twice: seeded training (cross-entropy, then self-critical sampling) and the export are
    deterministic on one machine, so the bundled file's bytes repeat, not just its scores."""
    from conftest import tiny_train_config
    from train import train

    digests = []
    for name in ("first", "second"):
        cfg = tiny_train_config(tiny_shapes, tmp_path / name, epochs=3, scst_epochs=1, save_every=1,
                                best_metric="CIDEr")
        digests.append(bundle.export(train(cfg) / "best.pt", tmp_path / name / "flickr8k.pt"))
    assert digests[0] == digests[1]
