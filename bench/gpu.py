"""The fast GPU path end to end, on a COCO-sized synthetic workload: feature cache, one epoch, captioning.

    python bench/gpu.py --device cuda                    # 123,287 images, 414,113 captions: a few minutes on a GPU
    python bench/gpu.py --small --device cpu --threads 1 # 256 images: the same code paths on a CPU, ~1-2 minutes
    python bench/gpu.py --images 20000 --json outputs/gpu-20k.json --work-dir /scratch/gpu-bench

The workload is made here: --pool distinct 640x480-ish JPEGs of about COCO's mean file size (~150 KB),
hard-linked under --images names (the figures measure decoding and the CNN, not the disk; the pool sits in
the page cache), and --captions random captions with COCO-like lengths over a 10,000-word vocabulary.
It measures, with the repository's own functions:
  cache build    features.compute_features with decode='torch' (nvJPEG on CUDA: threads read bytes two batches
                 ahead, batched GPU decode, resize/crop/normalise on the GPU, bf16 channels_last CNN), and
                 with decode='pil' (the DataLoader of PIL workers) on --pil-images of them, for comparison;
  epoch          train.train_one_epoch on the cached features (decoder training, no DataLoader);
  captioning     model.caption_batch from features, greedy and beam 3 (every caption runs --max-len words);
  seed loop      the seed's way: the CNN on every batch, one loader process (PIL), fp32, its sampler
                 (bench/train_speed.py's seed_train_indices), for the ratio.
It prints a table and writes a JSON file. The CNN is ResNet-50 (the coco preset) with ImageNet weights if they
are in the torch hub cache, else random weights: speed does not depend on them; the JSON says which.

Large-batch recipe for decoder training from the cache on a GPU (--batch-size and --lr here; train.py's
--batch-size and --lr): batch 2048 with Adam's lr scaled by the square root of the batch ratio,
1e-3 * sqrt(2048 / 128) = 4e-3, gradient clipping at 5 as before, no warm-up. Square root, not linear: Adam
divides its step by the gradient's running RMS, so the step does not grow with the batch as SGD's does; a 16x
batch cuts the gradient noise 4x, which supports about a 4x larger step (the square-root rule for adaptive
optimisers). The linear rule (Goyal et al., for SGD) would give 1.6e-2, a step size at which an LSTM trained
with Adam needs a warm-up to stay stable, and TrainConfig has none. A 414k-caption epoch is then only ~200
steps, so give it ~3x more epochs than at batch 128. Not yet validated on COCO: compare val CIDEr of
`--batch-size 128 --lr 1e-3` and `--batch-size 2048 --lr 4e-3` at equal epochs on a GPU.
"""
import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, SubsetRandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's modules
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks

from data_loader import CocoCaptionDataset, LengthBatchSampler, get_transform  # noqa: E402
from decode_speed import COCO_VOCAB, make_decoder, sync, timed  # noqa: E402
from features import compute_features  # noqa: E402
from model import build_model, caption_batch, get_device, resolve_weights, set_seed, weights_path  # noqa: E402
from train import PRESETS, Captioner, Split, TrainConfig, train_one_epoch  # noqa: E402
from train_speed import make_model, seed_train_indices, step  # noqa: E402
from vocabulary import Vocabulary  # noqa: E402

COCO_IMAGES = 123_287  # COCO 2014 train + val images
COCO_CAPTIONS = 414_113  # COCO 2014 train captions
SMALL = dict(images=256, captions=1024, pil_images=64, cache_batch=32, workers=2, batch_size=256, decode_images=256,
             decode_batch=256, seed_batch=8, seed_steps=2)  # --small: a minute or two on a CPU
BASE_BATCH, BASE_LR = 128, 1e-3  # TrainConfig's defaults, which the recipe scales from
IMAGE_SIZES = ((640, 480),) * 6 + ((480, 640), (640, 427), (500, 375))  # COCO is mostly 640 wide, landscape
JPEG_QUALITY, NOISE = 92, 14  # ~150 KB per 640x480 file, about COCO's mean


# ---------------------------------------------------------------------------------------------------
# The synthetic workload
# ---------------------------------------------------------------------------------------------------
def synthetic_jpeg(rng, width, height, path):
    """A photo-like JPEG: smooth colour fields, a few ellipses and sensor-like noise."""
    low = rng.random((height // 16 + 1, width // 16 + 1, 3)) * 255
    img = Image.fromarray(low.astype(np.uint8)).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.ellipse([x, y, x + int(rng.integers(20, 200)), y + int(rng.integers(20, 200))],
                     fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, NOISE, (height, width, 3))  # (H, W, 3)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=JPEG_QUALITY)


def make_images(work_dir, n_images, pool, seed=0):
    """`pool` distinct JPEGs in work_dir/pool, linked under n_images names in work_dir/images; reused if there."""
    rng = np.random.default_rng(seed)
    pool_dir, image_dir = Path(work_dir) / "pool", Path(work_dir) / "images"
    pool_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    sources = [pool_dir / f"{i:03d}.jpg" for i in range(pool)]
    for i, path in enumerate(sources):
        if not path.exists():
            synthetic_jpeg(rng, *IMAGE_SIZES[i % len(IMAGE_SIZES)], path)
    files = [image_dir / f"{i + 1:012d}.jpg" for i in range(n_images)]
    for i, path in enumerate(files):
        if not path.exists():
            try:
                os.link(sources[i % pool], path)
            except OSError:  # a file system without hard links
                path.symlink_to(sources[i % pool].resolve())
    return files, sources


def make_captions(n_captions, n_images, vocab_size, seed=0):
    """Token rows (C, L) framed by <start>=0 and <end>=1, lengths (C,), caption_image (C,): COCO-like lengths
    (10.5 words on average, 6 to 30) over words 3..vocab_size-1, about 3.4 captions per image."""
    rng = np.random.default_rng(seed)
    words = np.clip(np.rint(rng.gamma(9.0, 10.5 / 9.0, n_captions)), 6, 30).astype(np.int64)
    lengths = words + 2
    tokens = np.full((n_captions, lengths.max()), 1, dtype=np.int64)
    tokens[:, 0] = 0
    body = rng.integers(3, vocab_size, (n_captions, lengths.max()))
    inside = np.arange(lengths.max())[None, :] < (lengths[:, None] - 1)
    tokens = np.where(inside & (np.arange(lengths.max()) > 0), body, tokens)
    return tokens, lengths, rng.permutation(np.arange(n_captions) % n_images)


def seed_dataset(work_dir, sources, vocab, captions_per_image=5, seed=0):
    """A COCO caption file over the pool images, as a CocoCaptionDataset for the seed loop."""
    rng = np.random.default_rng(seed)
    words = vocab.idx2word[3:]
    images = [{"id": i + 1, "file_name": p.name} for i, p in enumerate(sources)]
    anns = [{"id": len(images) * k + i + 1, "image_id": i + 1,
             "caption": " ".join(words[w] for w in rng.integers(0, len(words), int(rng.integers(8, 14))))}
            for k in range(captions_per_image) for i in range(len(images))]
    path = Path(work_dir) / "seed_captions.json"
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return CocoCaptionDataset(sources[0].parent, path, vocab)


# ---------------------------------------------------------------------------------------------------
# The measurements
# ---------------------------------------------------------------------------------------------------
def bench_cache(encoder, files, args, device):
    """Images per second of the feature cache build, torch decoding and PIL decoding; the features."""
    warm = files[: args.cache_batch]
    compute_features(encoder, warm, args.image_size, device, args.cache_batch, args.workers, "warm-up", "torch")
    sync(device)
    t0 = time.perf_counter()
    features, ok, failures = compute_features(encoder, files, args.image_size, device, args.cache_batch,
                                              args.workers, "cache (torch decode)", "torch")
    sync(device)
    torch_s = time.perf_counter() - t0
    few = files[: args.pil_images]
    t0 = time.perf_counter()
    pil, pil_ok, _ = compute_features(encoder, few, args.image_size, device, args.cache_batch, args.workers,
                                      "cache (PIL)", "pil")
    sync(device)
    pil_s = time.perf_counter() - t0
    if failures or not bool(ok.all()) or not bool(pil_ok.all()):
        raise RuntimeError(f"synthetic images failed to decode: {failures}")
    cosine = torch.nn.functional.cosine_similarity(features[: len(few)].float(), pil.float(), dim=1)  # (n,)
    return features, {"torch_decode_images": len(files), "torch_decode_img_s": len(files) / torch_s,
                      "pil_images": len(few), "pil_img_s": len(few) / pil_s,
                      "speedup": (len(files) / torch_s) / (len(few) / pil_s),
                      "features_min_cosine_torch_vs_pil": float(cosine.min())}


def bench_epoch(encoder, features, args, cfg, vocab, device):
    """One epoch of train.train_one_epoch over the synthetic captions, from the cached features on device."""
    tokens, lengths, owner = make_captions(args.captions, len(features), len(vocab), args.seed)
    as_tensor = lambda a: torch.from_numpy(a).to(device)
    _, decoder = build_model(cfg.model_args(vocab))
    model = Captioner(encoder, decoder).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    full = Split(None, as_tensor(tokens), as_tensor(lengths), as_tensor(owner), features.to(device),
                 np.arange(len(tokens)))
    warm = Split(None, full.tokens, full.lengths, full.caption_image, full.features,
                 np.arange(min(len(tokens), cfg.batch_size)))
    state = {"step": 0, "best": -float("inf")}
    for split in (warm, full):  # the first pass warms up kernels (cuDNN LSTM plans for each length)
        sampler = LengthBatchSampler(lengths[split.usable], cfg.batch_size, seed=cfg.seed)
        sync(device)
        t0 = time.perf_counter()
        loss, _ = train_one_epoch(model, optimizer, split, sampler, cfg, 0, state, device, rank=0)
        sync(device)
    seconds = time.perf_counter() - t0
    return {"captions": len(tokens), "batch_size": cfg.batch_size, "lr": cfg.lr, "steps": len(sampler),
            "seconds": seconds, "captions_per_s": len(tokens) / seconds, "loss": loss}


def bench_captioning(encoder, features, vocab, args, device):
    """Images per second of greedy and beam-3 captions from cached features (model.caption_batch)."""
    decoder = make_decoder(len(vocab), device)  # random weights, <end> pushed down: every caption --max-len words
    n = min(args.decode_images, len(features))
    feats = features[:n].to(device)

    def run(beam):
        def go():
            for start in range(0, n, args.decode_batch):
                caption_batch(encoder, decoder, vocab, features=feats[start:start + args.decode_batch], beam=beam,
                              max_len=args.max_len)
        return go

    return {"images": n, "max_len": args.max_len, "batch_size": args.decode_batch,
            "greedy_img_s": n / timed(run(1), device), "beam3_img_s": n / timed(run(3), device)}


def bench_seed(cfg, dataset, args, device):
    """Images per second of the seed's training loop (one image per caption): bench/train_speed.py's seed_loop,
    with the batches moved to `device`."""
    model, optimizer = make_model(cfg, dataset.vocab)  # fp32, the CNN in the step, as the seed trained
    model.to(device).train()
    dataset.transform = get_transform(train=True, image_size=cfg.image_size, hflip=False)
    rng = np.random.default_rng(cfg.seed)
    sampler = SubsetRandomSampler([0])
    loader = DataLoader(dataset, batch_size=args.seed_batch, sampler=sampler, num_workers=0)
    n, t0 = 0, None
    for i in range(args.seed_steps + 1):  # one warm-up step
        if i == 1:
            sync(device)
            t0, n = time.perf_counter(), 0
        sampler.indices = seed_train_indices(dataset.lengths, args.seed_batch, rng)
        images, captions = next(iter(loader))  # a new iterator every step, as in the seed
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        step(model, optimizer, images, captions.to(device), from_features=False)
        n += len(captions)
    sync(device)
    return {"batch_size": args.seed_batch, "steps": args.seed_steps, "img_s": n / (time.perf_counter() - t0)}


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} torch threads"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--device", default="auto", help="cuda, cpu, or auto (default: auto)")
    add("--images", type=int, default=COCO_IMAGES, help="images in the feature cache (default: %(default)s)")
    add("--captions", type=int, default=COCO_CAPTIONS, help="captions in the epoch (default: %(default)s)")
    add("--pool", type=int, default=64, help="distinct JPEGs behind the image names (default: %(default)s)")
    add("--pil-images", type=int, default=4096, help="images for the PIL cache build (default: %(default)s)")
    add("--backbone", default="resnet50", help="torchvision CNN (default: %(default)s)")
    add("--image-size", type=int, default=224, help="CNN input pixels (default: %(default)s)")
    add("--cache-batch", type=int, default=256, help="images per CNN batch in the cache build (default: %(default)s)")
    add("--workers", type=int, default=8, help="reader threads (torch) / loader processes (PIL) (default: %(default)s)")
    add("--batch-size", type=int, default=2048, help="captions per training step (default: %(default)s)")
    add("--lr", type=float, default=0.0, help="Adam lr; 0: 1e-3 * sqrt(batch / 128), the recipe (default: %(default)s)")
    add("--vocab", type=int, default=COCO_VOCAB, help="vocabulary size, special tokens included (default: %(default)s)")
    add("--decode-images", type=int, default=16384, help="images captioned greedy and beam 3 (default: %(default)s)")
    add("--decode-batch", type=int, default=1024, help="images per captioning batch (default: %(default)s)")
    add("--max-len", type=int, default=20, help="words per caption (default: %(default)s)")
    add("--seed-batch", type=int, default=128, help="batch of the seed loop (default: %(default)s)")
    add("--seed-steps", type=int, default=8, help="timed steps of the seed loop (default: %(default)s)")
    add("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add("--threads", type=int, default=0, help="torch CPU threads; 0 leaves torch's default (default: %(default)s)")
    add("--work-dir", default="", help="where the images go; empty: a temporary folder, deleted after")
    add("--json", default="outputs/bench-gpu.json", help="results file (default: %(default)s)")
    add("--small", action="store_true", help="a quick run; flags given as well still win: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in SMALL.items()))
    args = parser.parse_args(argv)
    if args.small:
        parser.set_defaults(**SMALL)
        args = parser.parse_args(argv)
    args.pil_images = min(args.pil_images, args.images)
    args.pool = min(args.pool, args.images)
    args.lr = args.lr or BASE_LR * math.sqrt(args.batch_size / BASE_BATCH)
    return args


def print_table(r):
    c, e, d, s = r["cache_build"], r["epoch"], r["captioning"], r["seed_loop"]
    words = f"{d['images']:,} images, {d['max_len']} words"
    rows = [("cache build, torch decode", f"{c['torch_decode_img_s']:,.0f} img/s",
             f"{c['torch_decode_images']:,} images"),
            ("cache build, PIL loader", f"{c['pil_img_s']:,.0f} img/s", f"{c['pil_images']:,} images"),
            ("epoch on the cache", f"{e['captions_per_s']:,.0f} captions/s",
             f"{e['seconds']:.1f} s for {e['captions']:,} captions, batch {e['batch_size']}"),
            ("greedy from features", f"{d['greedy_img_s']:,.0f} img/s", words),
            ("beam 3 from features", f"{d['beam3_img_s']:,.0f} img/s", words),
            ("seed loop (CNN every batch)", f"{s['img_s']:,.0f} img/s", f"batch {s['batch_size']}, 1 loader process")]
    print(f"\n{r['device']} (torch {r['torch']}); {r['workload']['backbone']} {r['workload']['weights']} weights at "
          f"{r['workload']['image_size']} px")
    for name, rate, note in rows:
        print(f"  {name:<30}{rate:>20}   {note}")
    t = r["epoch_time"]
    print(f"  one {e['captions']:,}-caption epoch: seed loop {t['seed_s']:,.0f} s; this repository "
          f"{t['first_s']:,.1f} s with the cache build ({t['seed_vs_first']:,.0f}x), {t['later_s']:,.1f} s after "
          f"({t['seed_vs_later']:,.0f}x)")
    print(f"  features, torch vs PIL decoding: min cosine similarity {c['features_min_cosine_torch_vs_pil']:.7f}"
          f" (1 - it: {1 - c['features_min_cosine_torch_vs_pil']:.1e})")


def run(args, work_dir):
    device = get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    t0 = time.perf_counter()
    files, sources = make_images(work_dir, args.images, args.pool, args.seed)
    make_s = time.perf_counter() - t0
    weights = resolve_weights(args.backbone, True)
    pretrained = weights is not None and weights_path(weights).is_file()
    vocab = Vocabulary([f"w{i}" for i in range(args.vocab - 3)])
    cfg = TrainConfig(**{**PRESETS["coco"], "backbone": args.backbone, "image_size": args.image_size,
                         "pretrained": pretrained, "batch_size": args.batch_size, "lr": args.lr, "epochs": 1,
                         "log_every": 10 ** 9, "seed": args.seed, "device": str(device)})
    encoder, _ = build_model(cfg.model_args(vocab))
    encoder.to(device).to(memory_format=torch.channels_last)
    features, cache = bench_cache(encoder, files, args, device)
    epoch = bench_epoch(encoder, features, args, cfg, vocab, device)
    captioning = bench_captioning(encoder, features, vocab, args, device)
    seed_cfg = TrainConfig(**{**cfg.__dict__, "batch_size": args.seed_batch})
    seed = bench_seed(seed_cfg, seed_dataset(work_dir, sources, vocab, seed=args.seed), args, device)
    seed_s = args.captions / seed["img_s"]  # every caption brings its image through the CNN
    first_s = args.images / cache["torch_decode_img_s"] + epoch["seconds"]
    mean_kb = sum(p.stat().st_size for p in sources) / len(sources) / 1e3
    return {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
            "workload": {"images": args.images, "captions": args.captions, "pool": len(sources),
                         "jpeg_kb_mean": mean_kb, "image_size": args.image_size, "backbone": args.backbone,
                         "weights": weights.name if pretrained else "random", "make_s": make_s,
                         "vocab": len(vocab), "small": args.small},
            "cache_build": cache, "epoch": epoch, "captioning": captioning, "seed_loop": seed,
            "epoch_time": {"seed_s": seed_s, "first_s": first_s, "later_s": epoch["seconds"],
                           "seed_vs_first": seed_s / first_s, "seed_vs_later": seed_s / epoch["seconds"]}}


def main(argv=None):
    args = parse_args(argv)
    if args.work_dir:
        results = run(args, Path(args.work_dir))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
            results = run(args, Path(tmp))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    print_table(results)
    print(f"  written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
