"""The captioning object: torch.hub.load(repo, "captioner", source="local") on checkpoints these tests train, and
caption.py, which uses the same object."""
import ast
import subprocess
import sys

import pytest
import torch
from PIL import Image

import caption
from captioner import ImageCaptioner
from conftest import REPO_ROOT, tiny_train_config
from data_loader import get_transform, load_image
from model import caption_batch, load_checkpoint

PHOTOS = sorted(p for p in (REPO_ROOT / "images").iterdir() if p.suffix == ".jpg")


@pytest.fixture(scope="module")
def lstm_checkpoint(tiny_shapes, tmp_path_factory):
    from train import train

    return train(tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("hub"), epochs=4, save_every=4)) / "best.pt"


@pytest.fixture(scope="module")
def attention_checkpoint(tiny_shapes, tmp_path_factory):
    from train import train

    cfg = tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("hub_attention"), grid=1, head_hidden=0,
                            backbone_blocks=14, local_hidden=64, decoder="attention", attention_size=32, epochs=2,
                            save_every=2)
    return train(cfg) / "best.pt"


def hub(checkpoint, **kw):
    return torch.hub.load(str(REPO_ROOT), "captioner", source="local", checkpoint=str(checkpoint), **kw)


def reference(checkpoint, paths, beam):
    """The captions model.caption_batch gives for these files, transformed as for evaluation."""
    encoder, decoder, vocab, ckpt = load_checkpoint(checkpoint)
    transform = get_transform(train=False, image_size=ckpt["model_args"]["image_size"])
    images = torch.stack([transform(load_image(p)) for p in paths])
    return caption_batch(encoder, decoder, vocab, images=images, beam=beam, max_len=ckpt["config"]["max_len"])


def test_hub_captioner_captions_paths_pil_images_and_batches(lstm_checkpoint):
    captioner = hub(lstm_checkpoint)
    assert isinstance(captioner, ImageCaptioner)
    greedy, beamed = reference(lstm_checkpoint, PHOTOS, 1), reference(lstm_checkpoint, PHOTOS, 3)
    assert captioner(PHOTOS) == greedy and captioner(PHOTOS, beam=3) == beamed
    assert [captioner(p) for p in PHOTOS] == greedy  # one picture: a string; a batch changes nothing
    assert captioner(Image.open(PHOTOS[0])) == greedy[0]  # a PIL image as a path
    assert captioner(Image.open(PHOTOS[0]).convert("L")) == captioner(Image.open(PHOTOS[0]).convert("L").convert("RGB"))
    assert captioner((str(PHOTOS[1]), Image.open(PHOTOS[2]))) == greedy[1:3]
    assert hub(lstm_checkpoint, beam=3)(PHOTOS[0]) == beamed[0]  # a default beam for every call
    with pytest.raises(ValueError, match="no attention weights: its decoder is 'lstm'"):
        captioner(PHOTOS[0], with_attention=True)
    with pytest.raises(TypeError, match="give a PIL image, an image path"):
        captioner(42)
    vocab_size = load_checkpoint(lstm_checkpoint)[3]["model_args"]["vocab_size"]
    assert captioner.trained_on.startswith(f"trained on the built-in shapes set (64 train images), vocabulary "
                                           f"{vocab_size} words, lstm decoder on mobilenet_v2, best.pt from epoch")


def test_hub_finds_the_newest_run_and_checkpoints_relative_to_the_repository(lstm_checkpoint, monkeypatch, tmp_path):
    captioner = torch.hub.load(str(REPO_ROOT), "captioner", source="local", runs_dir=str(lstm_checkpoint.parent.parent))
    assert captioner.checkpoint == lstm_checkpoint
    monkeypatch.chdir(tmp_path)  # a path that is not under the working directory is looked up in the repository
    with pytest.raises(FileNotFoundError, match="checkpoint not found: runs/none/best.pt"):
        torch.hub.load(str(REPO_ROOT), "captioner", source="local", checkpoint="runs/none/best.pt")


def test_hub_captioner_gives_words_with_their_attention(attention_checkpoint):
    captioner = hub(attention_checkpoint)
    found = captioner(PHOTOS, with_attention=True)
    assert [f.caption for f in found] == reference(attention_checkpoint, PHOTOS, 1)
    for f in found:
        assert f.weights.shape == (len(f.words), 4, 4)  # a 4x4 map at 64 px
        assert torch.allclose(f.weights.sum(dim=(1, 2)), torch.ones(len(f.words)), atol=1e-3)
        assert f.image.shape == (3, 64, 64)
    one = captioner(PHOTOS[0], with_attention=True, beam=2)
    assert one.caption == reference(attention_checkpoint, PHOTOS[:1], 2)[0]
    figure = captioner.attention_figure(PHOTOS[0])
    assert len(figure.axes) >= len(found[0].words) + 1  # the picture, then a panel per word


def test_caption_cli_says_what_the_model_was_trained_on(lstm_checkpoint, capsys):
    assert caption.main(["--checkpoint", str(lstm_checkpoint), "--num-workers", "0", str(PHOTOS[0])]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{PHOTOS[0]}\t{reference(lstm_checkpoint, PHOTOS[:1], 1)[0]}"]
    assert f"{lstm_checkpoint}: trained on the built-in shapes set (64 train images)" in captured.err


def test_hub_works_beside_a_session_module_of_the_same_name(lstm_checkpoint, tmp_path):
    """A session that imported a `model` of its own (and a `vocabulary`) still gets the captioner, and keeps
    its own modules under their names afterwards. In a fresh interpreter, so that nothing here is imported."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.py").write_text("WHO = 'the user'\n")
    (tmp_path / "mine" / "vocabulary.py").write_text("WHO = 'the user too'\n")
    script = f"""
import sys
sys.path.insert(0, {str(tmp_path / "mine")!r})
import model, vocabulary
import torch
captioner = torch.hub.load({str(REPO_ROOT)!r}, "captioner", source="local", checkpoint={str(lstm_checkpoint)!r})
print(repr(captioner({str(PHOTOS[0])!r})))
print(sys.modules["model"] is model, sys.modules["vocabulary"] is vocabulary, model.WHO)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [repr(reference(lstm_checkpoint, PHOTOS[:1], 1)[0]), "True True the user"]


def third_party_imports(module_name, seen=None):
    """The top-level packages a repository module imports when it loads (module-level imports, followed through
    the repository's own modules)."""
    seen = set() if seen is None else seen
    seen.add(module_name)
    found = set()
    for node in ast.parse((REPO_ROOT / f"{module_name}.py").read_text()).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for top in (n.split(".")[0] for n in names):
            if (REPO_ROOT / f"{top}.py").is_file():
                found |= set() if top in seen else third_party_imports(top, seen)
            elif top not in sys.stdlib_module_names:
                found.add(top)
    return found


def test_hub_dependencies_name_every_package_the_captioner_loads():
    import hubconf

    needed = third_party_imports("captioner")
    assert {"torch", "numpy", "nltk", "pycocotools"} <= needed  # the walk itself works
    assert needed <= set(hubconf.dependencies), f"hubconf.dependencies lacks {needed - set(hubconf.dependencies)}"
