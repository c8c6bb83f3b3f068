"""Tests of the shapes recipe's model options: a truncated CNN (backbone_blocks), local features with a max over
positions (local_hidden) and the image beside every word (image_every_step).

Tiny sizes, random weights, CPU only (one torch thread: conftest's session fixture). Also the feature
standardisation's chunked fit.
"""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import model
from conftest import REPO_ROOT
from model import DecoderRNN, EncoderCNN, LocalFeatures, Standardize, beam_search, greedy_search

START, END = 0, 1
V, E, H = 12, 16, 24
MAX_LEN = 8


# ---------------------------------------------------------------------------------------------------
# The encoder: truncated CNN and local features
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone, blocks, channels, stride", [
    ("mobilenet_v2", 14, 96, 16), ("mobilenet_v2", 7, 32, 8), ("resnet18", 7, 256, 16), ("resnet18", 0, 512, 32)])
def test_backbone_blocks_give_the_earlier_map(backbone, blocks, channels, stride):
    torch.manual_seed(0)
    encoder = EncoderCNN(E, backbone=backbone, pretrained=False, backbone_blocks=blocks, local_hidden=8).eval()
    assert encoder.feature_size == channels
    assert encoder.feature_shape(64) == (channels, 64 // stride, 64 // stride)
    with torch.no_grad():
        maps = encoder.features(torch.randn(2, 3, 64, 64))
    assert maps.shape == (2, channels, 64 // stride, 64 // stride)


def test_pooled_feature_shape_is_the_seed_vector():
    encoder = EncoderCNN(E, backbone="mobilenet_v2", pretrained=False, grid=2)
    assert encoder.feature_shape(64) == (1280 * 4,)


@pytest.mark.parametrize("kwargs, message", [
    (dict(backbone_blocks=40), "trunk has 19 blocks"),
    (dict(backbone_blocks=-1), "must not be negative"),
    (dict(local_hidden=-8), "must not be negative"),
    (dict(grid=0), "grid >= 1"),
    (dict(local_hidden=8, grid=2), "leave grid=1 and head_hidden=0"),
    (dict(local_hidden=8, head_hidden=8), "leave grid=1 and head_hidden=0"),
])
def test_bad_encoder_options_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EncoderCNN(E, backbone="mobilenet_v2", pretrained=False, **kwargs)


def test_local_features_ignore_where_things_are():
    """The same weights at every position and a max over positions: moving an object around, or shuffling the
    positions, leaves the output unchanged; changing what is at one position changes it."""
    torch.manual_seed(0)
    head = LocalFeatures(channels=6, hidden=10, out_size=4)
    maps = torch.randn(3, 6, 5, 5)
    perm = torch.randperm(25)
    shuffled = maps.flatten(2)[:, :, perm].view(3, 6, 5, 5)
    assert torch.allclose(head(maps), head(shuffled), atol=1e-6)
    changed = maps.clone()
    changed[:, :, 2, 2] += 5.0
    assert not torch.allclose(head(maps), head(changed))


def test_local_features_keep_what_pooling_mixes():
    """Two scenes with the same channels on average, 'A here and B there' against 'A+B here and nothing there':
    a global average pool cannot tell them apart, the local head can (its output differs)."""
    torch.manual_seed(0)
    a, b = torch.zeros(4), torch.zeros(4)
    a[0], b[1] = 1.0, 1.0
    apart = torch.zeros(1, 4, 1, 2)
    apart[0, :, 0, 0], apart[0, :, 0, 1] = a, b
    together = torch.zeros(1, 4, 1, 2)
    together[0, :, 0, 0] = a + b
    assert torch.equal(apart.mean((2, 3)), together.mean((2, 3)))
    head = LocalFeatures(channels=4, hidden=16, out_size=4)
    assert (head(apart) - head(together)).abs().max() > 1e-3


def test_map_standardisation_is_per_channel():
    torch.manual_seed(0)
    scale, shift = torch.tensor([0.1, 5.0, 40.0]), torch.tensor([1.0, -2.0, 9.0])
    maps = torch.rand(20, 3, 4, 4) * scale[:, None, None] + shift[:, None, None]  # channels far apart in scale
    norm = Standardize(3)
    norm.fit(maps)
    z = norm(maps)
    assert norm.mean.shape == (3,)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.transpose(0, 1).flatten(1).std(1), torch.ones(3), atol=1e-5)


def test_local_encoder_embeds_cached_maps_like_images():
    """What training does from the cache (embed of stored maps) equals the encoder run on the images."""
    torch.manual_seed(0)
    encoder = EncoderCNN(E, backbone="mobilenet_v2", pretrained=False, backbone_blocks=14, local_hidden=8,
                         feature_norm=True, embed_norm=True).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        maps = encoder.features(images)  # (3, 96, 4, 4)
        encoder.fit_feature_stats(maps)
        assert torch.allclose(encoder.embed(maps.half().float()), encoder(images), atol=1e-2)
        assert encoder(images).shape == (3, E)


# ---------------------------------------------------------------------------------------------------
# The decoder: the image beside every word
# ---------------------------------------------------------------------------------------------------
def par_decoder(seed=0, end_bias=0.0):
    torch.manual_seed(seed)
    decoder = DecoderRNN(E, H, V, image_every_step=True).eval()
    with torch.no_grad():
        decoder.fc.bias[END] += end_bias
    return decoder


def test_image_every_step_widens_the_lstm_input():
    assert par_decoder().lstm.input_size == 2 * E
    assert DecoderRNN(E, H, V).lstm.input_size == E


def test_image_every_step_reaches_every_position():
    """Changing the image changes the scores at every position, and beyond what step 0 alone can explain: the
    same LSTM state after step 0 but a different image later gives different later scores."""
    decoder = par_decoder()
    captions = torch.tensor([[START, 3, 4, 5, END]])
    f1, f2 = torch.randn(1, E), torch.randn(1, E)
    with torch.no_grad():
        _, state = decoder.lstm(torch.cat([f1, f1], 1).unsqueeze(1))
        a, _ = decoder.step(torch.tensor([3]), state, image=f1)
        b, _ = decoder.step(torch.tensor([3]), state, image=f2)
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(ValueError, match="pass image="):
        decoder.step(torch.tensor([3]), state)
    with torch.no_grad():
        assert decoder(f1, captions).shape == (1, 5, V)


def test_greedy_matches_forward_and_sample_with_the_image_every_step():
    decoder, feats = par_decoder(seed=3, end_bias=0.3), torch.randn(6, E) * 2
    captions, scores = greedy_search(decoder, feats, MAX_LEN)
    for f, caption, score in zip(feats, captions, scores):
        seq = [START] + caption + ([END] if len(caption) < MAX_LEN else [])
        with torch.no_grad():
            logp = F.log_softmax(decoder(f[None], torch.tensor([seq])), dim=-1)[0]
        assert abs(sum(logp[t, seq[t]].item() for t in range(1, len(seq))) - score.item()) < 1e-4
        # The Udacity sample() feeds back its own words, the image beside each: each is forward()'s argmax there.
        sampled = decoder.sample(f.view(1, 1, -1), max_len=MAX_LEN)
        with torch.no_grad():
            best = decoder(f[None], torch.tensor([sampled + [END]]))[0].argmax(-1)  # (T,)
        assert best[:len(sampled)].tolist() == sampled


def test_beam_1_equals_greedy_and_beam_3_is_no_worse_with_the_image_every_step():
    decoder, feats = par_decoder(seed=4, end_bias=0.3), torch.randn(10, E) * 2
    g_caps, g_scores = greedy_search(decoder, feats, MAX_LEN)
    b_caps, b_scores = beam_search(decoder, feats, beam_size=1, max_len=MAX_LEN)
    assert b_caps == g_caps and torch.allclose(b_scores, g_scores, atol=1e-5)
    _, b3_scores = beam_search(decoder, feats, beam_size=3, max_len=MAX_LEN)
    assert (b3_scores >= g_scores - 1e-5).float().mean() >= 0.8
    assert b3_scores.mean() >= g_scores.mean()


def test_build_model_round_trip_with_the_levers_and_without_them():
    """model_args with the new keys rebuild the same shapes; old checkpoints' args (without them) give the seed."""
    args = dict(embed_size=E, hidden_size=H, vocab_size=V, backbone="mobilenet_v2", pretrained=False,
                backbone_blocks=14, local_hidden=8, image_every_step=True, feature_norm=True)
    torch.manual_seed(0)
    enc, dec = model.build_model(args)
    enc2, dec2 = model.build_model(args)
    enc2.load_state_dict(enc.state_dict())
    dec2.load_state_dict(dec.state_dict())
    assert dec2.image_every_step and enc2.local and enc2.feature_size == 96
    old_enc, old_dec = model.build_model({k: v for k, v in args.items()
                                          if k not in ("backbone_blocks", "local_hidden", "image_every_step")})
    assert not old_dec.image_every_step and not old_enc.local and old_enc.feature_size == 1280
    with pytest.raises(RuntimeError):
        old_dec.load_state_dict(dec.state_dict())  # the LSTM input is twice as wide


# ---------------------------------------------------------------------------------------------------
# The standardisation is fitted chunk by chunk (issue 13, item 7)
# ---------------------------------------------------------------------------------------------------
def one_shot_stats(features, rows):
    """The fit as it was, in float64: every chosen image at once, transposed to (values, D)."""
    x = features[rows].double()
    x = x.transpose(0, 1).flatten(1).T if x.dim() == 4 else x  # (N * h * w, D) or (N, D)
    return x.mean(0), x.std(0)


@pytest.mark.parametrize("shape", [(203, 24), (97, 6, 3, 5)])
def test_chunked_fit_gives_the_one_shot_statistics(shape, monkeypatch):
    torch.manual_seed(0)
    channels = shape[1]
    scale = torch.logspace(-2, 2, channels).view(1, channels, *[1] * (len(shape) - 2))
    features = (torch.rand(shape) * scale + 3 * scale).half()  # channels far apart in scale, far from zero
    rows = torch.randperm(shape[0])[:150 if len(shape) == 2 else 70]  # the usable images, in any order
    mean, std = one_shot_stats(features, rows)
    monkeypatch.setattr(Standardize, "CHUNK_VALUES", 7 * features[0].numel())  # 7 images a chunk, a short last one
    norm = Standardize(channels)
    norm.fit(features, rows)
    assert torch.allclose(norm.mean.double(), mean, rtol=1e-5, atol=0)
    assert torch.allclose(norm.std.double(), std, rtol=1e-5, atol=0)
    everything = Standardize(channels)
    everything.fit(features)  # rows=None: all images, read as slices
    all_mean, all_std = one_shot_stats(features, torch.arange(shape[0]))
    assert torch.allclose(everything.mean.double(), all_mean, rtol=1e-5)
    assert torch.allclose(everything.std.double(), all_std, rtol=1e-5)
    with pytest.raises(ValueError, match="no training features"):
        Standardize(channels).fit(features, rows[:0])


def test_chunked_fit_needs_far_less_memory_than_the_cache():
    """Peak resident memory of the fit, over that of a 64 MB fp16 cache of maps, in a fresh process
    (bench/fit_memory.py). Before: 4 times the cache (a float32 copy, then a transposed one); now one chunk."""
    out = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "fit_memory.py"), "--child", "--images", "5000",
                          "--channels", "100", "--side", "8"], capture_output=True, text=True, timeout=300, check=True)
    r = json.loads(out.stdout.splitlines()[-1])
    print(r)
    assert r["cache_mb"] == pytest.approx(61, abs=1)
    assert r["fit_peak_extra_mb"] < 0.9 * r["cache_mb"]  # measured: 50 MB (the old fit: 244 MB)
