"""Self-critical sequence training (Rennie et al., 2017): optimise CIDEr-D directly.

Cross-entropy teaches the decoder the next human word; captions are judged whole, and at test time the decoder
reads its own words. A self-critical step closes both gaps, per image rather than per caption:

    features (B, ...) ──sample_captions──> k captions per image (B*k, T), padded with <end> after <end>
                      ──CiderD.rewards───> their CIDEr-D against all of that image's references (B*k,)
                      ──baseline─────────> the mean reward of the image's OTHER samples (Luo 2020), or greedy's
    loss = -(reward - baseline) * (mean log-probability of the caption's tokens, <end> included)
           [+ scst_xe_weight * cross-entropy of the images' human captions: the mixed objective]

With scst_end_token the reward counts <end> as a word of its own (in every reference, and after each sampled
caption that ended), so a caption that stops where no reference stops ("on a dirt <end>") loses reward.

The reward is computed here, in the training process, from token ids and vectorised over the batch, with the
document frequencies of the training references computed once. It equals metrics' pure-Python CIDEr-D on the
same captions and the same document frequencies (tests/test_scst.py), so the model is rewarded for exactly
what validation measures.

Only the decoder contract is used (`decoder.start`, `decoder.step`, teacher-forced `decoder(features,
captions)`), so the seed's LSTM and the attention decoder train the same way.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from metrics import CIDER_SCALE, CIDER_SIGMA, MAX_N, ptb_tokenize
from model import allowed_scores, autocast as device_autocast, greedy_search, last_word_scores

BASELINES = ("mean", "greedy")
PAD = 0  # reward-token id of "no token": padding, and what <start> (and <end> without end_token) map to
END_TOKEN = 1  # reward-token id of <end> when CiderD(end_token=True)
END_TOKEN_KEY = " <end>"  # its key among the PTB tokens: no token holds a space, so no word of a caption gets it
# n-grams are packed into one int64 as digits in base (tokens + 1); 4 digits must stay below 2**63
MAX_REWARD_TOKENS = int(2 ** (63 / MAX_N)) - 2


# ---------------------------------------------------------------------------------------------------------
# The reward: CIDEr-D from token ids, vectorised
# ---------------------------------------------------------------------------------------------------------
class CiderD:
    """CIDEr-D of sampled captions (vocabulary ids) against the references of their images, batched.

    Built once from the training references: `CiderD(references, vocab)`, references[i] the raw caption
    strings of training image i (the index the feature cache uses). Everything is tokenized as the metric
    tokenizes it (metrics.ptb_tokenize: lower case, punctuation dropped), so a caption's reward is the CIDEr-D
    that metrics would give it with the training set's document frequencies:
    - the reference side (token ids, per-n tf-idf norms, lengths, document frequencies) is computed here, once;
    - a vocabulary word maps to the PTB tokens of the word on its own (one token for every word of the shapes,
      Flickr8k and COCO vocabularies except contractions such as "don't", two tokens); <start> and <end> map
      to none. The metric tokenizes whole captions, which differs only where PTB rules look across words.
    Pass it between torchrun processes with `to_dict()` / `CiderD.from_dict()` (plain tensors).
    """

    def __init__(self, references: Sequence[Sequence[str]] = (), vocab=None, end_token=False, *, _state=None):
        if _state is not None:
            self.__dict__.update(_state)
            return
        if vocab is None or not references:
            raise ValueError("CiderD needs the training references (a list per image) and the vocabulary")
        # end_token: <end> is a reward token of its own (id 1, which no PTB token gets), appended to every
        # reference and kept after a sampled caption's last word, so "on a dirt <end>" matches no reference
        self.end_token = end_token
        token_ids: dict[str, int] = {END_TOKEN_KEY: END_TOKEN} if end_token else {}
        as_ids = lambda text: [token_ids.setdefault(t, len(token_ids) + 1) for t in ptb_tokenize(text).split()]
        ended = [END_TOKEN] if end_token else []
        words = [ended if i == vocab.end_id else [] if i == vocab.start_id else as_ids(w)
                 for i, w in enumerate(vocab.idx2word)]
        refs = [[as_ids(r) + ended for r in image_refs] for image_refs in references]
        if len(token_ids) > MAX_REWARD_TOKENS:
            raise ValueError(f"the references hold {len(token_ids):,} distinct tokens; CiderD packs 4-grams into "
                             f"int64 and supports at most {MAX_REWARD_TOKENS:,}")
        self.base = len(token_ids) + 1
        self.word_tokens = _padded([words])[0].long()  # (V, K) PTB token ids of each vocabulary word, PAD after
        self.refs = _padded(refs)  # (N, M, L) int32 reference token ids, PAD after
        self.ref_count = torch.tensor([len(r) for r in refs], dtype=torch.long)  # (N,)
        self.ref_length = (self.refs != PAD).sum(2)  # (N, M)
        self.log_images = math.log(len(refs))
        self.df_keys, self.df_counts = self._document_frequencies()
        self.ref_norms = self._reference_norms()  # (N, M, MAX_N)

    # ---- building ----------------------------------------------------------------------------------------
    def _document_frequencies(self, chunk=4096):
        """Sorted n-gram keys of all references (every n) and in how many images' reference sets each occurs."""
        keys = []
        for start in range(0, len(self.refs), chunk):
            refs = self.refs[start:start + chunk]  # (n, M, L)
            per_image = torch.cat([ngram_keys(refs, n, self.base).flatten(1) for n in range(1, MAX_N + 1)], 1)
            per_image = per_image.sort(1).values  # (n, M * all positions), invalid (-1) first
            first = torch.ones_like(per_image, dtype=torch.bool)
            first[:, 1:] = per_image[:, 1:] != per_image[:, :-1]  # one count per image for a repeated n-gram
            keys.append(per_image[first & (per_image > 0)])
        return torch.cat(keys).unique(return_counts=True)

    def _reference_norms(self, chunk=4096):
        """Per image, reference and n: the Euclidean norm of the reference's tf-idf vector."""
        norms = []
        for start in range(0, len(self.refs), chunk):
            refs = self.refs[start:start + chunk]  # (n, M, L)
            norms.append(torch.stack([self._tfidf(ngram_keys(refs, n, self.base))[2]
                                      for n in range(1, MAX_N + 1)], -1))  # (n, M, MAX_N)
        return torch.cat(norms)

    def idf(self, keys):
        """log(images) - log(max(1, document frequency)) of n-gram keys (any shape), float64."""
        if not len(self.df_keys):  # references without a single word
            return torch.full(keys.shape, self.log_images, dtype=torch.float64, device=keys.device)
        pos = torch.searchsorted(self.df_keys, keys).clamp_max(len(self.df_keys) - 1)
        df = torch.where(self.df_keys[pos] == keys, self.df_counts[pos], 0)
        return self.log_images - torch.log(df.clamp_min(1).double())

    def _tfidf(self, keys):
        """keys (..., P), -1 where no n-gram -> (term frequency at each position, whether it is the n-gram's
        first occurrence, the norm of the tf-idf vector): the vector holds each distinct n-gram once."""
        valid = keys >= 0
        same = (keys[..., :, None] == keys[..., None, :]) & valid[..., None, :]  # (..., P, P)
        tf = same.sum(-1)  # (..., P)
        first = valid & ~same.tril(-1).any(-1)
        weight = tf * self.idf(keys)
        return tf, first, torch.sqrt(torch.where(first, weight * weight, 0.0).sum(-1))

    # ---- scoring -----------------------------------------------------------------------------------------
    def to_reward_tokens(self, tokens, end_id):
        """Vocabulary ids (C, T), padded with <end> after <end> -> PTB token ids (C, T * K), PAD after. With
        end_token, a caption's first <end> gives the end token; a caption cut at T words has none."""
        own = end_mask(tokens, end_id, inclusive=self.end_token)  # (C, T) the caption's words (and its <end>)
        ids = torch.where(own[..., None], self.word_tokens[tokens], PAD).flatten(1)  # (C, T * K)
        order = (ids == PAD).to(torch.int8).argsort(dim=1, stable=True)  # tokens to the front, in order
        return ids.gather(1, order)

    def rewards(self, tokens, images, end_id):
        """CIDEr-D (C,) float64 of sampled captions tokens (C, T) (vocabulary ids, <end>-padded) against the
        references of training images `images` (C,) (row indices of the references this was built from)."""
        device = tokens.device
        if self.refs.device != device:
            self.to(device)
        images = images.to(device)
        cand = self.to_reward_tokens(tokens, end_id)  # (C, T * K)
        cand_len = (cand != PAD).sum(1)  # (C,)
        ref_len = self.ref_length[images]  # (C, M)
        # one host sync for both lengths: the n-gram comparisons below cost (C, M, P, Q)
        longest = torch.stack([cand_len.max(), ref_len.max()]).clamp_min(1).tolist()
        cand = cand[:, : longest[0]]  # (C, P)
        refs = self.refs[images][..., : longest[1]]  # (C, M, Q)
        ref_norms = self.ref_norms[images]  # (C, M, MAX_N)
        similarity = torch.zeros(refs.shape[:2], dtype=torch.float64, device=device)  # (C, M)
        for n in range(1, MAX_N + 1):
            similarity += self._similarity(ngram_keys(cand, n, self.base), ngram_keys(refs, n, self.base),
                                           ref_norms[..., n - 1])
        # pycocoevalcap's "length" is the number of bigrams, max(words - 1, 0), kept as it is
        gap = (cand_len[:, None] - 1).clamp_min(0) - (ref_len - 1).clamp_min(0)  # (C, M)
        penalty = torch.exp(-gap.double() ** 2 / (2 * CIDER_SIGMA ** 2))
        count = self.ref_count[images]  # (C,)
        has_ref = torch.arange(refs.size(1), device=device) < count[:, None]  # (C, M)
        total = torch.where(has_ref, similarity * penalty, 0.0).sum(1)  # (C,)
        return CIDER_SCALE * total / (MAX_N * count.clamp_min(1))

    def _similarity(self, cand_keys, ref_keys, ref_norms):
        """One n: clipped tf-idf dot product over the norms, cand_keys (C, P), ref_keys (C, M, Q) -> (C, M)."""
        tf, first, cand_norm = self._tfidf(cand_keys)  # (C, P), (C, P), (C,)
        idf = self.idf(cand_keys)  # (C, P)
        ref_tf = (cand_keys[:, None, :, None] == ref_keys[:, :, None, :]).sum(-1)  # (C, M, P)
        ref_weight = ref_tf * idf[:, None]  # (C, M, P)
        # clipped: a repeated n-gram earns no more than the reference holds of it
        dot = torch.where(first[:, None], torch.minimum(tf[:, None] * idf[:, None], ref_weight) * ref_weight,
                          0.0).sum(-1)  # (C, M)
        norms = cand_norm[:, None] * ref_norms  # (C, M)
        return torch.where(norms > 0, dot / torch.where(norms > 0, norms, 1.0), dot)

    # ---- devices and sharing -----------------------------------------------------------------------------
    def to(self, device):
        """Move the tables to a device (in place); rewards() does it for the tokens' device on first use."""
        for name, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))
        return self

    def to_dict(self):
        """Plain data (CPU tensors and numbers): torch.save it, or send it to the other torchrun processes."""
        return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, state):
        return cls(_state={"end_token": False, **state})


def _padded(rows):
    """Nested lists rows[i][j] = [ids] -> (N, M, L) long tensor, PAD where a list is shorter."""
    M = max((len(r) for r in rows), default=0)
    L = max((len(c) for r in rows for c in r), default=0)
    out = torch.full((len(rows), M, max(L, 1)), PAD, dtype=torch.int32)
    for i, r in enumerate(rows):
        for j, c in enumerate(r):
            out[i, j, : len(c)] = torch.tensor(c, dtype=torch.int32)
    return out


def ngram_keys(tokens, n, base):
    """Token ids (..., L), PAD after the caption -> the caption's n-grams packed into int64 (..., L - n + 1),
    -1 where no n-gram starts. Digits are 1..base-1, so n-grams of different n never share a key."""
    L = tokens.size(-1)
    if L < n:
        return torch.full((*tokens.shape[:-1], 1), -1, dtype=torch.long, device=tokens.device)
    keys = torch.zeros((*tokens.shape[:-1], L - n + 1), dtype=torch.long, device=tokens.device)
    valid = torch.ones_like(keys, dtype=torch.bool)
    for i in range(n):
        digit = tokens[..., i: L - n + 1 + i].long()
        keys = keys * base + digit
        valid &= digit != PAD
    return torch.where(valid, keys, -1)


def end_mask(tokens, end_id, inclusive=True):
    """(C, T) True up to the first <end> (and at it when inclusive): the caption's own tokens."""
    ended_before = (tokens == end_id).long().cumsum(1) - (tokens == end_id).long()  # <end>s strictly before t
    mask = ended_before == 0
    return mask if inclusive else mask & (tokens != end_id)


# ---------------------------------------------------------------------------------------------------------
# Sampling and the loss
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_captions(decoder, features, samples, max_len):
    """`samples` captions per image drawn from the decoder's softmax, through decoder.start / decoder.step.

    features: what encoder.embed returns, batch-first (B, ...); each image's row is repeated `samples` times,
    so captions i*samples .. (i+1)*samples - 1 belong to image i. Returns tokens (B*samples, max_len): words,
    then <end>, then <end> as padding (a caption that never says <end> fills all max_len).
    """
    features = features.repeat_interleave(samples, 0)  # (C, ...)
    end = decoder.end_id
    tokens = torch.full((features.size(0), max_len), end, dtype=torch.long, device=features.device)
    done = torch.zeros(features.size(0), dtype=torch.bool, device=features.device)
    logits, state = decoder.start(features)
    previous = torch.full((features.size(0),), decoder.start_id, dtype=torch.long, device=features.device)
    for t in range(max_len):
        logits = allowed_scores(decoder, logits.float(), previous if t == 0 else tokens[:, t - 1])
        if t + 1 == max_len:  # the caption stops here: it ends on a word it may end on, as decoding does
            logits = last_word_scores(decoder, logits)
        word = torch.multinomial(F.softmax(logits, -1), 1).squeeze(1)  # (C,)
        tokens[:, t] = torch.where(done, end, word)
        done |= word == end
        if bool(done.all()) or t + 1 == max_len:
            break
        logits, state = decoder.step(tokens[:, t], state, image=features)
    return tokens


def caption_log_probs(decoder, features, tokens, start_id, end_id):
    """Log-probability of each token of sampled captions, teacher-forced, with grad.

    features (C, ...) one row per caption, tokens (C, T) as sample_captions gives them. Returns (logp (C, T),
    mask (C, T)): mask is True for the caption's words and its <end>, False for the padding after it.
    One teacher-forced pass instead of keeping the sampling steps' graph: the same call for every decoder
    (the training loss's own), one fused LSTM call instead of T small ones, and sampling runs without grad.
    With dropout off (scst_epoch runs the decoder in eval mode) these are exactly the log-probabilities the
    captions were sampled with (tests/test_scst.py checks them against decoding's own).
    """
    start = torch.full((tokens.size(0), 1), start_id, dtype=torch.long, device=tokens.device)
    inputs = torch.cat([start, tokens], 1)  # (C, 1 + T)
    scores = decoder(features, inputs)  # (C, 1 + T, V); scores[:, t] predicts token t
    scores = allowed_scores(decoder, scores[:, 1:].float(), inputs[:, :-1])  # (C, T, V), as sampling saw them
    logp = F.log_softmax(scores, -1).gather(2, tokens.unsqueeze(2)).squeeze(2)  # (C, T)
    return logp, end_mask(tokens, end_id)


def scst_loss(logp, mask, advantage):
    """-(reward - baseline) * the caption's mean token log-probability (<end> included), averaged over
    captions. Padding after <end> is masked out, so it gets no gradient."""
    mean_logp = torch.where(mask, logp, 0.0).sum(1) / mask.sum(1).clamp_min(1)  # (C,)
    return -(advantage.detach().to(mean_logp) * mean_logp).mean()


def human_caption_loss(decoder, features, captions, lengths):
    """The mixed objective's term (Paulus et al. 2017): teacher-forced cross-entropy of the images' human
    captions, the mean over their targets (the words and <end>; not <start>, not the <end> padding after).

    features (H, ...) one row per caption; captions (H, L) `<start> w1 .. wn <end>` padded with <end>; lengths
    (H,) each caption's length with <start> and <end>. It keeps the sampled captions' language close to the
    references' while the reward moves it."""
    scores = decoder(features, captions)[:, 1:].float()  # (H, L-1, V); scores[:, t] predicts captions[:, t + 1]
    targets = captions[:, 1:]  # (H, L-1)
    real = torch.arange(1, captions.size(1), device=captions.device) < lengths[:, None]  # (H, L-1)
    nll = F.cross_entropy(scores.transpose(1, 2), targets, reduction="none")  # (H, L-1)
    return torch.where(real, nll, 0.0).sum() / real.sum().clamp_min(1)


class HumanCaptions:
    """The training captions of each image, for the mixed objective: `batch(images)` gives those of a batch.

    tokens (N, T) `<start> .. <end>` padded with <end> and lengths (N,) of all captions (on the device that
    trains), caption_image (N,) each caption's image row, usable: the caption indices training uses."""

    def __init__(self, tokens, lengths, caption_image, usable):
        self.tokens, self.lengths = tokens, lengths
        usable = np.asarray(usable)
        owners = np.asarray(caption_image)[usable]
        order = np.argsort(owners, kind="stable")
        rows, starts = np.unique(owners[order], return_index=True)
        self.by_image = dict(zip(rows.tolist(), np.split(usable[order], starts[1:])))

    def batch(self, images):
        """images: B image rows -> (captions (H, L) cut after the longest, lengths (H,), owner (H,) the
        position in `images` of each caption's image)."""
        groups = [self.by_image.get(int(i), np.zeros(0, dtype=np.int64)) for i in images]
        rows = torch.as_tensor(np.concatenate(groups), device=self.tokens.device)  # (H,)
        owner = torch.as_tensor(np.repeat(np.arange(len(groups)), [len(g) for g in groups]),
                                device=self.tokens.device)  # (H,)
        lengths = self.lengths[rows]  # (H,)
        longest = int(lengths.max()) if len(rows) else 2
        return self.tokens[rows, :longest], lengths, owner


def mean_of_others(rewards, samples):
    """Luo (2020)'s baseline: for each sample, the mean reward of the other samples of the same image."""
    r = rewards.view(-1, samples)  # (B, k)
    return ((r.sum(1, keepdim=True) - r) / (samples - 1)).view(-1)  # (B*k,)


# ---------------------------------------------------------------------------------------------------------
# One step and one epoch
# ---------------------------------------------------------------------------------------------------------
def scst_step(encoder, decoder, optimizer, inputs, images, cider, samples=5, baseline="mean", max_len=30,
              grad_clip=0.0, world_size=1, autocast=nullcontext, xe_weight=0.0, human=None):
    """One self-critical step on a batch of images. inputs: their cached CNN features (B, ...); images (B,):
    their rows in `cider`'s references. xe_weight > 0 adds xe_weight x human_caption_loss of `human`
    (HumanCaptions.batch's (captions, lengths, owner) of these images) to the loss: the mixed objective.
    Returns a dict of floats: loss (the whole), xe (the human captions' cross-entropy, 0 without), reward,
    baseline, and the seconds of the whole step (step_s), of sampling (sample_s) and of the reward (reward_s);
    the rest is the teacher-forced passes, their backward and the update."""
    if xe_weight and human is None:
        raise ValueError("a mixed objective (scst_xe_weight > 0) needs the images' human captions")
    if baseline not in BASELINES:
        raise ValueError(f"scst_baseline must be one of {BASELINES}, got {baseline!r}")
    if baseline == "mean" and samples < 2:
        raise ValueError("the 'mean' baseline needs scst_samples >= 2 (the other samples of the same image)")
    t0 = time.perf_counter()
    end, start = decoder.end_id, decoder.start_id
    with autocast():
        features = encoder.embed(inputs)  # (B, ...)
    with autocast():
        tokens = sample_captions(decoder, features.detach(), samples, max_len)  # (B*k, max_len)
    # Columns after the longest caption's <end> are padding in every row: the teacher-forced pass skips them.
    tokens = tokens[:, : int(end_mask(tokens, end).sum(1).max())]  # (B*k, T)
    t_reward = time.perf_counter()
    sample_s = t_reward - t0
    rewards = cider.rewards(tokens, images.repeat_interleave(samples), end)  # (B*k,) float64
    reward_s = time.perf_counter() - t_reward
    if baseline == "mean":
        base = mean_of_others(rewards, samples)
    else:
        greedy_tokens = greedy_captions(decoder, features.detach(), max_len, autocast)  # (B, max_len)
        t_reward = time.perf_counter()
        base = cider.rewards(greedy_tokens, images, end).repeat_interleave(samples)
        reward_s += time.perf_counter() - t_reward
    with autocast():
        logp, mask = caption_log_probs(decoder, features.repeat_interleave(samples, 0), tokens, start, end)
    loss = scst_loss(logp, mask, rewards - base)
    xe = torch.zeros(())
    if xe_weight:
        captions, lengths, owner = human
        with autocast():
            xe = human_caption_loss(decoder, features[owner], captions, lengths)
        loss = loss + xe_weight * xe
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if world_size > 1:
        average_gradients(params, world_size)
    if grad_clip:
        nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return {"loss": loss.item(), "xe": xe.item(), "reward": rewards.mean().item(), "baseline": base.mean().item(),
            "reward_s": reward_s, "sample_s": sample_s, "step_s": time.perf_counter() - t0}


def greedy_captions(decoder, features, max_len, autocast=nullcontext):
    """The greedy baseline's captions (B, max_len), <end>-padded, decoded as at test time (eval mode)."""
    was_training = decoder.training
    decoder.eval()
    with autocast():
        greedy, _ = greedy_search(decoder, features, max_len)
    decoder.train(was_training)
    tokens = torch.full((len(greedy), max_len), decoder.end_id, dtype=torch.long, device=features.device)
    for i, ids in enumerate(greedy):
        tokens[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return tokens


def average_gradients(params, world_size):
    """All-reduce the gradients (one flat buffer) and divide by the number of processes, as DDP does: each
    process sampled its own images, and every one takes the same step."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset: offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def epoch_images(images, images_per_step, epoch, seed, rank=0, world_size=1):
    """This process's batches of training images for one epoch: a shuffle seeded by (seed, epoch), dealt
    round-robin to the processes and cut to the same number of full-or-partial batches on every one, so that
    their gradient all-reduces pair up."""
    order = np.random.default_rng([seed, epoch]).permutation(np.asarray(images))
    per_rank = len(order) // world_size
    if per_rank == 0:
        raise ValueError(f"{len(order)} training images cannot be shared among {world_size} processes")
    mine = order[rank::world_size][:per_rank]
    return [mine[i:i + images_per_step] for i in range(0, per_rank, images_per_step)]


def scst_epoch(encoder, decoder, optimizer, features, images, cider, cfg, epoch, device, rank=0, world_size=1,
               autocast=nullcontext, progress=None, human=None):
    """One self-critical pass over the training images (this process's share). features: the whole feature
    cache (N, ...) on `device`; images: usable image rows; human: their HumanCaptions, used when
    cfg.scst_xe_weight > 0. Returns the epoch's means and speeds (dict)."""
    xe_weight = getattr(cfg, "scst_xe_weight", 0.0)
    # Dropout off (eval mode) while sampling and while recomputing the log-probabilities: the captions are then
    # drawn from exactly the distribution whose gradient is taken, the one decoding uses at test time. (In train
    # mode the teacher-forced pass would draw other dropout masks than the sampling pass did.)
    encoder.eval()
    decoder.eval()
    samples = cfg.scst_samples
    per_step = max(1, cfg.batch_size // samples)  # as many captions per step as a cross-entropy step
    batches = epoch_images(images, per_step, epoch, cfg.seed, rank, world_size)
    totals = {"loss": 0.0, "xe": 0.0, "reward": 0.0, "baseline": 0.0, "reward_s": 0.0, "step_s": 0.0}
    n_images = steps = 0
    for batch in (progress(batches) if progress else batches):
        index = torch.as_tensor(batch, device=device)
        stats = scst_step(encoder, decoder, optimizer, features[index].float(), torch.as_tensor(batch), cider,
                          samples, cfg.scst_baseline, cfg.scst_max_len or cfg.max_len, cfg.grad_clip,
                          world_size, autocast, xe_weight, human.batch(batch) if xe_weight else None)
        for key in ("loss", "xe", "reward", "baseline"):
            totals[key] += stats[key] * len(batch)
        totals["reward_s"] += stats["reward_s"]
        totals["step_s"] += stats["step_s"]
        n_images += len(batch)
        steps += 1
    out = {"steps": steps, **{key: totals[key] / max(n_images, 1) for key in ("loss", "xe", "reward", "baseline")}}
    out["images_per_s"] = n_images / max(totals["step_s"], 1e-9)
    out["reward_share"] = totals["reward_s"] / max(totals["step_s"], 1e-9)
    return out


# ---------------------------------------------------------------------------------------------------------
# The self-critical phase of a training run (train.py calls these)
# ---------------------------------------------------------------------------------------------------------
def training_references(dataset, usable):
    """references[i]: the raw usable captions of the dataset's image i (its feature-cache row), [] for images
    with none. usable: the caption indices training uses."""
    refs = [[] for _ in dataset.image_ids]
    for c in np.asarray(usable):
        refs[int(dataset.caption_image[c])].append(dataset.coco.anns[dataset.ann_ids[c]]["caption"])
    return refs


def shared_reward(dataset, usable, vocab, rank=0, world_size=1, end_token=False):
    """The CiderD reward of the training references: rank 0 builds it (document frequencies included) and
    sends it to the other processes, so that every one rewards captions with the same numbers."""
    state = [CiderD(training_references(dataset, usable), vocab, end_token).to_dict() if rank == 0 else None]
    if world_size > 1:
        dist.broadcast_object_list(state, src=0)
    return CiderD.from_dict(state[0])


def train_scst_epoch(model, optimizer, split, reward, cfg, epoch, device, rank=0, world_size=1, progress=None):
    """One self-critical epoch of a training run from the feature cache. model: the Captioner (not the DDP
    wrapper: gradients are averaged here). Returns (mean loss, captions per second, metrics for the log)."""
    if split.features is None:
        raise ValueError("self-critical epochs train from the feature cache: they need a frozen backbone "
                         "(train_backbone=False)")
    if cfg.scst_samples < 1:
        raise ValueError(f"scst_samples must be at least 1, got {cfg.scst_samples}")
    images = np.unique(split.dataset.caption_image[split.usable])
    xe_weight = getattr(cfg, "scst_xe_weight", 0.0)
    human = HumanCaptions(split.tokens, split.lengths, split.dataset.caption_image, split.usable) if xe_weight else None
    stats = scst_epoch(model.encoder, model.decoder, optimizer, split.features, images, reward, cfg, epoch,
                       device, rank, world_size, lambda: device_autocast(device), progress, human)
    if world_size > 1:  # every process's own images: the log shows the mean over all of them
        values = torch.tensor([stats["reward"], stats["baseline"], stats["loss"], stats["xe"]],
                              dtype=torch.float64, device=device)
        dist.all_reduce(values)
        stats["reward"], stats["baseline"], stats["loss"], stats["xe"] = (values / world_size).tolist()
        stats["images_per_s"] *= world_size
    logged = {"reward": stats["reward"], "baseline": stats["baseline"], "images_per_s": stats["images_per_s"],
              "reward_share": stats["reward_share"], "steps": stats["steps"]}
    if xe_weight:
        logged["xe"] = stats["xe"]
    return stats["loss"], stats["images_per_s"] * cfg.scst_samples, logged
