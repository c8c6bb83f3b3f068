"""Tests of model.py: shapes, the Udacity contract, frozen backbones, overfitting, weights files, decoding, checkpoints.

Everything is tiny (random-weight resnet18 / mobilenet_v2 at 32-64 px, LSTMs of 16-32 units) and runs on the CPU.
"""
import hashlib
import inspect
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models import ResNet50_Weights, resnet50

import model
from model import (CheckpointError, DecoderRNN, EncoderCNN, MissingWeightsError, beam_search, greedy_search,
                   load_checkpoint, load_state, read_checkpoint)
from vocabulary import Vocabulary

START, END = 0, 1
V = 15  # vocabulary size of the toy decoders
E, H = 16, 32  # embedding and LSTM sizes
MAX_LEN = 10


# ---------------------------------------------------------------------------------------------------
# Shared helpers and fixtures
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a small shared machine, intra-op threads spin against other processes and make
    these tiny convolutions hundreds of times slower. Restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_decoder(seed=0, end_bias=0.0):
    """A random decoder; end_bias raises the score of <end> so that some captions end and some do not."""
    torch.manual_seed(seed)
    decoder = DecoderRNN(E, H, V).eval()
    with torch.no_grad():
        decoder.fc.bias[END] += end_bias
    return decoder


def features(n, seed=1):
    return torch.randn(n, E, generator=torch.Generator().manual_seed(seed)) * 2  # (n, E)


# Four captions of different lengths, padded with <end> so they stack: <start> words <end> <end>...
TARGETS = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12, 13, 14, 3, 4]]


def padded(captions, end=END):
    T = max(len(c) for c in captions) + 2
    return torch.tensor([[START] + c + [end] * (T - 1 - len(c)) for c in captions])  # (B, T)


def overfit(decoder, feats, captions, lr=0.01, max_steps=400, target=0.05):
    """Train on one batch until the loss is below target. Returns (first loss, last loss, steps)."""
    opt = torch.optim.Adam(decoder.parameters(), lr=lr)
    decoder.train()
    for step in range(1, max_steps + 1):
        scores = decoder(feats, captions)  # (B, T, V)
        loss = F.cross_entropy(scores.reshape(-1, V), captions.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if step == 1 else first
        if loss.item() < target:
            break
    decoder.eval()
    return first, loss.item(), step


@pytest.fixture(scope="module")
def overfit_model():
    """(decoder, features, first loss, last loss, steps) trained to reproduce TARGETS from 4 random features."""
    decoder = random_decoder(seed=0)
    feats = features(4, seed=2)
    first, last, steps = overfit(decoder, feats, padded(TARGETS))
    return decoder, feats, first, last, steps


@pytest.fixture(scope="module")
def random_case():
    """A random decoder and 16 images whose greedy captions are a mix of ended and cut-off ones."""
    decoder, feats = random_decoder(seed=5, end_bias=0.2), features(16, seed=6)
    lengths = [len(c) for c in greedy_search(decoder, feats, MAX_LEN)[0]]
    assert min(lengths) < MAX_LEN and max(lengths) == MAX_LEN  # both kinds, so both paths are tested
    return decoder, feats


def teacher_forced_logprob(decoder, feats, captions, max_len):
    """Sum of log p(word) of each caption (and of <end>, when the caption ended within max_len)."""
    out = []
    with torch.no_grad():
        for f, caption in zip(feats, captions):
            seq = [START] + list(caption) + ([END] if len(caption) < max_len else [])
            logp = F.log_softmax(decoder(f[None], torch.tensor([seq])), dim=-1)[0]  # (T, V)
            # Output t predicts seq[t]; output 0 (the image step) predicts <start>, which is not scored.
            out.append(sum(logp[t, seq[t]].item() for t in range(1, len(seq))))
    return torch.tensor(out)


# ---------------------------------------------------------------------------------------------------
# Shapes and the Udacity contract
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone, channels", [("resnet18", 512), ("mobilenet_v2", 1280)])
@pytest.mark.parametrize("grid", [1, 2])
@pytest.mark.parametrize("head_hidden", [0, 24])
def test_encoder_shapes(backbone, channels, grid, head_hidden):
    torch.manual_seed(0)
    encoder = EncoderCNN(20, backbone=backbone, pretrained=False, grid=grid, head_hidden=head_hidden).eval()
    assert encoder.feature_size == channels * grid * grid
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats, out = encoder.features(images), encoder(images)
    assert feats.shape == (2, channels * grid * grid)
    assert out.shape == (2, 20)
    linears = [m for m in encoder.embed.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == (
        [(channels * grid * grid, head_hidden), (head_hidden, 20)] if head_hidden else [(channels * grid * grid, 20)])


def test_udacity_signatures():
    enc = list(inspect.signature(EncoderCNN).parameters)
    dec = inspect.signature(DecoderRNN).parameters
    assert enc[0] == "embed_size"
    assert list(dec)[:4] == ["embed_size", "hidden_size", "vocab_size", "num_layers"]
    assert dec["num_layers"].default == 1


def test_decoder_forward_shape_positional_args():
    decoder = DecoderRNN(E, H, V, 1)  # the Udacity notebook's call
    assert (decoder.lstm.input_size, decoder.lstm.hidden_size, decoder.lstm.num_layers) == (E, H, 1)
    assert decoder.fc.out_features == V
    captions = torch.randint(0, V, (3, 7))  # (B, T)
    assert decoder(features(3), captions).shape == (3, 7, V)
    with pytest.raises(ValueError, match="vocab_size"):
        DecoderRNN(E, H)


def test_encoder_output_feeds_decoder_sample():
    """The Udacity inference call: features = encoder(image); decoder.sample(features.unsqueeze(1))."""
    torch.manual_seed(0)
    encoder = EncoderCNN(E, "mobilenet_v2", pretrained=False).eval()
    decoder = random_decoder(seed=5, end_bias=0.2)
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 32, 32))  # (1, E)
    ids = decoder.sample(feats.unsqueeze(1), max_len=MAX_LEN)
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    assert 1 <= len(ids) <= MAX_LEN
    assert END not in ids[:-1]  # it stops at the first <end>
    assert ids == decoder.sample(feats, max_len=MAX_LEN)  # (1, E) is accepted too


def test_sample_and_generate_on_an_overfit_decoder(overfit_model):
    decoder, feats, *_ = overfit_model
    for f, target in zip(feats, TARGETS):
        assert decoder.sample(f[None].unsqueeze(1), max_len=MAX_LEN) == [START] + target + [END]
        assert decoder.sample(f[None].unsqueeze(1), max_len=2) == [START] + target[:1]  # cut at max_len
    assert decoder.generate(feats, max_len=MAX_LEN) == TARGETS  # B lists, no <start>, no <end>


def test_generate_returns_one_list_per_image(random_case):
    decoder, feats = random_case
    captions = decoder.generate(feats, max_len=MAX_LEN)
    assert len(captions) == len(feats) and all(isinstance(c, list) and len(c) <= MAX_LEN for c in captions)
    assert all(type(i) is int for c in captions for i in c) and all(END not in c for c in captions)
    assert captions == greedy_search(decoder, feats, MAX_LEN)[0]
    for i in (0, 3, 12):  # batching changes nothing: each image alone gets the same caption
        assert decoder.generate(feats[i:i + 1], max_len=MAX_LEN) == [captions[i]]


# ---------------------------------------------------------------------------------------------------
# Training behaviour
# ---------------------------------------------------------------------------------------------------
def train_steps(encoder, steps=3):
    torch.manual_seed(0)
    decoder = DecoderRNN(E, H, V)
    params = [p for p in list(encoder.parameters()) + list(decoder.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.01)
    images, captions = torch.randn(4, 3, 32, 32), torch.randint(0, V, (4, 6))
    for _ in range(steps):
        encoder.train()  # what a training loop does each epoch: must not wake the frozen backbone
        decoder.train()
        scores = decoder(encoder(images), captions)  # (B, T, V)
        loss = F.cross_entropy(scores.reshape(-1, V), captions.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


def cloned_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_backbone_is_bit_identical_after_training():
    torch.manual_seed(0)
    encoder = EncoderCNN(E, "resnet18", pretrained=False, train_backbone=False)
    before_backbone, before_embed = cloned_state(encoder.backbone), cloned_state(encoder.embed)
    assert any(k.endswith("running_mean") for k in before_backbone)
    assert any(k.endswith("num_batches_tracked") for k in before_backbone)
    train_steps(encoder)
    assert encoder.training and not encoder.backbone.training
    assert not any(p.requires_grad for p in encoder.backbone.parameters())
    after = encoder.backbone.state_dict()
    changed = [k for k in before_backbone if not torch.equal(before_backbone[k], after[k])]
    assert changed == []  # weights, running_mean / running_var and num_batches_tracked alike
    assert not torch.equal(before_embed["weight"], encoder.embed.weight)


def test_trainable_backbone_does_change():
    """The counterpart of the test above: with train_backbone=True the same steps move weights and statistics."""
    torch.manual_seed(0)
    encoder = EncoderCNN(E, "resnet18", pretrained=False, train_backbone=True)
    before = cloned_state(encoder.backbone)
    train_steps(encoder, steps=1)
    after = encoder.backbone.state_dict()
    assert not torch.equal(before["0.weight"], after["0.weight"])  # conv1
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])  # bn1
    assert after["1.num_batches_tracked"].item() == before["1.num_batches_tracked"].item() + 1


def test_overfitting_one_batch(overfit_model):
    _, _, first, last, steps = overfit_model
    assert first > 2.0  # about log(15) at the start
    assert last < 0.1
    assert steps <= 400


# ---------------------------------------------------------------------------------------------------
# Weights files: the torch hub cache, offline
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A temporary, empty torch hub cache; any download attempt is recorded and fails."""
    hub = tmp_path / "torch" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))  # what torch.hub.set_dir does, undone afterwards
    attempts = []

    def no_download(url, dst, *args, **kwargs):
        attempts.append(url)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return hub, attempts


def test_resnet50_loads_from_the_hub_cache(empty_hub):
    hub, attempts = empty_hub
    url = ResNet50_Weights.DEFAULT.url
    path = hub / "checkpoints" / Path(url).name
    assert path.name == "resnet50-11ad3fa6.pth"
    torch.manual_seed(123)
    saved = resnet50().state_dict()  # random weights standing in for the real file
    path.parent.mkdir(parents=True)
    torch.save(saved, path)
    # torchvision asks for check_hash=True, but torch.hub.load_state_dict_from_url only checks the hash of a
    # file it downloads; a file already in the cache is loaded as it is. So nothing needs patching here, and
    # this file's content indeed does not match the hash prefix in its name:
    assert not hashlib.sha256(path.read_bytes()).hexdigest().startswith("11ad3fa6")
    assert model.weights_path(model.resolve_weights("resnet50", True)) == path

    encoder = EncoderCNN(8)  # positional embed_size; the defaults are resnet50 and pretrained=True
    assert attempts == []
    trunk = encoder.backbone  # children of ResNet without avgpool and fc: conv1, bn1, relu, maxpool, layer1..4
    assert torch.equal(trunk[0].weight, saved["conv1.weight"])
    assert torch.equal(trunk[1].running_var, saved["bn1.running_var"])
    assert torch.equal(trunk[7][2].conv3.weight, saved["layer4.2.conv3.weight"])
    assert encoder.feature_size == 2048
    explicit = EncoderCNN(8, backbone="resnet50", pretrained=True)
    assert torch.equal(explicit.backbone[4][0].conv1.weight, saved["layer1.0.conv1.weight"])


def test_missing_mobilenet_weights_say_make_weights(empty_hub):
    hub, attempts = empty_hub
    with pytest.raises(MissingWeightsError) as e:
        EncoderCNN(8, "mobilenet_v2", pretrained=True)
    msg = str(e.value)
    assert "missing file: mobilenet_v2-b0353104.pth" in msg
    assert str(hub / "checkpoints") in msg
    assert "make weights" in msg
    assert attempts == [model.resolve_weights("mobilenet_v2", True).url]  # it tried, and the test refused


def test_missing_resnet_weights_give_the_url(empty_hub):
    hub, attempts = empty_hub
    with pytest.raises(MissingWeightsError) as e:
        EncoderCNN(8, "resnet18", pretrained=True)
    msg = str(e.value)
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert "missing file: resnet18-f37072fd.pth" in msg and str(hub / "checkpoints") in msg
    assert url in msg and "make weights" not in msg
    assert attempts == [url]


def test_mobilenet_asks_for_the_offline_weights():
    weights = model.resolve_weights("mobilenet_v2", True)
    assert weights.name == "IMAGENET1K_V1"
    assert model.weights_path(weights).name in model.MAKE_WEIGHTS_FILES
    assert model.resolve_weights("resnet18", False) is None
    assert model.resolve_weights("resnet18", "IMAGENET1K_V1").name == "IMAGENET1K_V1"
    with pytest.raises(ValueError, match="unknown torchvision backbone"):
        model.resolve_weights("no_such_net", True)
    with pytest.raises(ValueError, match="has no weights 'BOGUS'"):
        model.resolve_weights("resnet18", "BOGUS")


def test_mobilenet_pretrained_from_the_real_cache():
    path = model.weights_path(model.resolve_weights("mobilenet_v2", True))
    if not path.is_file():
        pytest.skip(f"{path} not installed (run `make weights`)")
    encoder = EncoderCNN(8, "mobilenet_v2", pretrained=True)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(encoder.backbone[0][0].weight, saved["features.0.0.weight"])


# ---------------------------------------------------------------------------------------------------
# Device and seeds
# ---------------------------------------------------------------------------------------------------
def test_get_device(monkeypatch):
    assert model.get_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert model.get_device() == torch.device("cpu")
    assert model.get_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model.get_device() == torch.device("cuda")


def test_set_seed_repeats_every_generator():
    def draw():
        return torch.randn(5), np.random.rand(3), random.random()

    model.set_seed(7)
    a = draw()
    model.set_seed(7)
    b = draw()
    model.set_seed(8)
    c = draw()
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not torch.equal(a[0], c[0]) and not np.array_equal(a[1], c[1]) and a[2] != c[2]


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------
def test_beam_1_equals_greedy_on_a_random_decoder(random_case):
    decoder, feats = random_case
    g_caps, g_scores = greedy_search(decoder, feats, MAX_LEN)
    b_caps, b_scores = beam_search(decoder, feats, beam_size=1, max_len=MAX_LEN)
    assert b_caps == g_caps
    assert torch.allclose(b_scores, g_scores, atol=1e-5)


def test_beam_1_equals_greedy_on_an_overfit_decoder(overfit_model):
    decoder, feats, *_ = overfit_model
    g_caps, g_scores = greedy_search(decoder, feats, MAX_LEN)
    b_caps, b_scores = beam_search(decoder, feats, beam_size=1, max_len=MAX_LEN)
    assert g_caps == b_caps == TARGETS
    assert torch.allclose(b_scores, g_scores, atol=1e-5)


@pytest.mark.parametrize("search", ["greedy", "beam1", "beam3"])
def test_scores_are_teacher_forced_log_probabilities(random_case, search):
    decoder, feats = random_case
    if search == "greedy":
        captions, scores = greedy_search(decoder, feats, MAX_LEN)
    else:
        captions, scores = beam_search(decoder, feats, beam_size=int(search[-1]), max_len=MAX_LEN)
    assert scores.shape == (16,)
    assert torch.allclose(scores, teacher_forced_logprob(decoder, feats, captions, MAX_LEN), atol=1e-4)


def test_beam_3_at_least_as_good_as_greedy_on_an_overfit_decoder(overfit_model):
    decoder, feats, *_ = overfit_model
    g_caps, g_scores = greedy_search(decoder, feats, MAX_LEN)
    b_caps, b_scores = beam_search(decoder, feats, beam_size=3, max_len=MAX_LEN)
    assert (b_scores >= g_scores - 1e-5).all()
    assert b_caps == TARGETS
    assert torch.allclose(b_scores, teacher_forced_logprob(decoder, feats, b_caps, MAX_LEN), atol=1e-4)


class TableDecoder:
    """A decoder whose next-word distribution depends only on the last word, from a fixed table.

    table: {previous word: {next word: probability}}; unlisted pairs get a negligible probability.
    """
    start_id, end_id = START, END
    A, B = 2, 3
    EPS = 1e-9

    def __init__(self, table):
        p = torch.full((4, 4), self.EPS)
        for prev, row in table.items():
            for word, prob in row.items():
                p[prev, word] = prob
        self.logits = p.log()  # (V, V)
        self.logp = F.log_softmax(self.logits, dim=-1)

    def start(self, feats):
        return self.step(torch.full((feats.size(0),), START), None)

    def step(self, tokens, state, image=None):
        zeros = torch.zeros(1, tokens.size(0), 1)  # a stand-in LSTM state (layers, B, hidden)
        return self.logits[tokens], (zeros, zeros)

    def score(self, words, ended=True):
        seq = [START] + words + [END] * ended
        return sum(self.logp[a, b] for a, b in zip(seq, seq[1:]))


A, B = TableDecoder.A, TableDecoder.B


def test_beam_finds_the_better_caption_greedy_misses():
    # Greedy takes A then <end> (p = 0.55 * 0.4 = 0.22); B <end> is better (p = 0.45 * 0.99), and beam search finds it.
    decoder = TableDecoder({START: {A: 0.55, B: 0.45}, A: {END: 0.4, A: 0.3, B: 0.3}, B: {END: 0.99},
                            END: {END: 1.0}})
    feats = torch.zeros(2, 4)
    g_caps, g_scores = greedy_search(decoder, feats, max_len=5)
    assert g_caps == [[A]] * 2
    assert torch.allclose(g_scores, decoder.score([A]).expand(2))
    assert beam_search(decoder, feats, beam_size=1, max_len=5)[0] == g_caps
    b_caps, b_scores = beam_search(decoder, feats, beam_size=3, max_len=5)
    assert b_caps == [[B]] * 2
    assert torch.allclose(b_scores, decoder.score([B]).expand(2))


@pytest.mark.parametrize("length_penalty", [0.0, 2.0])
@pytest.mark.parametrize("beam_size", [2, 3])
def test_finished_beams_stay_finished(length_penalty, beam_size):
    """After <end> this decoder would go on with <end> <end> ...; with a length penalty such a longer (but
    trimmed) hypothesis would outrank "A <end>" if finished beams were extended. They must not be."""
    decoder = TableDecoder({START: {A: 0.9, B: 0.1}, A: {END: 0.6, A: 0.2, B: 0.2}, B: {END: 0.5, B: 0.5},
                            END: {END: 0.9, A: 0.1}})
    captions, scores = beam_search(decoder, torch.zeros(1, 4), beam_size, max_len=5, length_penalty=length_penalty)
    assert captions == [[A]]
    assert torch.allclose(scores, decoder.score([A]).reshape(1))


@pytest.mark.parametrize("beam_size", [2, 3, 5])
@pytest.mark.parametrize("max_len", [1, 4, MAX_LEN])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0])  # with a penalty, a beam that went on after <end> could win
def test_beam_captions_never_contain_end_and_respect_max_len(random_case, beam_size, max_len, length_penalty):
    decoder, feats = random_case
    captions, scores = beam_search(decoder, feats, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty)
    assert len(captions) == 16
    assert all(END not in c and len(c) <= max_len for c in captions)
    assert torch.isfinite(scores).all() and (scores <= 0).all()
    assert torch.allclose(scores, teacher_forced_logprob(decoder, feats, captions, max_len), atol=1e-4)


def test_length_penalty_normaliser():
    assert model.length_normaliser(7, 0.0) == 1.0
    assert model.length_normaliser(1, 1.0) == 1.0
    assert model.length_normaliser(7, 1.0) == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------
WORDS = "a red blue green circle square triangle left right of the above".split()  # 12 words + 3 specials


def save_checkpoint(path, vocab=None, **changes):
    """A checkpoint dict built by hand, as train.py writes one; returns (encoder, decoder, dict)."""
    vocab = vocab or Vocabulary(WORDS)
    args = dict(embed_size=E, hidden_size=H, vocab_size=len(vocab), backbone="mobilenet_v2", pretrained=False,
                grid=1, head_hidden=0, num_layers=1, start_id=vocab.start_id, end_id=vocab.end_id)
    torch.manual_seed(0)
    encoder, decoder = model.build_model(args)
    ckpt = {"format": model.CHECKPOINT_FORMAT, "model_args": args, "encoder": encoder.state_dict(),
            "decoder": decoder.state_dict(), "vocab": vocab.to_dict()}
    ckpt.update(changes)
    torch.save(ckpt, path)
    return encoder.eval(), decoder.eval(), ckpt


def test_checkpoint_round_trip(tmp_path, empty_hub):
    _, attempts = empty_hub
    # pretrained=True in the saved arguments: loading must not need (or try) a weights download.
    args = dict(embed_size=E, hidden_size=H, vocab_size=V, backbone="mobilenet_v2", pretrained=True)
    torch.manual_seed(0)
    encoder, decoder = model.build_model(dict(args, pretrained=False))
    vocab = Vocabulary(WORDS)
    torch.save({"format": model.CHECKPOINT_FORMAT, "model_args": args, "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(), "vocab": vocab.to_dict()}, tmp_path / "ckpt.pt")
    vocab.save(tmp_path / "vocab.json")
    enc2, dec2, vocab2, ckpt = load_checkpoint(tmp_path / "ckpt.pt", vocab=tmp_path / "vocab.json")
    assert attempts == []
    assert vocab2 == vocab and ckpt["model_args"] == args
    assert not enc2.training and not dec2.training
    images = torch.randn(2, 3, 32, 32)
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(enc2(images), encoder(images))
        feats = encoder(images)
    assert dec2.generate(feats, MAX_LEN) == decoder.generate(feats, MAX_LEN)


class Custom:
    """Loading an object of this class needs pickled code, which weights_only refuses."""

    def __init__(self):
        self.x = 1


@pytest.mark.parametrize("what, content", [
    ("a list", [1, 2, 3]),
    ("a foreign dict", {"model": {"w": torch.zeros(2)}, "epoch": 3}),
    ("a dict of another format", {"format": "something-else/1"}),
    ("pickled code", {"format": model.CHECKPOINT_FORMAT, "obj": Custom()}),
])
def test_read_checkpoint_refuses(tmp_path, what, content):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "x.pt")
    expected = "files that need pickled code are refused" if what == "pickled code" else "not a checkpoint of this"
    assert expected in str(e.value) and str(tmp_path / "x.pt") in str(e.value)


def test_read_checkpoint_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a loadable checkpoint"):
        read_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="python train.py"):
        read_checkpoint(tmp_path / "missing.pt")


def test_load_state_names_the_mismatching_tensor():
    small, big = DecoderRNN(E, H, V), DecoderRNN(E, H, V + 1)
    with pytest.raises(CheckpointError) as e:
        load_state(small, big.state_dict(), "decoder")
    msg = str(e.value)
    assert "the decoder weights do not fit" in msg
    assert f"embed.weight: checkpoint ({V + 1}, {E}) vs model ({V}, {E})" in msg
    assert f"fc.weight: checkpoint ({V + 1}, {H}) vs model ({V}, {H})" in msg
    state = small.state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing \['fc.bias'\]; unexpected \['extra.weight'\]"):
        load_state(small, state, "decoder")
    before = cloned_state(small)
    load_state(small, DecoderRNN(E, H, V).state_dict(), "decoder")  # a fitting one loads
    assert not torch.equal(before["fc.weight"], small.fc.weight)


def test_load_checkpoint_refuses_another_vocabulary_before_decoding(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ckpt.pt")
    other = Vocabulary(WORDS[:2] + ["yellow"] + WORDS[3:])
    monkeypatch.setattr(model, "build_model", lambda *a: pytest.fail("the model was built"))
    with pytest.raises(CheckpointError, match=r"first difference at id 5: 'yellow' vs 'blue'"):
        load_checkpoint(tmp_path / "ckpt.pt", vocab=other)
    with pytest.raises(CheckpointError, match="one is a prefix of the other"):
        load_checkpoint(tmp_path / "ckpt.pt", vocab=Vocabulary(WORDS + ["extra"]))


def test_load_checkpoint_refuses_inconsistent_sizes(tmp_path):
    _, _, ckpt = save_checkpoint(tmp_path / "ckpt.pt")
    torch.save(dict(ckpt, model_args=dict(ckpt["model_args"], vocab_size=V + 1)), tmp_path / "bad_vocab.pt")
    with pytest.raises(CheckpointError, match=f"vocab_size {V + 1} but holds {V} words"):
        load_checkpoint(tmp_path / "bad_vocab.pt")
    torch.save(dict(ckpt, model_args=dict(ckpt["model_args"], hidden_size=H * 2)), tmp_path / "bad_hidden.pt")
    with pytest.raises(CheckpointError, match=r"decoder weights do not fit.*lstm\.weight_hh_l0"):
        load_checkpoint(tmp_path / "bad_hidden.pt")


def test_feature_standardisation_is_fitted_saved_and_applied():
    from model import Standardize

    torch.manual_seed(0)
    encoder = EncoderCNN(8, backbone="resnet18", pretrained=False, feature_norm=True)
    features = torch.rand(50, encoder.feature_size) * torch.linspace(0.01, 30, encoder.feature_size)  # (N, D)
    features[:, 0] = 2.0  # a dead channel: its std is floored, not zero
    encoder.fit_feature_stats(features)
    (standardize,) = [m for m in encoder.embed.modules() if isinstance(m, Standardize)]
    z = standardize(features)
    assert torch.allclose(z[:, 1:].mean(0), torch.zeros(encoder.feature_size - 1), atol=1e-4)
    assert torch.allclose(z[:, 1:].std(0), torch.ones(encoder.feature_size - 1), atol=1e-4)
    assert torch.all(z[:, 0] == 0) and standardize.std[0] == Standardize.MIN_STD
    state = encoder.state_dict()
    assert torch.allclose(state["embed.0.mean"], features.mean(0), rtol=1e-6)  # buffers: saved in checkpoints
    rebuilt = EncoderCNN(8, backbone="resnet18", pretrained=False, feature_norm=True)
    rebuilt.load_state_dict(state)
    assert torch.allclose(rebuilt.embed(features), encoder.embed(features))
    assert not any(p is standardize.mean for p in encoder.parameters())  # never trained
    plain = EncoderCNN(8, backbone="resnet18", pretrained=False)
    plain.fit_feature_stats(features)  # no standardisation layer: nothing to fit, nothing changes
    assert not any(isinstance(m, Standardize) for m in plain.modules())


@pytest.mark.parametrize("image_every_step", [False, True])
def test_decoder_dropout_only_while_training(image_every_step):
    """decoder_dropout perturbs training scores, never evaluation or decoding; old model_args load without it."""
    torch.manual_seed(0)
    dec = DecoderRNN(16, 32, 20, decoder_dropout=0.5, image_every_step=image_every_step)
    features, captions = torch.randn(4, 16), torch.randint(0, 20, (4, 7))
    dec.train()
    assert not torch.allclose(dec(features, captions), dec(features, captions))  # (B, T, V) differ per pass
    dec.eval()
    scores = dec(features, captions)
    assert torch.equal(scores, dec(features, captions))
    plain = DecoderRNN(16, 32, 20, image_every_step=image_every_step)
    plain.load_state_dict(dec.state_dict())  # dropout has no weights: same parameters, same eval scores
    assert torch.allclose(plain.eval()(features, captions), scores)
    args = dict(embed_size=16, hidden_size=32, vocab_size=20, backbone="mobilenet_v2", pretrained=False)
    assert model.build_model(args)[1].drop.p == 0.0
    assert model.build_model({**args, "decoder_dropout": 0.3})[1].drop.p == 0.3


# ---------------------------------------------------------------------------------------------------
# Word rules: no <unk>, no caption that ends on "a", "of", ... (greedy, beam, sampling, the Udacity sample)
# ---------------------------------------------------------------------------------------------------
RULE_WORDS = "a dog cat on grass runs the".split()  # + <start> <end> <unk>: ids 3.. in this order


def ruled_decoder(kind="lstm", unk_bias=0.0, seed=0):
    """A tiny random decoder with the rules of RULE_WORDS' vocabulary; unk_bias raises <unk>'s score everywhere."""
    vocab = Vocabulary(RULE_WORDS)
    args = dict(embed_size=E, hidden_size=H, vocab_size=len(vocab), backbone="mobilenet_v2", pretrained=False,
                decoder=kind, start_id=vocab.start_id, end_id=vocab.end_id, **model.word_rules(vocab))
    torch.manual_seed(seed)
    _, decoder = model.build_model(args)
    with torch.no_grad():
        decoder.fc.bias[vocab.unk_id] += unk_bias
    return decoder.eval(), vocab


def annotations(kind, n, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, E, generator=g) if kind == "attention" else torch.randn(n, E, generator=g)


def test_word_rules_name_unk_start_and_the_ending_words_the_vocabulary_has():
    vocab = Vocabulary(RULE_WORDS)
    rules = model.word_rules(vocab)
    assert rules["banned_ids"] == [vocab.unk_id, vocab.start_id]
    assert rules["no_end_after"] == sorted([vocab("a"), vocab("on"), vocab("the")])  # not dog, cat, grass, runs


@pytest.mark.parametrize("kind", ["lstm", "attention"])
def test_decoding_never_says_unk_even_when_it_is_the_likeliest_word(kind):
    decoder, vocab = ruled_decoder(kind, unk_bias=50.0)  # <unk> wins every unconstrained step
    feats = annotations(kind, 6)
    bare, _ = ruled_decoder(kind, unk_bias=50.0)
    bare.has_word_rules = False  # the same weights without the rules: the test's control
    assert all(vocab.unk_id in c for c in greedy_search(bare, feats, MAX_LEN)[0])
    for ids in (greedy_search(decoder, feats, MAX_LEN)[0], beam_search(decoder, feats, 3, MAX_LEN)[0]):
        assert all(vocab.unk_id not in c and vocab.start_id not in c for c in ids)
    from scst import sample_captions
    torch.manual_seed(0)
    sampled = sample_captions(decoder, feats, samples=4, max_len=MAX_LEN)  # (24, MAX_LEN)
    assert not (sampled == vocab.unk_id).any() and not (sampled == vocab.start_id).any()


def test_udacity_sample_never_says_unk():
    decoder, vocab = ruled_decoder("lstm", unk_bias=50.0)
    ids = decoder.sample(annotations("lstm", 1), max_len=MAX_LEN)
    assert len(ids) > 1 and vocab.unk_id not in ids[1:]  # ids[0] is the image step's own guess at <start>


class BigramDecoder(torch.nn.Module):
    """A decoder whose next-word scores depend only on the previous word (a table), with RULE_WORDS' rules:
    a caption whose likeliest path ends right after "on" can be built exactly."""

    def __init__(self, vocab, table):
        super().__init__()
        self.vocab_size, self.start_id, self.end_id = len(vocab), vocab.start_id, vocab.end_id
        self.table = torch.full((len(vocab), len(vocab)), -20.0)  # (previous word, next word) -> score
        for (prev, word), score in table.items():
            self.table[vocab(prev), vocab(word)] = score
        model.register_word_rules(self, **model.word_rules(vocab))

    def start(self, features):
        return self.step(torch.full((features.size(0),), self.start_id), None)

    def step(self, tokens, state, image=None):
        return self.table[tokens], tokens  # scores (B, V); the state is the previous word

    @staticmethod
    def reorder_state(state, index):
        return state[index]


@pytest.mark.parametrize("search", ["greedy", "beam 3", "sample"])
def test_no_caption_ends_on_an_article_or_a_preposition(search):
    """The likeliest caption is "dog runs on" then <end>; with the rules <end> may not follow "on", so the
    caption goes on to "dog runs on grass"."""
    vocab = Vocabulary(RULE_WORDS)
    decoder = BigramDecoder(vocab, {("<start>", "dog"): 0.0, ("dog", "runs"): 0.0, ("runs", "on"): 0.0,
                                    ("on", "<end>"): 0.0, ("on", "grass"): -3.0, ("grass", "<end>"): 0.0})
    feats = torch.zeros(3, E)

    def captions():
        if search == "sample":
            torch.manual_seed(0)
            from scst import sample_captions
            return [model._trim(row[None], vocab.end_id)[0] for row in sample_captions(decoder, feats, 20, MAX_LEN)]
        return greedy_search(decoder, feats, MAX_LEN)[0] if search == "greedy" else \
            beam_search(decoder, feats, 3, MAX_LEN)[0]

    decoder.has_word_rules = False
    unruled = {vocab.decode(c) for c in captions()}
    assert "dog runs on" in unruled
    decoder.has_word_rules = True
    assert {vocab.decode(c) for c in captions()} == {"dog runs on grass"}


def test_old_checkpoints_get_the_rules_from_their_vocabulary(tmp_path):
    vocab = Vocabulary(RULE_WORDS)
    args = dict(embed_size=E, hidden_size=H, vocab_size=len(vocab), backbone="mobilenet_v2", pretrained=False,
                start_id=vocab.start_id, end_id=vocab.end_id)  # written before the rules: no banned_ids
    torch.manual_seed(0)
    encoder, decoder = model.build_model(args)
    assert not decoder.has_word_rules
    torch.save({"format": model.CHECKPOINT_FORMAT, "model_args": args, "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(), "vocab": vocab.to_dict()}, tmp_path / "old.pt")
    _, loaded, _, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded.has_word_rules
    assert loaded.banned.nonzero().flatten().tolist() == sorted([vocab.unk_id, vocab.start_id])
    assert "banned" not in loaded.state_dict()  # the rules are not weights: checkpoints stay as they were


def test_word_rules_add_the_words_the_training_captions_rarely_end_on():
    vocab = Vocabulary(RULE_WORDS, rare_endings=["dog", "runs", "zebra"])  # zebra: not in the vocabulary
    assert model.word_rules(vocab)["no_end_after"] == sorted(vocab(w) for w in ("a", "on", "the", "dog", "runs"))


@pytest.mark.parametrize("search", ["greedy", "beam 3", "udacity sample", "self-critical sampling"])
def test_a_caption_cut_at_max_len_still_ends_on_a_word_it_may_end_on(search):
    """After "a" the likeliest word is <end>, which the rules forbid, then "a" again: unchecked, decoding says
    "a a a ... a" until max_len. Its last word must still be one a caption may end on: here "dog"."""
    vocab = Vocabulary(RULE_WORDS)
    decoder = BigramDecoder(vocab, {("<start>", "a"): 0.0, ("a", "<end>"): 0.0, ("a", "a"): -1.0,
                                    ("a", "dog"): -10.0, ("dog", "<end>"): 0.0})
    feats = torch.zeros(2, E)
    if search == "udacity sample":  # the seed's sample: an LSTM decoder whose every step says what the table says
        lstm = DecoderRNN(E, H, len(vocab), **model.word_rules(vocab))
        with torch.no_grad():
            lstm.fc.weight.zero_()
            lstm.fc.bias.copy_(decoder.table[vocab("a")])  # the scores that follow "a", at every step
            lstm.fc.bias[vocab("a")] = 0.5  # ... except that the first step says "a" (its <start> guess)
        ids = lstm.sample(feats[:1], max_len=MAX_LEN)
        captions = [ids[1:-1] if ids[-1] == vocab.end_id else ids[1:]]
    elif search == "self-critical sampling":  # what SCST rewards must be what decoding can write
        import scst

        torch.manual_seed(0)
        tokens = scst.sample_captions(decoder, feats, 8, MAX_LEN)  # (16, MAX_LEN), <end> after <end>
        captions = [[w for w in row.tolist() if w != vocab.end_id] for row in tokens]
        assert any(len(c) == MAX_LEN for c in captions)  # some samples are cut at max_len: the case checked
    elif search == "greedy":
        captions, _ = greedy_search(decoder, feats, MAX_LEN)
    else:
        captions, _ = beam_search(decoder, feats, 3, MAX_LEN)
    no_end = set(model.word_rules(vocab)["no_end_after"])
    assert all(c and c[-1] not in no_end for c in captions), [vocab.decode(c) for c in captions]
    if search == "greedy":  # the best the rules allow: every word as before but the last
        assert [vocab.decode(c) for c in captions] == [" ".join(["a"] * (MAX_LEN - 1) + ["dog"])] * 2


class Payload:
    """Unpickling this runs its __reduce__'s call, os.system: it would create the file it names."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


@pytest.mark.parametrize("content", ["payload", "custom"])
def test_a_refused_checkpoint_names_the_global_and_never_advises_the_unsafe_load(tmp_path, content):
    """torch's own message advises loading with weights_only=False (code execution); ours must not pass that on,
    whatever torch's wording, and must name what the file wanted to load."""
    ran = tmp_path / "the payload ran"
    obj, name = (Payload(ran), f"{os.system.__module__}.system") if content == "payload" else (Custom(), "Custom")
    torch.save({"format": model.CHECKPOINT_FORMAT, "obj": obj}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(tmp_path / "x.pt")
    message = str(e.value)
    assert not ran.exists()
    assert name in message and "pickled code" in message and len(message.splitlines()) == 1
    assert "False" not in message and "trusted source" not in message and "Re-running" not in message


def test_the_refusal_drops_the_unsafe_advice_in_any_wording():
    import pickle

    error = pickle.UnpicklingError("Re-running `torch.load` with `weights_only` set to `False` will likely succeed."
                                   "\nUnsupported opcode 0x93.")
    assert model._load_failure(error) == "UnpicklingError: Unsupported opcode 0x93."
    error = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory")
    assert model._load_failure(error) == f"RuntimeError: {error}"
