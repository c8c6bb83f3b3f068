"""Train Show and Tell.

    python train.py                                   # the built-in shapes data, offline MobileNetV2
    python train.py --preset coco --data-root data/coco
    python train.py --resume runs/NAME                # continue from runs/NAME/last.pt
    torchrun --nproc_per_node=4 train.py --preset coco --data-root data/coco
    python train.py --help                            # every field of TrainConfig, with its default

From a notebook: `run_dir = train(TrainConfig(epochs=5))`.

With a frozen backbone (the default) the CNN runs once per image: its features are cached on disk by
features.py (data/cache/, keyed by backbone, weights, image size, pooling and the exact file list) and
training only touches the embedding and the LSTM, straight from tensors, with no DataLoader in the loop.
A run folder holds config.json, vocab.json, metrics.jsonl, last.pt and best.pt.

The file reads top to bottom: the config and presets, processes and devices, one split's data, the loss and
one epoch, validation, checkpoints, the whole run, the command line.
"""
import argparse
import dataclasses
import difflib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from data_loader import (CocoCaptionDataset, LengthBatchSampler, collate_skipping, data_defaults, default_vocab_file,
                         find_split, get_transform, image_digests, train_captions_file)
from features import atomic_save, cached_features, compute_features
from metrics import caption_metrics
from model import (CHECKPOINT_FORMAT, DECODER_TYPES, AttentionDecoder, attention_penalty, autocast, build_model,
                   get_device, greedy_search, load_state, read_checkpoint, set_seed, word_rules)
import model_card
import scst
from vocabulary import Vocabulary, load_or_build_vocab


def opt(default, help):
    """A config field whose help text is its one-line comment; the CLI shows both."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data
    data_root: str = opt("data/shapes", "COCO-layout data root: the built-in shapes set or a real COCO download")
    train_split: str = opt("train", "split to train on (captions_<split><year>.json)")
    val_split: str = opt("val", "split scored after every epoch")
    vocab_threshold: int = opt(5, "keep words seen at least this often in the training captions")
    image_size: int = opt(128, "pixels fed to the CNN; 224 for COCO (the cache costs ~4x more at 224)")
    strict: bool = opt(False, "stop on a bad image or caption instead of skipping and counting it")
    # model (the seed: 1 LSTM layer, 100-d embeddings, 512 hidden units)
    backbone: str = opt("mobilenet_v2", "torchvision CNN: mobilenet_v2 (offline after `make weights`), resnet50, ...")
    pretrained: bool = opt(True, "start from ImageNet weights (False: random weights, for tests)")
    train_backbone: bool = opt(False, "fine-tune the CNN too (no feature cache; much slower)")
    grid: int = opt(1, "pool CNN features to a grid x grid layout; 1 is the seed's global average pool")
    head_hidden: int = opt(0, "hidden units in the feature-to-embedding layer; 0 is the seed's single linear layer")
    backbone_blocks: int = opt(0, "keep the CNN's first N blocks only (finer, cheaper features); 0 keeps them all")
    local_hidden: int = opt(0, "MLP width at every feature-map position, then max over positions; 0: pool first")
    feature_norm: bool = opt(False, "standardise CNN features with the training images' mean and std (frozen CNN)")
    embed_norm: bool = opt(False, "LayerNorm on the image embedding, so it arrives at the word embeddings' scale")
    embed_size: int = opt(100, "word and image embedding size")
    hidden_size: int = opt(512, "LSTM hidden units")
    num_layers: int = opt(1, "LSTM layers")
    dropout: float = opt(0.0, "dropout between LSTM layers (needs num_layers > 1); attention: before the output layer")
    image_every_step: bool = opt(False, "lstm decoder: give the LSTM the image beside every word, not only first "
                                        "(par-inject); the attention decoder always does, so it is ignored there")
    decoder: str = opt("lstm", "lstm (the seed's) or attention (Show, Attend and Tell: weighs every map position "
                               "before each word)")
    attention_size: int = opt(0, "attention decoder: hidden size of the additive attention; 0: hidden_size")
    attention_reg: float = opt(0.0, "attention decoder: weight λ of the doubly stochastic regularisation (Xu et al.)")
    attention_word_out: bool = opt(True, "attention decoder: the previous word's embedding joins the deep output "
                                         "(Xu et al. eq. 7); False: only the LSTM state and the context do")
    decoder_dropout: float = opt(0.0, "lstm decoder: dropout on the LSTM's inputs and on its outputs before the "
                                      "vocabulary layer; attention decoder: dropout before the vocabulary layer "
                                      "(as --dropout, which wins when both are set)")
    # optimisation
    epochs: int = opt(10, "passes over every training caption")
    batch_size: int = opt(128, "captions per step (per process under torchrun)")
    lr: float = opt(1e-3, "Adam learning rate")
    weight_decay: float = opt(0.0, "Adam weight decay")
    grad_clip: float = opt(5.0, "clip the gradient norm to this; 0 turns clipping off")
    seed: int = opt(0, "seeds weights, batch order and dropout")
    # evaluation
    max_len: int = opt(30, "longest caption generated, in words (shapes captions reach 25)")
    val_images: int = opt(0, "score captions of this many val images per epoch; 0 means all")
    best_metric: str = opt("CIDEr", "validation score that picks best.pt")
    # machinery
    device: str = opt("auto", "auto (cuda, mps, cpu), or a torch device name")
    num_workers: int = opt(2, "image-decoding processes for the cache and for fine-tuning")
    out_dir: str = opt("runs", "folder that holds the run folders")
    run_name: str = opt("", "run folder name; empty: a time stamp and the backbone")
    cache_dir: str = opt("data/cache", "where cached CNN features live")
    save_every: int = opt(1, "write last.pt every this many epochs (and always at the end)")
    log_every: int = opt(50, "print a log line every this many steps")
    compile: bool = opt(False, "torch.compile the decoder (falls back to eager if compiling fails)")
    resume: str = opt("", "a run folder to continue from its last.pt")
    init_from: str = opt("", "a checkpoint (e.g. runs/NAME/best.pt) whose weights, vocabulary and model sizes start "
                             "a new run: a new optimiser, epoch 0")
    # self-critical training (scst.py): after the cross-entropy epochs, reward sampled captions with CIDEr-D
    scst_epochs: int = opt(0, "self-critical epochs after the cross-entropy ones (0: none)")
    scst_samples: int = opt(5, "captions sampled per image; a step takes batch_size // scst_samples images")
    scst_baseline: str = opt("mean", "reward baseline: 'mean' of the image's other samples (Luo 2020) or 'greedy'")
    scst_lr: float = opt(5e-4, "Adam learning rate of the self-critical epochs (a new optimiser); shapes: 5e-4 beat 5e-5")
    scst_max_len: int = opt(0, "longest sampled caption in words during self-critical epochs; 0: max_len")
    scst_end_token: bool = opt(False, "CIDEr-D reward with <end> as a word of its own, so that a caption ending "
                                      "where no reference ends ('on a dirt') loses reward")
    scst_xe_weight: float = opt(0.0, "mixed objective: add this times the cross-entropy of the images' human "
                                     "captions to the self-critical loss (0: reward only)")

    def model_args(self, vocab):
        """The sizes that rebuild the model; stored in every checkpoint."""
        return dict(backbone=self.backbone, pretrained=self.pretrained, train_backbone=self.train_backbone,
                    grid=self.grid, head_hidden=self.head_hidden, embed_norm=self.embed_norm,
                    backbone_blocks=self.backbone_blocks, local_hidden=self.local_hidden,
                    feature_norm=self.feature_norm, embed_size=self.embed_size,
                    hidden_size=self.hidden_size, num_layers=self.num_layers, dropout=self.dropout,
                    image_every_step=self.image_every_step, decoder=self.decoder,
                    attention_size=self.attention_size or self.hidden_size, decoder_dropout=self.decoder_dropout,
                    attention_word_out=self.attention_word_out,
                    vocab_size=len(vocab), start_id=vocab.start_id, end_id=vocab.end_id, image_size=self.image_size,
                    **word_rules(vocab))


# Starting points for the CLI's --preset; any flag after it still wins. TrainConfig's own defaults are the
# seed's model on the shapes data ("seed"). "shapes-cpu" is the demo recipe: the levers that made shapes
# learnable in minutes on 2 CPU cores (docs/results.md): MobileNetV2's first 14 blocks (a finer map, and a
# cheaper cache), a small MLP at every map position with a max over positions, standardised features,
# LayerNorm on the image embedding, the image beside every word, and a smaller LSTM. "flickr8k" is the seed's
# model with standardised features, that LayerNorm, the image beside every word and dropout 0.5: under 10
# minutes on 2 CPU cores from a cold cache. "flickr8k-best" is that run followed by self-critical epochs, the
# lever that raised CIDEr the most: started after the cross-entropy epochs (sooner measured worse), sampled
# captions capped at 16 words (1.5x faster than 30: docs/self_critical.md); under 30 minutes on 2 CPU cores.
# "coco" is the seed's COCO recipe (ResNet-50 at 224 px, 3 epochs at batch 128) with flickr8k's levers, and
# "coco-best" that run followed by self-critical epochs, as flickr8k-best; on a GPU add --batch-size 2048
# --lr 4e-3 --epochs 9 (docs/training.md: the large-batch recipe). Their times and needs: docs/training.md.
PRESETS = {
    "seed": {},
    "shapes-cpu": dict(image_size=128, backbone_blocks=14, local_hidden=128, feature_norm=True, embed_norm=True,
                       image_every_step=True, hidden_size=128, lr=2e-3, epochs=20, best_metric="object_f1"),
    "flickr8k": dict(data_root="data/flickr8k", image_size=224, feature_norm=True, embed_norm=True,
                     image_every_step=True, decoder_dropout=0.5, epochs=10, best_metric="CIDEr"),
    "flickr8k-best": dict(data_root="data/flickr8k", image_size=224, feature_norm=True, embed_norm=True,
                          image_every_step=True, decoder_dropout=0.5, epochs=10, best_metric="CIDEr",
                          scst_epochs=10, scst_max_len=16),
    "coco": dict(data_root="data/coco", backbone="resnet50", image_size=224, feature_norm=True, embed_norm=True,
                 image_every_step=True, decoder_dropout=0.5, epochs=3, best_metric="CIDEr", num_workers=8),
    "coco-best": dict(data_root="data/coco", backbone="resnet50", image_size=224, feature_norm=True, embed_norm=True,
                      image_every_step=True, decoder_dropout=0.5, epochs=3, best_metric="CIDEr", num_workers=8,
                      scst_epochs=2, scst_max_len=16),
}
AUTO_PRESET = "auto"  # the preset data_loader.data_defaults picks for the data root

# Settings that a resumed run may change (--resume RUN with these flags, or make_config(resume=RUN, ...)): how it
# trains, validates, saves and where it runs. Everything else shapes the model or the data that the checkpoint's
# weights, vocabulary and feature statistics were made for (backbone, sizes, decoder, data_root, vocab_threshold,
# image_size, ...), so a different value is refused. out_dir and run_name are the run's own folder: kept.
RESUMABLE = ("epochs", "batch_size", "lr", "weight_decay", "grad_clip", "seed", "max_len", "val_images",
             "best_metric", "device", "num_workers", "cache_dir", "save_every", "log_every", "compile", "strict",
             "attention_reg", "scst_epochs", "scst_samples", "scst_baseline", "scst_lr", "scst_max_len",
             "scst_end_token", "scst_xe_weight")
RUN_FOLDER = ("out_dir", "run_name")
PATH_SETTINGS = ("data_root", "cache_dir", "out_dir", "init_from")  # compared as resolved paths on resume

# The scores each epoch logs, and which way each improves: --best-metric must be one of them.
LOWER_IS_BETTER = ("train_loss", "train_ppl", "val_loss", "val_ppl")
TRAIN_SCORES = ("train_loss", "train_ppl")  # of the training phase's own loss: cross-entropy, or self-critical
EPOCH_SCORERS = ("Bleu", "CIDEr")  # metrics.py scorers run on the greedy validation captions every epoch
EPOCH_SCORES = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr")  # what those scorers return; higher is better
SHAPES_SCORES = ("object_f1", "object_exact")  # shapes data only (metrics.caption_metrics); higher is better


# ---------------------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------------------
def make_config(preset="seed", **overrides):
    """TrainConfig from a PRESETS entry and overrides; an override of None means "the preset's value".

    preset None or "auto": the preset made for the data root (data_loader.data_defaults): shapes-cpu on the
    shapes data, coco on COCO; so setting the data root alone switches every data-dependent setting.
    With resume=RUN the starting point is the run's saved config instead of the preset, and the overrides
    given change only what a resumed run may change (resume_config), as flags do on `train.py --resume`.
    """
    if preset in (None, AUTO_PRESET):
        preset = data_defaults(overrides.get("data_root") or TrainConfig.data_root)["preset"]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("resume"):
        return resume_config(given.pop("resume"), given)[0]
    return TrainConfig(**{**PRESETS[preset], **given})


def setup_distributed(cfg):
    """(rank, world_size, device). Under torchrun: nccl on GPUs, gloo on CPU; otherwise one process."""
    if "RANK" not in os.environ:
        return 0, 1, get_device(cfg.device)
    use_cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return dist.get_rank(), dist.get_world_size(), torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def barrier(world_size):
    if world_size > 1:
        dist.barrier()


def distributed():
    return dist.is_available() and dist.is_initialized()


def any_process(flag, device):
    """True in every process if `flag` is true in any (one small all-reduce under torchrun, else `flag`).

    For the decisions one process must not take alone, such as skipping a step that the others would run:
    they would then wait forever in DDP's all-reduce.
    """
    if not distributed():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def first_across_processes(index, device):
    """The smallest `index` over all processes (one small all-reduce under torchrun, else `index`)."""
    if not distributed():
        return index
    t = torch.tensor([index], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


# ---------------------------------------------------------------------------------------------------
# Data for one split: captions as tensors, features when the backbone is frozen
# ---------------------------------------------------------------------------------------------------
@dataclass
class Split:
    """A split ready for training: captions as tensors, and per-image features if cached."""
    dataset: CocoCaptionDataset
    tokens: torch.Tensor  # (N, max_len) caption ids padded with <end>
    lengths: torch.Tensor  # (N,)
    caption_image: torch.Tensor  # (N,) index into the images
    features: torch.Tensor = None  # (images, D) or (images, C, h, w) float16; None when the CNN is trained
    usable: np.ndarray = None  # caption indices whose image is usable

    def batch(self, index, length=None):
        """Captions (B, length) of one length and their image features (B, D) in float32.

        Pass `length` when it is known on the host: reading it from a GPU tensor would wait for the GPU.
        """
        L = int(self.lengths[index[0]]) if length is None else length
        feats = self.features[self.caption_image[index]].float() if self.features is not None else None
        return self.tokens[index, :L], feats


def load_split(cfg, name, vocab, encoder, device):
    image_dir, annotations = find_split(cfg.data_root, name)
    transform = get_transform(train=name == cfg.train_split, image_size=cfg.image_size, hflip=not is_shapes(cfg))
    ds = CocoCaptionDataset(image_dir, annotations, vocab, transform, strict=cfg.strict, cache_dir=cfg.cache_dir)
    usable = np.arange(len(ds))
    features = None
    if not cfg.train_backbone:
        features, ok, failures = cached_features(encoder, ds.image_files, cfg.model_args(vocab), cfg.cache_dir, device,
                                                 num_workers=cfg.num_workers, desc=f"caching {name}")
        for file_name, reason in failures.items():
            ds.image_report.add(reason, file_name)
        if failures:
            print(f"{annotations.name}: {ds.image_report.describe()} while caching features")
            ds.image_report.raise_if(cfg.strict)
        usable = usable[ok.numpy()[ds.caption_image]]
        if not len(usable):
            raise ValueError(f"{annotations} gives no usable captions: {ds.image_report.summary()}")
    as_tensor = lambda a: torch.from_numpy(a).to(device)
    return Split(ds, as_tensor(ds.tokens), as_tensor(ds.lengths), as_tensor(ds.caption_image),
                 features.to(device) if features is not None else None, usable)


def is_shapes(cfg):
    return (Path(cfg.data_root) / "shapes_meta.json").exists()


# ---------------------------------------------------------------------------------------------------
# Model, loss, one epoch
# ---------------------------------------------------------------------------------------------------
class Captioner(nn.Module):
    """Encoder and decoder as one module, so the optimizer and DDP see one set of parameters."""

    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, inputs, captions, from_features, with_penalty=False):
        """scores (B, T, V); with_penalty=True: (scores, the attention decoder's doubly stochastic term (), 0 for
        the seed's decoder)."""
        embedded = self.encoder.embed(inputs) if from_features else self.encoder(inputs)  # (B, E) or (B, L, E)
        if not with_penalty:
            return self.decoder(embedded, captions)  # (B, T, V)
        if isinstance(self.decoder, AttentionDecoder):
            scores, alpha = self.decoder(embedded, captions, return_attention=True)  # (B, T, V), (B, T, L)
            return scores, attention_penalty(alpha)
        return self.decoder(embedded, captions), torch.zeros((), device=captions.device)


def caption_loss(scores, captions):
    """Mean cross-entropy per real target: the words and <end>, as papers report perplexity.

    Captions are framed `<start> w1 .. wn <end>` and scores[:, t] predicts captions[:, t], so position 0's
    target is always <start>: trivial, and left out (a decoder may put anything at scores[:, 0]). A batch
    holds captions of one length, so every other position is a real target and the mean is over
    `real_targets(captions)` tokens.
    """
    targets = captions[:, 1:]  # (B, T-1): w1 .. wn <end>
    logits = scores[:, 1:]  # (B, T-1, V)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def real_targets(captions):
    """How many targets caption_loss averages over: every position but <start>'s, in every caption."""
    return captions.size(0) * (captions.size(1) - 1)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train_one_epoch(model, optimizer, split, sampler, cfg, epoch, state, device, rank, loader=None):
    """One pass over the training captions. Returns (mean loss, captions per second).

    Per-step losses stay on the device and are read only at log intervals and at the end of the epoch: a
    `.item()` every step would make the CPU wait for the GPU at every step.
    """
    model.train()
    sampler.set_epoch(epoch)
    from_features = split.features is not None
    batches = sampler.batches() if from_features else loader
    if from_features and batches:  # the epoch's caption order goes to the device once: no copy per step
        order = torch.as_tensor(split.usable[np.concatenate(batches)], device=device)  # (captions,)
        bounds = np.cumsum([0] + [len(b) for b in batches])
    losses, sizes, tokens, first_step, t0, skipped = [], [], [], state["step"], time.time(), 0
    bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False, disable=rank != 0)
    for i, batch in enumerate(bar):
        if from_features:
            index = order[bounds[i]:bounds[i + 1]]  # (B,)
            captions, inputs = split.batch(index, int(sampler.lengths[batch[0]]))
        elif any_process(batch is None, device):  # every image failed to decode (each named in a warning),
            skipped += 1  # here or in another process: all skip the step, or the others would wait in DDP
            continue
        else:
            inputs, captions = (t.to(device, non_blocking=True) for t in batch)
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            scores, penalty = model(inputs, captions, from_features, with_penalty=True)  # (B, T, V), ()
        loss = caption_loss(scores, captions)
        optimizer.zero_grad(set_to_none=True)
        (loss + cfg.attention_reg * penalty).backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        state["step"] += 1
        losses.append(loss.detach())
        sizes.append(len(captions))
        tokens.append(real_targets(captions))
        if (i + 1) % cfg.log_every == 0:
            mean = mean_loss(losses, tokens, first_step, epoch, device)
            if rank == 0:
                tqdm.write(f"epoch {epoch + 1} step {i + 1}/{len(batches)}  loss {mean:.3f}  ppl {math.exp(mean):.2f}"
                           f"  {sum(sizes) / (time.time() - t0):,.0f} captions/s")
    if skipped and rank == 0:
        tqdm.write(f"epoch {epoch + 1}: skipped {skipped} batch(es) whose images all failed to load")
    return mean_loss(losses, tokens, first_step, epoch, device), sum(sizes) / max(time.time() - t0, 1e-9)


def mean_loss(losses, weights, first_step, epoch, device="cpu"):
    """The mean of the step losses so far, each weighted by its number of real targets (so a per-token mean
    over the epoch, like the validation loss); TrainingDiverged names the first bad step.

    Under torchrun every process calls this at the same step and all of them stop if any saw a bad loss:
    one process stopping alone would leave the others waiting forever in DDP's all-reduce, and rank 0 would
    first save the weights that the bad step's gradients (averaged over processes) had spoilt.
    """
    if not losses:
        return float("nan")
    values = torch.stack(losses).float().cpu()  # (steps,), one host sync
    bad = torch.nonzero(~torch.isfinite(values))
    mine = int(bad[0]) if len(bad) else len(values)
    k = first_across_processes(mine, device)
    if k < len(values):
        what = values[k].item() if k == mine else "NaN or infinite in another process"
        raise TrainingDiverged(f"loss became {what} at epoch {epoch + 1}, step {first_step + k + 1}; "
                               "training stopped and the last good checkpoint is kept. Try a lower --lr "
                               "or --grad-clip.")
    return float((values * torch.tensor(weights, dtype=torch.float32)).sum() / sum(weights))


# ---------------------------------------------------------------------------------------------------
# Validation: loss, greedy captions and their scores
# ---------------------------------------------------------------------------------------------------
@torch.inference_mode()
def split_features(encoder, split, cfg, device):
    """Per-image CNN features of a split: the cache, or (fine-tuning) a fresh pass of the current CNN."""
    if split.features is not None:
        return split.features
    features, ok, _ = compute_features(encoder, split.dataset.image_files, cfg.image_size, device,
                                       num_workers=cfg.num_workers, desc="val features")
    return features.to(device)


@torch.inference_mode()
def validate(model, split, cfg, device):
    """Validation loss and perplexity per real target (words and <end>, as in training), and greedy-caption
    scores (BLEU-4, CIDEr; object F1 on shapes)."""
    model.eval()
    features = split_features(model.encoder, split, cfg, device)
    total, n = 0.0, 0
    for index in LengthBatchSampler(split.dataset.lengths[split.usable], 512).batches(0):
        index = torch.as_tensor(split.usable[index], device=device)
        captions = split.tokens[index, : int(split.lengths[index[0]])]
        with autocast(device):
            scores = model(features[split.caption_image[index]].float(), captions, from_features=True)
        total += caption_loss(scores, captions).item() * real_targets(captions)
        n += real_targets(captions)
    candidates = caption_features(model, split, features, cfg, device)
    metrics = {"val_loss": total / max(n, 1), "val_ppl": math.exp(min(total / max(n, 1), 50))}
    metrics.update(caption_metrics(split.dataset, candidates, cfg.data_root, cfg.val_split, metrics=EPOCH_SCORERS))
    return metrics, candidates


def caption_features(model, split, features, cfg, device, batch_size=1024):
    """Greedy captions {image_id: text} for the split's usable images (the first cfg.val_images)."""
    ds, vocab = split.dataset, split.dataset.vocab
    images = np.unique(ds.caption_image[split.usable])
    if cfg.val_images:
        images = images[: cfg.val_images]
    captions = {}
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        with autocast(device):
            embedded = model.encoder.embed(features[torch.as_tensor(chunk, device=device)].float())
            ids, _ = greedy_search(model.decoder, embedded, cfg.max_len)
        captions.update((ds.image_ids[i], vocab.decode(c)) for i, c in zip(chunk, ids))
    return captions


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------
def make_checkpoint(model, optimizer, cfg, vocab, epoch, state, metrics):
    """One plain dict (tensors, numbers, strings) that loads with torch.load(weights_only=True)."""
    rng = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"format": CHECKPOINT_FORMAT, "model_args": cfg.model_args(vocab),
            "encoder": model.encoder.state_dict(), "decoder": model.decoder.state_dict(),
            "optimizer": optimizer.state_dict(), "vocab": vocab.to_dict(), "config": asdict(cfg),
            "epoch": epoch, "step": state["step"], "best_score": state["best"], "metrics": metrics, "rng": rng,
            "train_images": state.get("train_images"), "val_images": state.get("val_images")}


def split_digests(split):
    """image_digests of a split's usable images: the record, in every checkpoint, of the images it trained on
    (train) and was chosen on (val), so evaluate.py can say when a split it scores overlaps them."""
    rows = np.unique(split.dataset.caption_image[split.usable])
    return image_digests([split.dataset.image_files[i] for i in rows])


def image_records(train_split, val_split, start, cfg):
    """{"train_images", "val_images"}: the digests of the images this run trains and is chosen on, joined with
    those the checkpoint it starts from records (--init-from, --resume), since the weights carry what that
    checkpoint saw: evaluate.py then warns about a split that an earlier run of the chain trained on."""
    records = {"train_images": split_digests(train_split), "val_images": split_digests(val_split)}
    if start is None:
        return records
    if any(start.get(key) is None for key in records) and not cfg.resume:
        print(f"note: {cfg.init_from} does not record which images it was trained and chosen on (a checkpoint older "
              "than that record), so evaluate.py cannot warn when a split it scores holds them")
    for key, own in records.items():
        if start.get(key) is not None:
            records[key] = torch.unique(torch.cat([own, torch.as_tensor(start[key]).cpu()]))  # sorted, distinct
    return records


def score_the_start(model, optimizer, cfg, vocab, val_split, state, device, run_dir):
    """--init-from: validate the starting weights as epoch 0 of the new run and write them as best.pt, so an
    epoch becomes best.pt only by beating them, and best.pt is never worse than what the run began from.

    Not logged in metrics.jsonl (epoch 0 trained nothing: no training loss). A --best-metric that epoch 0 cannot
    score (train_loss, train_ppl) leaves best.pt to the first epoch, as before.
    """
    metrics, _ = validate(model, val_split, cfg, device)
    metrics = {"epoch": 0, "step": 0, **metrics}
    shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in ("val_loss", "Bleu_4", "CIDEr", "object_f1") if k in metrics)
    tqdm.write(f"epoch 0 (the --init-from weights): {shown}")
    if cfg.best_metric in metrics:
        state["best"] = metrics[cfg.best_metric]
        atomic_save(make_checkpoint(model, optimizer, cfg, vocab, 0, state, metrics), Path(run_dir) / "best.pt")


def restore_rng(rng):
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), None))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def init_config(cfg):
    """(cfg, checkpoint) for --init-from: the model's sizes come from the checkpoint (its model_args, so every
    decoder's own keys too), the rest of cfg as given."""
    init = read_checkpoint(cfg.init_from)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    sizes = {k: v for k, v in init["model_args"].items() if k in fields}
    changed = {k: v for k, v in sizes.items() if getattr(cfg, k) != v}
    if changed:
        print(f"--init-from {cfg.init_from}: model settings from the checkpoint: {changed}")
    return dataclasses.replace(cfg, **sizes), init


def resume_config(run_dir, overrides=None):
    """(config, checkpoint) to continue RUN_DIR: the saved config with `overrides` on top, and the newest complete
    training state, last.pt or best.pt (resume_checkpoint).

    `overrides` are the settings given explicitly (flags, notebook parameters). Those in RESUMABLE win over
    the saved ones; out_dir and run_name stay the run's own; any other that differs from the saved value is
    refused in one line that names it, since it would change the model or the data the checkpoint was made for.
    """
    if not (Path(run_dir) / "last.pt").is_file():
        raise FileNotFoundError(f"{run_dir} holds no complete checkpoint (last.pt) to resume from; "
                                "start a new run instead")
    ckpt = resume_checkpoint(run_dir)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    changed = {k: v for k, v in (overrides or {}).items()
               if k != "resume" and v != getattr(saved, k) and not same_path(k, v, getattr(saved, k))}
    refused = [k for k in changed if k not in RESUMABLE + RUN_FOLDER]
    if refused:
        named = ", ".join(f"{flag(k)} {changed[k]!r} (the run's: {getattr(saved, k)!r})" for k in refused)
        raise ValueError(f"cannot resume {run_dir} with {named}: it would change the model or the data its "
                         f"checkpoint was made for; leave it out, or start a new run. A resumed run may change "
                         f"only {', '.join(flag(k) for k in RESUMABLE)}")
    moved = [k for k in changed if k in RUN_FOLDER]
    if moved:
        print(f"note: {', '.join(flag(k) for k in moved)} ignored: a resumed run stays in its folder {run_dir}")
    kept = {k: v for k, v in changed.items() if k in RESUMABLE}
    return dataclasses.replace(saved, **kept, resume=str(run_dir)), ckpt


def resumed_changes(ckpt, cfg):
    """{setting: value} of a resumed run's settings that differ from those of the checkpoint it continues."""
    saved = ckpt["config"]
    return {k: getattr(cfg, k) for k in RESUMABLE if k in saved and getattr(cfg, k) != saved[k]}


def resume_checkpoint(run_dir):
    """RUN_DIR's last.pt, or its best.pt when that is newer.

    Both hold the whole training state (weights, optimiser, RNG, step). best.pt is newer when an epoch improved
    after last.pt's latest save (save_every > 1) or a crash fell between the two writes. Resuming from last.pt
    then would train those epochs again, measure the new best against last.pt's stale record, and could
    overwrite best.pt with a worse model; resuming from best.pt keeps it, and its metrics row.
    """
    ckpt = read_checkpoint(Path(run_dir) / "last.pt")
    if (Path(run_dir) / "best.pt").is_file():
        best = read_checkpoint(Path(run_dir) / "best.pt")
        if best["epoch"] > ckpt["epoch"]:
            return best
    return ckpt


def same_path(name, given, saved):
    """Whether two values of a path setting name one place (data/x/ and data/x, or a relative and an absolute
    spelling of it): a resumed run is not refused for writing its data root another way."""
    if name not in PATH_SETTINGS or not given or not saved:
        return False
    return Path(given).expanduser().resolve() == Path(saved).expanduser().resolve()


def flag(name):
    """The command-line spelling of a TrainConfig field."""
    return "--" + name.replace("_", "-")


def best_metric_names(cfg):
    """The scores each epoch logs for this data: the valid values of --best-metric."""
    shapes = is_shapes(cfg) or Path(cfg.data_root).name == "shapes"  # ensure_data generates shapes there
    return LOWER_IS_BETTER + EPOCH_SCORES + (SHAPES_SCORES if shapes else ())


def check_best_metric(cfg):
    """Refuse, before any work, a --best-metric that no epoch would log, or that would compare unlike losses."""
    names = best_metric_names(cfg)
    if cfg.best_metric not in names:
        raise ValueError(f"--best-metric {cfg.best_metric!r} is not a score this run logs on {cfg.data_root}; "
                         f"choose one of {', '.join(names)}")
    if cfg.scst_epochs > 0 and cfg.best_metric in TRAIN_SCORES:
        # a self-critical loss (about -0.03) is no cross-entropy (about 2): the first such epoch would always win;
        # and self-critical epochs log no perplexity at all
        raise ValueError(f"--best-metric {cfg.best_metric} cannot pick best.pt across --scst-epochs: the "
                         "self-critical epochs' training loss is not a cross-entropy; choose a validation score "
                         f"({', '.join(n for n in names if n not in TRAIN_SCORES)})")


def check_settings(cfg):
    """Refuse, before any folder, data, cache or process group, every setting that some phase of the run would
    fail on (the self-critical epochs start only after all the cross-entropy ones), and say which settings the
    chosen decoder ignores. train() runs it on new, --init-from and --resume runs alike."""
    check_best_metric(cfg)
    problems = [f"{flag(name)} must be {rule}, got {getattr(cfg, name)!r}" for name, ok, rule in (
        ("epochs", cfg.epochs >= 0, "0 or more"), ("scst_epochs", cfg.scst_epochs >= 0, "0 or more"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"), ("lr", cfg.lr >= 0, "0 or more"),
        ("weight_decay", cfg.weight_decay >= 0, "0 or more"), ("grad_clip", cfg.grad_clip >= 0, "0 or more"),
        ("max_len", cfg.max_len >= 1, "at least 1"), ("val_images", cfg.val_images >= 0, "0 or more"),
        ("save_every", cfg.save_every >= 1, "at least 1"), ("log_every", cfg.log_every >= 1, "at least 1"),
        ("dropout", 0 <= cfg.dropout < 1, "in [0, 1)"), ("decoder_dropout", 0 <= cfg.decoder_dropout < 1, "in [0, 1)"),
        ("decoder", cfg.decoder in DECODER_TYPES, f"one of {', '.join(DECODER_TYPES)}"),
        ("embed_size", cfg.embed_size >= 1, "at least 1"), ("hidden_size", cfg.hidden_size >= 1, "at least 1"),
        ("num_layers", cfg.num_layers >= 1, "at least 1"), ("grid", cfg.grid >= 1, "at least 1"),
        ("image_size", cfg.image_size >= 1, "at least 1"), ("head_hidden", cfg.head_hidden >= 0, "0 or more"),
        ("backbone_blocks", cfg.backbone_blocks >= 0, "0 or more"),
        ("local_hidden", cfg.local_hidden >= 0, "0 or more"),
        ("attention_size", cfg.attention_size >= 0, "0 (hidden_size) or more"),
        ("attention_reg", cfg.attention_reg >= 0, "0 or more"), ("num_workers", cfg.num_workers >= 0, "0 or more"))
        if not ok]
    problems += backbone_problems(cfg.backbone)
    if cfg.train_backbone and cfg.feature_norm:  # prepare() would say so only after the folder and vocabulary
        problems.append("--feature-norm needs a frozen backbone (its statistics come from the feature cache): "
                        "leave out --train-backbone or give --no-feature-norm")
    if cfg.scst_epochs > 0:
        problems += scst_problems(cfg)
    problems += decoder_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))


def backbone_problems(name):
    """A backbone that is no torchvision classifier, named with the nearest names; nothing built or downloaded."""
    names = torchvision.models.list_models(module=torchvision.models)  # classifiers only: no detection models
    if name in names:
        return []
    near = difflib.get_close_matches(str(name), names, n=3)
    hint = f"did you mean {' or '.join(near)}?" if near else "e.g. mobilenet_v2, resnet50 or efficientnet_b0"
    return [f"--backbone {name!r} is not a torchvision classification model; {hint}"]


def scst_problems(cfg):
    """What the self-critical epochs (scst.train_scst_epoch, scst_step) would fail on, named by flag."""
    problems = []
    if cfg.scst_baseline not in scst.BASELINES:
        problems.append(f"--scst-baseline must be one of {', '.join(scst.BASELINES)}, got {cfg.scst_baseline!r}")
    if cfg.scst_samples < 1:
        problems.append(f"--scst-samples must be at least 1, got {cfg.scst_samples}")
    elif cfg.scst_baseline == "mean" and cfg.scst_samples < 2:
        problems.append(f"--scst-baseline mean needs --scst-samples 2 or more (each sample's baseline is the mean "
                        f"of the image's other samples), got {cfg.scst_samples}; or use --scst-baseline greedy")
    if cfg.train_backbone:
        problems.append("--scst-epochs train from the feature cache and need a frozen backbone: leave out "
                        "--train-backbone, or fine-tune first and continue with --init-from")
    if cfg.scst_lr < 0:
        problems.append(f"--scst-lr must be 0 or more, got {cfg.scst_lr}")
    if cfg.scst_max_len < 0:
        problems.append(f"--scst-max-len must be 0 (max_len) or more, got {cfg.scst_max_len}")
    if not cfg.scst_xe_weight >= 0:
        problems.append(f"--scst-xe-weight must be 0 or more, got {cfg.scst_xe_weight}")
    return problems


def decoder_problems(cfg):
    """Settings the chosen decoder cannot honour: conflicting ones are problems; those it ignores get a note."""
    if cfg.decoder != "attention":
        if cfg.attention_reg:
            return [f"--attention-reg {cfg.attention_reg} needs --decoder attention (the lstm decoder has no "
                    "attention weights to regularise); leave it out"]
        return []
    problems = []
    if cfg.num_layers != 1:
        problems.append(f"--decoder attention has one LSTM layer; got --num-layers {cfg.num_layers}")
    if cfg.dropout and cfg.decoder_dropout and cfg.dropout != cfg.decoder_dropout:
        problems.append(f"--dropout {cfg.dropout} and --decoder-dropout {cfg.decoder_dropout} both set the attention "
                        "decoder's dropout before its vocabulary layer; give one of them")
    if cfg.image_every_step and os.environ.get("RANK", "0") == "0":
        print("note: --image-every-step is ignored by --decoder attention: its LSTM reads the attended image "
              "context at every step anyway")
    return problems


def improves(metric, score, best):
    """Whether `score` beats `best` (None: no score yet): losses and perplexities fall, caption scores rise.
    A score the epoch did not log (None) never improves: that epoch's checkpoint still goes to last.pt."""
    if score is None:
        return False
    if best is None:
        return True
    return score < best if metric in LOWER_IS_BETTER else score > best


def best_so_far(run_dir, metric):
    """best.pt's own score under `metric`: the score a resumed run must beat to replace it (None: no best.pt).

    Taken from best.pt itself rather than from the checkpoint resumed: that one's record is of the metric it
    was trained with, and --best-metric may change on resume. A metric that best.pt's row lacks gives None:
    the next epoch replaces best.pt.
    """
    path = Path(run_dir) / "best.pt"
    return read_checkpoint(path)["metrics"].get(metric) if path.is_file() else None


# ---------------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------------
def prepare_run_dir(cfg):
    """The run folder: a new one, or on --resume the given one, cleared of temporary files a crash left."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
    else:
        name = cfg.run_name or time.strftime("%Y%m%d-%H%M%S") + f"-{cfg.backbone}"
        run_dir = Path(cfg.out_dir) / name
        if (run_dir / "last.pt").exists():
            raise FileExistsError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                                  "or choose another --run-name")
        run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(".*.tmp*"):  # a checkpoint write that a crash (kill -9) interrupted
        stale.unlink()
    return run_dir


def ensure_data(cfg):
    """Generate the built-in shapes data on first use; a missing COCO root gets a clear error."""
    root = Path(cfg.data_root)
    if root.name == "shapes" and not (root / "shapes_meta.json").exists():
        from shapes_dataset import ensure_shapes
        ensure_shapes(root)


def prepare(cfg, ckpt, device):
    """Vocabulary, model and both splits (with their feature caches when the backbone is frozen)."""
    if ckpt is not None:
        vocab = Vocabulary.from_dict(ckpt["vocab"])
    else:
        vocab_file = default_vocab_file(cfg.data_root, cfg.vocab_threshold, cfg.cache_dir)
        vocab = load_or_build_vocab([train_captions_file(cfg.data_root)], cfg.vocab_threshold, vocab_file,
                                    cache_dir=cfg.cache_dir)
    encoder, decoder = build_model(cfg.model_args(vocab))
    if ckpt is not None:  # the feature caches are keyed by the backbone's weights: those this run trained with
        load_state(encoder, ckpt["encoder"], "encoder")
    encoder.to(device).to(memory_format=torch.channels_last)
    train_split = load_split(cfg, cfg.train_split, vocab, encoder, device)
    if cfg.feature_norm:  # statistics of the usable training images; a resumed run loads its own instead
        if train_split.features is None:
            raise ValueError("feature_norm needs a frozen backbone: its statistics come from the feature cache")
        images = np.unique(train_split.dataset.caption_image[train_split.usable])
        encoder.fit_feature_stats(train_split.features, rows=torch.as_tensor(images, device=device))
    val_split = load_split(cfg, cfg.val_split, vocab, encoder, device)
    return vocab, encoder, decoder, train_split, val_split


def train(cfg):
    """Train a captioner as `cfg` says; returns the run folder. Rank 0 writes logs and checkpoints.

    With cfg.resume, training continues that run with cfg's settings: every setting that differs from the
    run's saved one counts as given, and must be one a resumed run may change (RESUMABLE). So build cfg from
    the run, `make_config(resume=RUN, epochs=30)`, as `train.py --resume RUN --epochs 30` does; a bare
    `TrainConfig(resume=RUN)` holds TrainConfig's defaults, which a refusal names if they differ from the run's.
    """
    started = time.time()  # the whole run's wall time goes on the model card
    ckpt = init = None
    if cfg.resume:
        cfg, ckpt = resume_config(cfg.resume, asdict(cfg))
    elif cfg.init_from:
        cfg, init = init_config(cfg)
    check_settings(cfg)  # before any folder, data, cache or process group
    rank, world_size, device = setup_distributed(cfg)
    try:
        return train_in_process(cfg, ckpt, init, rank, world_size, device, started)
    finally:
        # On success and on every error alike. A process group left for the interpreter's exit to tear down can
        # abort the process (gloo: "terminate called without an active exception", exit code -6) after the
        # error was reported, when the other process has already closed its side.
        if world_size > 1:
            dist.destroy_process_group()


def train_in_process(cfg, ckpt, init, rank, world_size, device, started):
    """train(cfg) in this process, once its process group (if any) is up; ckpt / init: the checkpoint that
    cfg.resume / cfg.init_from named, started: time.time() when train began."""
    set_seed(cfg.seed)
    if rank == 0:
        ensure_data(cfg)
        run_dir = prepare_run_dir(cfg)
    barrier(world_size)
    # Rank 0 builds the vocabulary and the feature caches; the others wait, then read them.
    if rank == 0:
        vocab, encoder, decoder, train_split, val_split = prepare(cfg, ckpt or init, device)
    barrier(world_size)
    if rank != 0:
        vocab, encoder, decoder, train_split, val_split = prepare(cfg, ckpt or init, device)
    model = Captioner(encoder, decoder).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {"step": 0, "best": None, **image_records(train_split, val_split, ckpt or init, cfg)}
    start_epoch = 0
    if init is not None:  # its weights only: the optimiser, epoch and best score start afresh
        load_state(model.encoder, init["encoder"], "encoder")
        load_state(model.decoder, init["decoder"], "decoder")
        if rank == 0:
            score_the_start(model, optimizer, cfg, vocab, val_split, state, device, run_dir)
    if ckpt is not None:
        load_state(model.encoder, ckpt["encoder"], "encoder")
        load_state(model.decoder, ckpt["decoder"], "decoder")
        optimizer.load_state_dict(ckpt["optimizer"])
        lr = cfg.scst_lr if ckpt["epoch"] > cfg.epochs else cfg.lr  # past epochs: the self-critical optimiser
        for group in optimizer.param_groups:  # the loaded state carries the old run's; cfg's are the ones asked for
            group.update(lr=lr, weight_decay=cfg.weight_decay)
        restore_rng(ckpt["rng"])
        state["step"] = ckpt["step"]
        start_epoch = ckpt["epoch"]
        if rank == 0:
            state["best"] = best_so_far(run_dir, cfg.best_metric)
    if rank == 0:
        trim_metrics(run_dir, start_epoch)
    if cfg.compile:
        model.decoder = compile_or_eager(model.decoder)
    train_model = nn.parallel.DistributedDataParallel(model) if world_size > 1 else model
    sampler = LengthBatchSampler(train_split.dataset.lengths[train_split.usable], cfg.batch_size, seed=cfg.seed,
                                 rank=rank, world_size=world_size)
    loader = None if train_split.features is not None else DataLoader(
        train_split.dataset, batch_sampler=sampler, num_workers=cfg.num_workers, collate_fn=collate_skipping,
        persistent_workers=cfg.num_workers > 0, pin_memory=device.type == "cuda")
    if rank == 0:
        save_run_files(run_dir, cfg, vocab)
        if ckpt is None:  # the card's rebuild command; a resumed session records what it changed
            model_card.start_session(run_dir, asdict(TrainConfig()))
        else:
            model_card.start_session(run_dir, asdict(TrainConfig()), start_epoch, resumed_changes(ckpt, cfg))
        n_params = sum(p.numel() for p in params)
        print(f"training {n_params:,} parameters on {len(train_split.usable):,} captions, device {device}, "
              f"{world_size} process(es); run folder {run_dir}")
    reward = None  # the self-critical reward, built when its phase starts
    total_epochs = cfg.epochs + cfg.scst_epochs
    for epoch in range(start_epoch, total_epochs):
        t0 = time.time()
        if epoch < cfg.epochs:
            train_loss, speed = train_one_epoch(train_model, optimizer, train_split, sampler, cfg, epoch, state,
                                                device, rank, loader)
            logged = {"phase": "xe", "train_ppl": math.exp(min(train_loss, 50))}
        else:
            if reward is None:
                reward = scst.shared_reward(train_split.dataset, train_split.usable, vocab, rank, world_size,
                                            cfg.scst_end_token)
            if epoch == cfg.epochs:  # a new optimiser; a run resumed later in this phase has loaded its own
                optimizer = torch.optim.Adam(params, lr=cfg.scst_lr, weight_decay=cfg.weight_decay)
            bar = lambda batches: tqdm(batches, desc=f"self-critical epoch {epoch + 1}/{total_epochs}",
                                       unit="batch", leave=False, disable=rank != 0)
            train_loss, speed, logged = scst.train_scst_epoch(model, optimizer, train_split, reward, cfg, epoch,
                                                              device, rank, world_size, bar)
            state["step"] += logged.pop("steps")
            logged = {"phase": "scst", **logged}
        if rank == 0:
            metrics, _ = validate(model, val_split, cfg, device)
            metrics = {"epoch": epoch + 1, "step": state["step"], "train_loss": train_loss, **logged, **metrics,
                       "captions_per_s": speed, "epoch_time_s": time.time() - t0}
            log_epoch(run_dir, metrics)
            improved = improves(cfg.best_metric, metrics.get(cfg.best_metric), state["best"])
            if improved:
                state["best"] = metrics[cfg.best_metric]
            last = epoch + 1 == total_epochs
            if improved or last or (epoch + 1) % cfg.save_every == 0:
                ckpt_dict = make_checkpoint(model, optimizer, cfg, vocab, epoch + 1, state, metrics)
                # last.pt first: a crash between the two writes then leaves last.pt the newest state, and the
                # log at most one epoch ahead of it (best.pt is newer only with save_every > 1; resume_checkpoint)
                if last or (epoch + 1) % cfg.save_every == 0:
                    atomic_save(ckpt_dict, run_dir / "last.pt")
                if improved:
                    atomic_save(ckpt_dict, run_dir / "best.pt")
                    model_card.write_card(run_dir)  # MODEL_CARD.md beside best.pt
        barrier(world_size)
    if rank == 0:
        model_card.finish_training(run_dir, time.time() - started, device)
    return run_dir if rank == 0 else None


def compile_or_eager(module):
    """torch.compile the module's forward in place when it works here; otherwise eager, with a one-line note.

    torch.compile() itself rarely fails: compiling happens at the first call (and again at a new shape), which
    is where a missing C compiler or an unsupported op shows. So every call of the compiled forward is guarded:
    the first one that raises switches the module back to eager for good, with a note, and is run again
    eagerly (an error eager code raises too still surfaces). The module object is returned unchanged: its
    state_dict keys, methods (start, step, for decoding) and checkpoints are those of the eager module.
    """
    eager = module.forward
    try:
        compiled = torch.compile(eager)
    except Exception as e:  # compile is an optimisation, never a reason to stop training
        print(f"torch.compile failed ({type(e).__name__}: {first_line(e)}); training without it")
        return module

    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except Exception as e:
            print(f"torch.compile failed at run time ({type(e).__name__}: {first_line(e)}); training without it")
            module.forward = eager  # later calls go straight to eager code
            return eager(*args, **kwargs)

    module.forward = forward
    return module


def first_line(error):
    """An exception's first non-empty line: compiler errors run to pages."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def save_run_files(run_dir, cfg, vocab):
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    vocab.save(run_dir / "vocab.json")


def log_epoch(run_dir, metrics):
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    speed = f"{metrics['images_per_s']:,.0f} images/s" if metrics.get("phase") == "scst" else \
        f"{metrics['captions_per_s']:,.0f} captions/s"
    shown = ["train_loss", "reward", "baseline", "val_loss", "val_ppl", "Bleu_4", "CIDEr", "object_f1"]
    tqdm.write(f"epoch {metrics['epoch']}: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in shown if k in metrics)
               + f"  ({metrics['epoch_time_s']:.1f} s, {speed})")


def trim_metrics(run_dir, epochs):
    """Keep only metrics.jsonl's rows of epochs 1..`epochs`, those of the checkpoint training starts from.

    A crash after an epoch is logged but before its checkpoint lands leaves a row with no weights behind it;
    that epoch is trained again on resume, so its old row goes and the log always matches the weights. A new
    run in a folder without last.pt (a crash before the first checkpoint) starts an empty log.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] <= epochs:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):  # a line torn by the crash
            continue
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(keep))
    os.replace(tmp, path)


def read_metrics(run_dir):
    """The metrics.jsonl rows of a run, one dict per epoch (for plotting)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


# ---------------------------------------------------------------------------------------------------
# Command line: every TrainConfig field is a flag
# ---------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    # Each field's help shows its TrainConfig default; argparse's own default is None ("not given"), so that
    # only the flags given override the preset, and argparse is not asked to print it.
    parser = argparse.ArgumentParser(description="Train a Show-and-Tell captioner.")
    parser.add_argument("--preset", choices=sorted(PRESETS) + [AUTO_PRESET], default="seed",
                        help="a starting set of defaults; flags after it override. auto: the one made for the data "
                             "root (shapes-cpu on shapes, coco on COCO) (default: 'seed')")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"]
                                + f" (default: {f.default})")
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__)
            parser.add_argument(flag, type=kind, default=None, metavar=f.name.upper(),
                                help=f.metadata["help"] + f" (default: {f.default!r})")
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "preset"}
    # On --resume the run's own config is the start (not a preset), changed only by the flags given.
    return make_config(args.preset, **given)


def main(argv=None):
    try:
        run_dir = train(parse_args(argv))
    except (OSError, ValueError, TrainingDiverged, RuntimeError) as e:  # CheckpointError is a ValueError
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 1
    if run_dir is not None:
        print(f"done: {run_dir}/best.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
