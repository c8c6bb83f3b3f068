"""Training speed: this repository's loop on cached features against the seed's way of training.

    python bench/train_speed.py                 # shapes data in data/shapes, default TrainConfig sizes
    python bench/train_speed.py --preset shapes-cpu     # the demo recipe (128 px, MobileNetV2's first 14
                                                        # blocks, an MLP of 128 per map position, LSTM 128)

Both loops train the same model (a preset of train.py, the seed by default) on the same shapes data, in one process:
- repo: the frozen CNN ran once per image (the feature cache); each step gathers a batch of captions of one
  length and its features straight from tensors, as train.py does;
- seed: the way the seed's notebook trains: the CNN runs on every batch, one loader process (num_workers=0),
  a fresh DataLoader iterator every step, and each step draws a random caption length and then indices of
  that length at random with replacement.
It prints captions per second for both and the ratio. The feature-cache build is timed separately: it is
paid once per dataset and reused by every later run. The repo loop times full batches only, with no
validation and no progress bar: a train.py epoch (metrics.jsonl's captions_per_s) also pays for the batches
a caption length leaves short, so it logs less (README, Results, gives both).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, SubsetRandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_loader import CocoCaptionDataset, find_split, get_transform  # noqa: E402
from model import build_model, set_seed  # noqa: E402
from features import cached_features  # noqa: E402
from train import PRESETS, Captioner, caption_loss, ensure_data, make_config  # noqa: E402
from vocabulary import load_or_build_vocab  # noqa: E402
from data_loader import default_vocab_file, train_captions_file  # noqa: E402


def make_model(cfg, vocab):
    encoder, decoder = build_model(cfg.model_args(vocab))
    model = Captioner(encoder.to(memory_format=torch.channels_last), decoder)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    return model, optimizer


def step(model, optimizer, inputs, captions, from_features):
    scores = model(inputs, captions, from_features)  # (B, T, V)
    loss = caption_loss(scores, captions)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def repo_loop(cfg, dataset, features, steps):
    """Captions per second of train.py's loop: batches gathered from the cached features."""
    model, optimizer = make_model(cfg, dataset.vocab)
    model.train()
    tokens, lengths = torch.from_numpy(dataset.tokens), torch.from_numpy(dataset.lengths)
    owner = torch.from_numpy(dataset.caption_image)
    from data_loader import LengthBatchSampler
    batches = LengthBatchSampler(dataset.lengths, cfg.batch_size, seed=cfg.seed).batches(0)
    batches = [b for b in batches if len(b) == cfg.batch_size][:steps + 2]
    n, t0 = 0, None
    for i, b in enumerate(batches):
        if i == 2:  # two warm-up steps
            t0, n = time.perf_counter(), 0
        index = torch.from_numpy(b)
        captions = tokens[index, : int(lengths[index[0]])]
        step(model, optimizer, features[owner[index]].float(), captions, from_features=True)
        n += len(b)
    return n / (time.perf_counter() - t0)


def seed_train_indices(lengths, batch_size, rng):
    """The seed's sampler: pick the length of a random caption, then batch_size indices of that length
    with replacement."""
    length = lengths[rng.integers(len(lengths))]
    return rng.choice(np.flatnonzero(lengths == length), size=batch_size, replace=True).tolist()


def seed_loop(cfg, dataset, steps):
    """Captions per second of the seed's loop: the CNN on every batch, a fresh loader iterator per step."""
    model, optimizer = make_model(cfg, dataset.vocab)
    model.train()
    dataset.transform = get_transform(train=True, image_size=cfg.image_size, hflip=False)
    rng = np.random.default_rng(cfg.seed)
    sampler = SubsetRandomSampler([0])
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=0)
    n, t0 = 0, None
    for i in range(steps + 2):
        if i == 2:
            t0, n = time.perf_counter(), 0
        sampler.indices = seed_train_indices(dataset.lengths, cfg.batch_size, rng)
        images, captions = next(iter(loader))  # a new iterator every step, as in the seed
        step(model, optimizer, images.contiguous(memory_format=torch.channels_last), captions, from_features=False)
        n += len(captions)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-root", default="data/shapes", help="COCO-layout data (shapes by default)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per loop (after 2 warm-up steps)")
    parser.add_argument("--seed-steps", type=int, default=8, help="timed steps for the (slow) seed loop")
    parser.add_argument("--cache-dir", default="data/cache", help="feature cache folder")
    parser.add_argument("--preset", default="seed", choices=sorted(PRESETS),
                        help="model and image sizes for both loops (train.py's presets)")
    args = parser.parse_args(argv)
    cfg = make_config(args.preset, data_root=args.data_root, cache_dir=args.cache_dir, num_workers=0)
    ensure_data(cfg)
    set_seed(cfg.seed)
    torch.set_num_threads(torch.get_num_threads())
    vocab = load_or_build_vocab([train_captions_file(cfg.data_root)], cfg.vocab_threshold,
                                default_vocab_file(cfg.data_root, cfg.vocab_threshold, cfg.cache_dir))
    dataset = CocoCaptionDataset(*find_split(cfg.data_root, cfg.train_split), vocab)
    encoder, _ = build_model(cfg.model_args(vocab))
    t0 = time.perf_counter()
    features, ok, _ = cached_features(encoder.to(memory_format=torch.channels_last), dataset.image_files,
                                      cfg.model_args(vocab), cfg.cache_dir, torch.device("cpu"),
                                      num_workers=cfg.num_workers, desc="feature cache")
    cache_s = time.perf_counter() - t0
    repo = repo_loop(cfg, dataset, features, args.steps)
    seed = seed_loop(cfg, dataset, args.seed_steps)
    print(f"\nshapes train split: {len(dataset.image_files):,} images, {len(dataset):,} captions; "
          f"batch {cfg.batch_size}, {cfg.backbone} at {cfg.image_size} px, LSTM {cfg.hidden_size}, "
          f"{torch.get_num_threads()} threads, preset {args.preset}")
    print(f"feature cache (built once, or loaded if present): {cache_s:.1f} s")
    print(f"{'loop':<34}{'captions/s':>12}")
    print(f"{'repo: cached features':<34}{repo:>12,.0f}")
    print(f"{'seed: CNN + fresh loader each step':<34}{seed:>12,.0f}")
    print(f"ratio: {repo / seed:.1f}x")


if __name__ == "__main__":
    main()
