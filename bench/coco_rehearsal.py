"""COCO at full size, rehearsed on a stand-in: every stage of the user's path timed, with its peak memory.

    python bench/coco_rehearsal.py --root /work/coco-rehearsal    # makes the stand-in (~10 min), then the stages
    python bench/coco_rehearsal.py --quick --root /tmp/rehearsal   # 1/500 of the size: the same code, seconds
    python bench/coco_rehearsal.py --root R --stages vocab,dataset  # some stages only (the stand-in is reused)

The stand-in is COCO 2017 in its own layout and annotation format, at full size, in a folder outside the
repository: annotations/captions_train2017.json (118,287 images, ~591,753 captions) and captions_val2017.json
(5,000 images, 25,014 captions), train2017/ and val2017/ with one small JPEG per image (64x64 smooth colour
fields and a shape: the CNN's speed does not depend on what it sees), and karpathy/dataset_coco.json (Karpathy's
113,287 / 5,000 / 5,000 split, restval included, over train2014/ and val2014/ folders of hard links).
The captions are COCO's own: the 25,014 real val2017 captions of coco-mini (captions_val2017_all5000.json),
recycled over the training images in a fresh random order each round, each round in its own capitalisation
(which words start with a capital): so the lengths and the vocabulary are COCO's, and nearly every caption text
is distinct, as in COCO, which the tokenizer's cache of distinct texts must not be spared.

Each stage runs in its own process, started by this script with the repository's own entry points (train.py,
evaluate.py, or the library functions they call), so its wall time and peak resident memory (ru_maxrss) are
its own. A stage that cannot run at full size on a CPU in minutes (the CNN over 123,287 images, a whole
cross-entropy or self-critical epoch) is measured on a sample and projected; the table says which.
The CNN is ResNet-50 with random weights (no ImageNet weights needed; speed does not depend on them), and the
full-size feature cache is written by the repository's cache code with random features in place of the
CNN's output (the CNN's speed is measured on a sample): its key, file layout, size and reload are real.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SOURCE_CAPTIONS = REPO.parent / "shared" / "data" / "coco-mini" / "annotations" / "captions_val2017_all5000.json"
FULL = dict(train_images=118_287, train_captions=591_753, val_images=5_000,
            karpathy=dict(train=82_783, restval=30_504, val=5_000, test=5_000))
QUICK_SHARE = 500  # --quick: every count divided by this
IMAGE_PIXELS = 64  # the stand-in's JPEGs are IMAGE_PIXELS x IMAGE_PIXELS
MAX_COCO_ID = 581_929  # COCO 2017's largest training image id: ids are drawn below it, sparse as COCO's
CAPITALISED_WORDS = 5  # a round's capitalisation pattern covers a caption's first 5 words: 32 patterns


# ---------------------------------------------------------------------------------------------------
# The stand-in
# ---------------------------------------------------------------------------------------------------
def sizes(quick):
    """The counts to lay out: COCO's, or 1/QUICK_SHARE of them (at least a few of each)."""
    if not quick:
        return FULL
    cut = lambda n: max(4, n // QUICK_SHARE)
    return dict(train_images=cut(FULL["train_images"]), train_captions=cut(FULL["train_captions"]),
                val_images=cut(FULL["val_images"]), karpathy={k: cut(v) for k, v in FULL["karpathy"].items()})


def recapitalise(caption, pattern):
    """The caption with word i capitalised where bit i of `pattern` is set, lower case elsewhere: the same
    words for the tokenizer (it lower-cases), a different text for every pattern."""
    words = caption.strip().split()
    return " ".join(w.capitalize() if i < CAPITALISED_WORDS and pattern >> i & 1 else w.lower()
                    for i, w in enumerate(words))


def recycled_captions(pool, count, rng):
    """`count` captions drawn from `pool`: a fresh permutation of the pool per round, each round its own
    capitalisation pattern, so the same texts rarely meet again and most results are distinct strings."""
    out, round_ = [], 0
    while len(out) < count:
        pattern = round_ % (1 << CAPITALISED_WORDS)
        out.extend(recapitalise(pool[i], pattern) for i in rng.permutation(len(pool)))
        round_ += 1
    return out[:count]


def captions_per_image(n_images, n_captions, rng):
    """How many captions each image gets: as in COCO, 5 each and the rest (a sixth, sometimes a seventh) given
    to random images."""
    counts = np.full(n_images, n_captions // n_images, dtype=np.int64)  # (n_images,)
    np.add.at(counts, rng.choice(n_images, size=n_captions - counts.sum()), 1)
    return counts


def coco_image_entry(image_id):
    """An images[] entry in COCO 2017's own fields."""
    name = f"{image_id:012d}.jpg"
    return {"license": 1 + image_id % 8, "file_name": name, "coco_url": f"http://images.cocodataset.org/x/{name}",
            "height": IMAGE_PIXELS, "width": IMAGE_PIXELS, "date_captured": "2013-11-14 17:02:52",
            "flickr_url": f"http://farm1.staticflickr.com/{name}", "id": image_id}


def write_coco_json(path, source, images, annotations):
    """A COCO caption file: the source file's info and licenses, these images and annotations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"info": source["info"], "licenses": source["licenses"], "images": images, "annotations": annotations}
    path.write_text(json.dumps(data))


def make_annotations(root, n, rng):
    """captions_train2017.json and captions_val2017.json; returns {split: [image ids]} and the captions of each
    image (for Karpathy's file)."""
    source = json.loads(SOURCE_CAPTIONS.read_text(encoding="utf-8"))
    pool = [a["caption"] for a in source["annotations"]]
    val_images = sorted(source["images"], key=lambda im: im["id"])[:n["val_images"]]
    val_ids = [im["id"] for im in val_images]
    by_image = {i: [] for i in val_ids}
    for a in source["annotations"]:  # val: COCO's own captions of the real val images (their own ids)
        if a["image_id"] in by_image:
            by_image[a["image_id"]].append(a["caption"])
    val_anns = [{"image_id": a["image_id"], "id": a["id"], "caption": a["caption"]}
                for a in source["annotations"] if a["image_id"] in by_image]
    write_coco_json(root / "annotations" / "captions_val2017.json", source,
                    [coco_image_entry(i) for i in val_ids], val_anns)
    taken = set(val_ids)
    train_ids = sorted(int(i) for i in rng.choice(np.setdiff1d(np.arange(1, MAX_COCO_ID + 1), list(taken)),
                                                  n["train_images"], replace=False))
    counts = captions_per_image(len(train_ids), n["train_captions"], rng)
    texts = iter(recycled_captions(pool, n["train_captions"], rng))
    next_id = max(a["id"] for a in source["annotations"]) + 1
    train_anns = []
    for image_id, k in zip(train_ids, counts):
        by_image[image_id] = [next(texts) for _ in range(k)]
        for text in by_image[image_id]:
            train_anns.append({"image_id": image_id, "id": next_id, "caption": text})
            next_id += 1
    write_coco_json(root / "annotations" / "captions_train2017.json", source,
                    [coco_image_entry(i) for i in train_ids], train_anns)
    return {"train": train_ids, "val": val_ids}, by_image


def stand_in_image(seed, path):
    """A small JPEG: a smooth colour field and one filled shape, different for every seed."""
    rng = np.random.default_rng(seed)
    low = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(low).resize((IMAGE_PIXELS, IMAGE_PIXELS), Image.BILINEAR)
    x, y = (int(v) for v in rng.integers(0, IMAGE_PIXELS // 2, 2))
    ImageDraw.Draw(img).ellipse([x, y, x + IMAGE_PIXELS // 3, y + IMAGE_PIXELS // 3],
                                fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img.save(path, quality=75)


def write_images(folder, image_ids):
    """One stand-in JPEG per image id (a worker process's share)."""
    for image_id in image_ids:
        stand_in_image(image_id, folder / f"{image_id:012d}.jpg")
    return len(image_ids)


def make_images(root, ids, workers):
    """train2017/ and val2017/ with a JPEG per image, written by `workers` processes."""
    if workers <= 1:  # in this process (tests)
        return sum(write_images(_folder(root, split), image_ids) for split, image_ids in ids.items())
    jobs = []
    with ProcessPoolExecutor(workers) as pool:
        for split, image_ids in ids.items():
            folder = _folder(root, split)
            for chunk in np.array_split(np.array(image_ids), max(1, len(image_ids) // 5000)):
                jobs.append(pool.submit(write_images, folder, chunk.tolist()))
        return sum(j.result() for j in jobs)


def _folder(root, split):
    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def karpathy_entry(image_id, folder, split, captions, imgid, sentid):
    """One images[] entry of Karpathy's dataset_coco.json, with its tokens as Karpathy wrote them."""
    sentences = [{"tokens": re.findall(r"[a-z0-9]+", c.lower()), "raw": c, "imgid": imgid, "sentid": sentid + k}
                 for k, c in enumerate(captions)]
    return {"filepath": folder, "sentids": [s["sentid"] for s in sentences], "filename":
            f"COCO_{folder}_{image_id:012d}.jpg", "imgid": imgid, "split": split, "sentences": sentences,
            "cocoid": image_id}


def make_karpathy(root, ids, by_image, n):
    """karpathy/dataset_coco.json over karpathy/train2014 and val2014 (hard links to the 2017 files): the first
    images are COCO 2014's train, the rest its val, cut into restval, val and test as Karpathy's split is."""
    out = root / "karpathy"
    k = n["karpathy"]
    order = [(i, "train") for i in ids["train"]] + [(i, "val") for i in ids["val"]]
    plan = ["train"] * k["train"] + ["restval"] * k["restval"] + ["val"] * k["val"] + ["test"] * k["test"]
    entries, sentid = [], 0
    for imgid, ((image_id, split2017), split) in enumerate(zip(order, plan)):
        folder = "train2014" if split == "train" else "val2014"
        entry = karpathy_entry(image_id, folder, split, by_image[image_id], imgid, sentid)
        sentid += len(entry["sentences"])
        link = out / folder / entry["filename"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.link(root / f"{split2017}2017" / f"{image_id:012d}.jpg", link)
        entries.append(entry)
    (out / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return len(entries)


def make_stand_in(root, quick, workers=2, seed=0):
    """Lay out the stand-in under root (skipped when its marker file says it is complete)."""
    marker = root / "stand_in.json"
    if marker.exists():
        return json.loads(marker.read_text())
    if not SOURCE_CAPTIONS.is_file():
        raise FileNotFoundError(f"{SOURCE_CAPTIONS} is missing: the stand-in recycles COCO's real val2017 captions")
    n, rng, t0 = sizes(quick), np.random.default_rng(seed), time.time()
    ids, by_image = make_annotations(root, n, rng)
    images = make_images(root, ids, workers)
    karpathy = make_karpathy(root, ids, by_image, n)
    record = {"quick": quick, "images": images, "karpathy_images": karpathy, "seconds": round(time.time() - t0, 1),
              "disk_mb": round(disk_bytes(root) / 1e6, 1)}
    marker.write_text(json.dumps(record))
    return record


def disk_bytes(folder):
    """Bytes the folder's files take on disk (allocated blocks, each hard-linked file once)."""
    seen, total = set(), 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total


# ---------------------------------------------------------------------------------------------------
# The stages: each runs in a process of its own (run_stage) and returns its rows
# ---------------------------------------------------------------------------------------------------
# A row: what was timed, its seconds, how many items it handled, and how many a full COCO run handles (the
# projection scales the time by full / items). FULL_RUN: counts of one complete run of the coco preset.
FULL_RUN = dict(images=123_287, train_images=118_287, train_captions=591_753, val_images=5_000)
FEATURE_SAMPLE = 96  # images the CNN's speed is measured on (--quick: 8)
XE_STEPS = 60  # cross-entropy steps of batch 128 timed (--quick: 3)
SCST_STEPS = 12  # self-critical steps timed (--quick: 2)


def row(name, seconds, items, unit, full=None):
    """One line of the table; `full`: the items of a complete run, for the projection (None: as measured).
    seconds: wall seconds, with the CPU seconds this process spent (.cpu) when timed() measured them."""
    cpu = getattr(seconds, "cpu", None)
    return {"stage": name, "seconds": round(seconds, 2), "cpu_s": None if cpu is None else round(cpu, 2),
            "items": items, "unit": unit, "full": full or items}


class Seconds(float):
    """Wall seconds that also carry the CPU seconds of the same span (.cpu): on busy cores only the CPU
    seconds say what the work costs."""

    def __new__(cls, wall, cpu):
        self = super().__new__(cls, wall)
        self.cpu = cpu
        return self


def timed(fn, *args, **kwargs):
    """(fn's result, Seconds of wall and this process's CPU time)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, Seconds(time.perf_counter() - t0, time.process_time() - c0)


def rehearsal_config(args, **overrides):
    """The coco preset on the stand-in, as a user would run it on a CPU; ResNet-50 with random weights."""
    from train import make_config
    return make_config("coco", data_root=str(args.root), pretrained=False, cache_dir=str(args.work / "cache"),
                       device="cpu", num_workers=2, out_dir=str(args.work / "runs"), **overrides)


def vocab_of(args):
    from data_loader import default_vocab_file, train_captions_file
    from vocabulary import load_or_build_vocab
    cfg = rehearsal_config(args)
    return load_or_build_vocab([train_captions_file(cfg.data_root)], cfg.vocab_threshold,
                               default_vocab_file(cfg.data_root, cfg.vocab_threshold, cfg.cache_dir),
                               cache_dir=cfg.cache_dir)


def stage_annotations(args):
    """The caption files read and indexed (data_loader.load_coco: json, checks, pycocotools' index)."""
    from data_loader import load_coco
    rows = []
    for split in ("train", "val"):
        coco, s = timed(load_coco, args.root / "annotations" / f"captions_{split}2017.json")
        rows.append(row(f"read + index captions_{split}2017.json", s, len(coco.anns), "captions"))
    return rows


def stage_vocab(args):
    """The vocabulary from cold: every training caption tokenized (then cached), the words counted."""
    for stale in (args.work / "cache").glob("*"):  # cold: no token cache, no vocabulary file
        if stale.name.startswith(("tokens-", "vocab-")):
            stale.unlink()
    vocab, s = timed(vocab_of, args)
    again, s2 = timed(vocab_of, args)
    return [row(f"vocabulary from cold ({len(vocab):,} words)", s, FULL_RUN["train_captions"] // args.share,
                "captions"),
            row("vocabulary again (file reused)", s2, FULL_RUN["train_captions"] // args.share, "captions")]


def stage_dataset(args):
    """The datasets a training run builds: every image header checked, every caption encoded."""
    from data_loader import CocoCaptionDataset, find_split
    vocab, rows = vocab_of(args), []
    for split in ("train", "val"):
        image_dir, ann = find_split(args.root, split)
        ds, s = timed(CocoCaptionDataset, image_dir, ann, vocab, cache_dir=args.work / "cache")
        rows.append(row(f"dataset index, {split} (headers + captions)", s, len(ds.image_files), "images"))
    return rows


def build_encoder(cfg, vocab):
    """The encoder a training run builds for cfg (seeded as train.train seeds it, so the weights' digest and
    therefore the feature cache's name are the run's)."""
    from model import build_model, set_seed
    set_seed(cfg.seed)
    return build_model(cfg.model_args(vocab))[0]


def stage_features(args):
    """The CNN over a sample of images (ResNet-50, 224 px, PIL loader with 2 processes), projected."""
    import torch
    from data_loader import find_split
    from features import compute_features
    torch.set_num_threads(args.threads)
    cfg = rehearsal_config(args)
    encoder = build_encoder(cfg, vocab_of(args))
    image_dir = find_split(args.root, "train")[0]
    files = sorted(image_dir.glob("*.jpg"))[:FEATURE_SAMPLE // (12 if args.quick else 1)]
    (_, ok, _), s = timed(compute_features, encoder, files, cfg.image_size, "cpu", num_workers=2)
    return [row(f"CNN features, sample ({cfg.backbone}, {cfg.image_size} px)", s, int(ok.sum()), "images",
                FULL_RUN["images"])]


def stage_cache(args):
    """Both splits' feature caches at full size through features.cached_features (key over every file, file
    name, save, reload), with random features in place of the CNN's (its speed: the features stage)."""
    import torch
    import features
    from data_loader import CocoCaptionDataset, find_split

    def random_features(encoder, files, image_size, device, **kwargs):  # what compute_features returns
        g = torch.Generator().manual_seed(len(files))
        shape = (len(files), *encoder.feature_shape(image_size))
        return torch.randn(shape, generator=g).half(), torch.ones(len(files), dtype=torch.bool), {}

    features.compute_features = random_features
    cfg = rehearsal_config(args)
    vocab = vocab_of(args)
    encoder = build_encoder(cfg, vocab)
    rows = []
    for split in ("train", "val"):
        image_dir, ann = find_split(args.root, split)
        files = CocoCaptionDataset(image_dir, ann, vocab, cache_dir=cfg.cache_dir).image_files
        for old in (args.work / "cache").glob(f"{cfg.backbone}-*.pt"):
            if split == "train":
                old.unlink()  # written afresh: the first call below builds, the second reloads
        _, s = timed(features.cached_features, encoder, files, cfg.model_args(vocab), cfg.cache_dir, "cpu")
        (f, _, _), s2 = timed(features.cached_features, encoder, files, cfg.model_args(vocab), cfg.cache_dir, "cpu")
        rows.append(row(f"feature cache {split}: key + write ({f.numel() * 2 / 1e6:,.0f} MB)", s, len(files),
                        "images"))
        rows.append(row(f"feature cache {split}: key + reload", s2, len(files), "images"))
    return rows


class FirstBatches:
    """A LengthBatchSampler that stops after `steps` batches: a measured fraction of an epoch."""

    def __init__(self, sampler, steps):
        self.sampler, self.steps, self.lengths = sampler, steps, sampler.lengths

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def batches(self):
        return self.sampler.batches()[:self.steps]


def stage_train(args):
    """train.prepare (vocabulary, datasets, both caches, feature statistics), a fraction of a cross-entropy epoch
    at batch 128, then the per-epoch validation on every val image (loss, greedy captions, BLEU, CIDEr)."""
    import torch
    import train
    from data_loader import LengthBatchSampler
    torch.set_num_threads(args.threads)
    cfg = rehearsal_config(args)
    device = torch.device("cpu")
    train.set_seed(cfg.seed)
    (vocab, encoder, decoder, train_split, val_split), s_prep = timed(train.prepare, cfg, None, device)
    model = train.Captioner(encoder, decoder)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    sampler = FirstBatches(LengthBatchSampler(train_split.dataset.lengths[train_split.usable], cfg.batch_size),
                           XE_STEPS // (40 if args.quick else 1))
    state = {"step": 0, "best": None}
    (_, _), s_epoch = timed(train.train_one_epoch, model, optimizer, train_split, sampler, cfg, 0, state, device, 0)
    captions = sum(len(b) for b in sampler.batches())
    _, s_val = timed(train.validate, model, val_split, cfg, device)
    return [row("train.prepare: vocabulary, datasets, caches, feature stats", s_prep, len(train_split.usable),
                "captions"),
            row(f"cross-entropy steps, batch {cfg.batch_size} (fraction of an epoch)", s_epoch, captions, "captions",
                FULL_RUN["train_captions"]),
            row("validation: loss + greedy captions + BLEU/CIDEr, all val", s_val,
                len(val_split.dataset.image_files), "images")]


def run_cli(argv):
    """A CLI of the repository in this process's interpreter; its output goes to the log, a failure stops."""
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()[-500:]}")
    return done.stdout


def stage_checkpoint(args):
    """A checkpoint for evaluate.py: `train.py --preset coco` for 1 epoch on the val split's captions (a whole
    epoch on the training split is projected by the train stage), as a user runs it."""
    run = args.work / "runs" / "rehearsal"
    shutil.rmtree(run, ignore_errors=True)
    _, s = timed(run_cli, ["train.py", "--preset", "coco", "--data-root", str(args.root), "--no-pretrained",
                           "--train-split", "val", "--epochs", "1", "--val-images", "200", "--device", "cpu",
                           "--num-workers", "2", "--cache-dir", str(args.work / "cache"),
                           "--out-dir", str(args.work / "runs"), "--run-name", "rehearsal"])
    return [row("train.py, 1 epoch on val's captions (a checkpoint)", s, FULL_RUN["val_images"] * 5 // args.share,
                "captions")]


def stage_evaluate(args, beam):
    out = run_cli(["evaluate.py", "--checkpoint", str(args.work / "runs" / "rehearsal" / "best.pt"), "--split",
                   "val", "--beam", str(beam), "--device", "cpu"])
    return out


def stage_greedy(args):
    """evaluate.py on every val image, greedy: features from the cache, captions, all metrics, diagnostics."""
    _, s = timed(stage_evaluate, args, 1)
    return [row("evaluate.py --split val (greedy, METEOR, diagnostics)", s, FULL_RUN["val_images"] // args.share,
                "images")]


def stage_beam(args):
    _, s = timed(stage_evaluate, args, 3)
    return [row("evaluate.py --split val --beam 3", s, FULL_RUN["val_images"] // args.share, "images")]


def stage_scst(args):
    """The self-critical reward over every training reference (scst.CiderD's build, as train.py starts the
    phase), then a few self-critical steps timed from random features."""
    import resource
    import numpy as np
    import torch
    import scst
    from data_loader import CocoCaptionDataset, find_split
    from model import build_model
    torch.set_num_threads(args.threads)
    cfg = rehearsal_config(args, scst_max_len=16)
    vocab = vocab_of(args)
    ds = CocoCaptionDataset(*find_split(args.root, "train"), vocab, cache_dir=cfg.cache_dir)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    reward, s_build = timed(scst.shared_reward, ds, np.arange(len(ds)), vocab)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - before
    encoder, decoder = build_model(cfg.model_args(vocab))
    params = [p for m in (encoder, decoder) for p in m.parameters() if p.requires_grad]  # the CNN is frozen
    optimizer = torch.optim.Adam(params, lr=cfg.scst_lr)
    per_step = cfg.batch_size // cfg.scst_samples
    n_feat = encoder.feature_shape(cfg.image_size)
    rng = np.random.default_rng(0)

    def steps(n):
        for _ in range(n):
            batch = torch.as_tensor(rng.choice(len(ds.image_files), per_step, replace=False))
            scst.scst_step(encoder, decoder, optimizer, torch.randn(per_step, *n_feat), batch, reward,
                           cfg.scst_samples, cfg.scst_baseline, cfg.scst_max_len, cfg.grad_clip)
        return n * per_step

    images, s_steps = timed(steps, SCST_STEPS // (6 if args.quick else 1))
    return [row(f"scst.CiderD over every training reference (+{grown:.2f} GB)", s_build, len(ds), "captions"),
            row(f"self-critical steps, {cfg.scst_samples} samples, 16 words", s_steps, images,
                "images", FULL_RUN["train_images"])]


def stage_karpathy(args):
    """Karpathy's dataset_coco.json: converted to COCO's format, its vocabulary from cold, its training index."""
    import data_sources
    from data_loader import CocoCaptionDataset, find_split
    from vocabulary import Vocabulary
    os.environ[data_sources.CONVERTED_ENV] = str(args.work / "converted")
    shutil.rmtree(args.work / "converted", ignore_errors=True)
    cache = args.work / "cache-karpathy"
    shutil.rmtree(cache, ignore_errors=True)
    root = args.root / "karpathy" / "dataset_coco.json"
    (image_dir, ann), s_conv = timed(find_split, root, "train")
    vocab, s_vocab = timed(Vocabulary.build, [ann], 5, cache)
    ds, s_index = timed(CocoCaptionDataset, image_dir, ann, vocab, cache_dir=cache)
    splits = {s: len(json.loads(find_split(root, s)[1].read_text())["images"]) for s in ("train", "val", "test")}
    return [row(f"Karpathy: convert dataset_coco.json ({' / '.join(f'{v:,}' for v in splits.values())})", s_conv,
                sum(splits.values()), "images"),
            row(f"Karpathy: vocabulary from cold ({len(vocab):,} words)", s_vocab, len(ds), "captions"),
            row("Karpathy: dataset index, train", s_index, len(ds.image_files), "images")]


def stage_notebooks(args):
    """What 0_Dataset and 3_Inference call on the full files (timed as library calls, not executed
    notebooks): 0_Dataset's index of every split and its tokens of every caption; 3_Inference's image table."""
    from data_loader import find_split, load_coco
    from evaluate import split_image_files
    from vocabulary import tokenize
    splits, s_index = timed(lambda: {s: load_coco(find_split(args.root, s)[1]) for s in ("train", "val")})
    n = sum(len(c.anns) for c in splits.values())
    _, s_tok = timed(lambda: {s: [tokenize(a["caption"]) for a in c.anns.values()] for s, c in splits.items()})
    files, s_files = timed(split_image_files, args.root, "val")
    return [row("0_Dataset: load_coco of every split", s_index, n, "captions"),
            row("0_Dataset: tokens of every caption", s_tok, n, "captions"),
            row("3_Inference: split_image_files(val)", s_files, len(files), "images")]


STAGES = {"annotations": stage_annotations, "vocab": stage_vocab, "dataset": stage_dataset,
          "features": stage_features, "cache": stage_cache, "train": stage_train, "scst": stage_scst,
          "checkpoint": stage_checkpoint, "greedy": stage_greedy, "beam": stage_beam, "karpathy": stage_karpathy,
          "notebooks": stage_notebooks}


# ---------------------------------------------------------------------------------------------------
# Running the stages, the table, the projections
# ---------------------------------------------------------------------------------------------------
RESULT = "REHEARSAL-RESULT "  # the line a stage process prints its rows on


def run_stage(name, args):
    """Run one stage in a child process; its rows with the child's wall time and peak resident memory.

    The peak is the child's ru_maxrss from os.wait4: the largest of the child and the processes it waited for
    (its DataLoader workers), each on its own, not their sum."""
    argv = [sys.executable, __file__, "--stage", name, "--root", str(args.root), "--work", str(args.work),
            "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)  # waited for here: Popen must not wait again
        wall, rss_gb = time.perf_counter() - t0, usage.ru_maxrss / 2**20  # ru_maxrss: KiB on Linux
        out.seek(0)
        err.seek(0)
        results = [line[len(RESULT):] for line in out.read().splitlines() if line.startswith(RESULT)]
        tail = (err.read().strip().splitlines() or ["no output"])[-1]
    if child.returncode or not results:
        return [{"stage": f"{name}: FAILED ({tail[:150]})", "seconds": wall, "items": 0, "unit": "", "full": 0,
                 "wall": wall, "rss_gb": rss_gb}]
    return [{**r, "wall": wall, "rss_gb": rss_gb} for r in json.loads(results[-1])]


def project(r, key="seconds"):
    """Seconds the row's work takes for a complete run (its seconds scaled from its items to `full`).
    key "cpu_s": from its CPU seconds instead, what it costs on one idle core."""
    value = r.get(key)
    return value * r["full"] / r["items"] if r["items"] and value is not None else float("nan")


def table(rows):
    nan = float("nan")
    lines = ["| stage | process wall s | process CPU s | peak RSS GB | timed wall s | timed CPU s | items/s (wall) "
             "| full run: wall s | full run: CPU s |", "| --- |" + " ---: |" * 8]
    for r in rows:
        speed = f"{r['items'] / r['seconds']:,.0f} {r['unit']}/s" if r["items"] and r["seconds"] else ""
        cpu = r.get("cpu_s") if r.get("cpu_s") is not None else nan
        lines.append(f"| {r['stage']} | {r['wall']:.1f} | {r.get('stage_cpu_s', nan):.1f} | {r['rss_gb']:.2f} | "
                     f"{r['seconds']:.1f} | {cpu:.1f} | {speed} | {project(r):,.0f} | {project(r, 'cpu_s'):,.0f} |")
    return "\n".join(lines)


# Figures measured on one H200 (docs/benchmarks.md, "The fast GPU path"): nvJPEG decode, ResNet-50 bf16,
# a decoder step on cached features at batch 2048, batched greedy captioning.
H200 = dict(decode_img_s=9_600, cnn_img_s=15_400, xe_captions_s=200_000, greedy_img_s=14_800)


def by_stage(rows, prefix):
    """The first row whose stage name starts with prefix (None if that stage did not run)."""
    return next((r for r in rows if r["stage"].startswith(prefix) and r["items"]), None)


def projections(rows, epochs, scst_epochs):
    """Seconds of a complete `coco` run (epochs cross-entropy) and `coco-best` run (+ scst_epochs), on this
    CPU and on one GPU, from the measured rows; the parts that no row measured are left out and named."""
    get = lambda prefix: project(by_stage(rows, prefix)) if by_stage(rows, prefix) else None
    once = {"vocabulary": get("vocabulary from cold"), "CNN features, all images": get("CNN features"),
            "prepare (index, caches)": get("train.prepare")}
    per_xe = {"cross-entropy epoch": get("cross-entropy steps"), "validation": get("validation")}
    per_scst = {"self-critical epoch": get("self-critical steps"), "validation": get("validation")}
    final = {"evaluate greedy": get("evaluate.py --split val ("), "evaluate beam 3": get("evaluate.py --split val --")}
    missing = sorted({k for d in (once, per_xe, per_scst, final) for k, v in d.items() if v is None})
    total = lambda d, times=1: sum(v for v in d.values() if v is not None) * times
    cpu = total(once) + total(per_xe, epochs) + total(final)
    # One GPU: the CNN and the decoder at the H200's speeds; the CPU-side stages (vocabulary, index, metrics) as
    # measured here. A self-critical epoch on a GPU is not measured: counted as 5 sampled captions and a
    # teacher-forced pass per image at the greedy and training speeds above (reasoned, not measured).
    metrics = max(0.0, (per_xe["validation"] or 0) - FULL_RUN["val_images"] / 255)  # minus CPU greedy (benchmarks.md)
    gpu_once = (once["vocabulary"] or 0) + (once["prepare (index, caches)"] or 0) + \
        FULL_RUN["images"] / min(H200["decode_img_s"], H200["cnn_img_s"])
    gpu_val = FULL_RUN["val_images"] / H200["greedy_img_s"] + metrics
    gpu_xe = FULL_RUN["train_captions"] / H200["xe_captions_s"] + gpu_val
    gpu_scst = FULL_RUN["train_images"] * 5 * (1 / H200["greedy_img_s"] + 1 / H200["xe_captions_s"]) + gpu_val
    gpu_final = 4 * gpu_val  # greedy, then beam 3 (about 3x greedy's decoding)
    gpu = gpu_once + epochs * gpu_xe + gpu_final
    cpu_scst = total(per_scst, scst_epochs)
    return {"coco_cpu_s": cpu, "coco_best_cpu_s": cpu + cpu_scst, "coco_gpu_s": gpu,
            "coco_best_gpu_s": gpu + scst_epochs * gpu_scst, "not_measured": missing}


def hours(seconds):
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def cpu_name():
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Rehearse the COCO path at full size on a stand-in, stage by stage.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "data" / "coco-rehearsal",
                   help="where the stand-in lives (made if missing); outside git")
    p.add_argument("--work", type=Path, default=None, help="caches, runs and conversions; default ROOT/work")
    p.add_argument("--quick", action="store_true", help=f"1/{QUICK_SHARE} of COCO's size: the same code, seconds")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run, in this order")
    p.add_argument("--threads", type=int, default=2, help="torch threads in the stages that use the CPU")
    p.add_argument("--workers", type=int, default=2, help="processes that write the stand-in's images")
    p.add_argument("--make-only", action="store_true", help="lay out the stand-in and stop")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and projections here")
    p.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = p.parse_args(argv)
    args.work = args.work or args.root / "work"
    args.share = QUICK_SHARE if args.quick else 1
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.stage:  # a child process: one stage, its rows on one line, with the CPU seconds it used
        rows = STAGES[args.stage](args)  # (its own and its finished children's: on busy cores, wall time is not)
        import resource
        used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = sum(u.ru_utime + u.ru_stime for u in used)
        print(RESULT + json.dumps([{**r, "stage_cpu_s": round(cpu, 1)} for r in rows]), flush=True)
        return 0
    unknown = [s for s in args.stages.split(",") if s not in STAGES]
    if unknown:
        print(f"error: unknown stage(s) {unknown}; choose from {list(STAGES)}", file=sys.stderr)
        return 1
    made = make_stand_in(args.root, args.quick, args.workers)
    print(f"stand-in at {args.root}: {made}")
    if args.make_only:
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.stages.split(","):
        rows += run_stage(name, args)
        print(f"{name}: done ({rows[-1]['wall']:.0f} s): {json.dumps(rows[-1])}", flush=True)
        if args.json:  # after every stage, so that a long rehearsal stopped midway keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"stand_in": made, "rows": rows}, indent=1))
    from train import PRESETS
    epochs, scst_epochs = PRESETS["coco"].get("epochs", 3), PRESETS.get("coco-best", {}).get("scst_epochs", 0)
    proj = projections(rows, epochs, scst_epochs)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads; stand-in {made}\n")
    print(table(rows))
    print(f"\ncomplete runs, projected: coco ({epochs} epochs) {hours(proj['coco_cpu_s'])} on this CPU, "
          f"{hours(proj['coco_gpu_s'])} on one GPU (H200 figures); coco-best (+{scst_epochs} self-critical) "
          f"{hours(proj['coco_best_cpu_s'])} on this CPU, {hours(proj['coco_best_gpu_s'])} on one GPU"
          + (f"; not measured, left out: {', '.join(proj['not_measured'])}" if proj["not_measured"] else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"stand_in": made, "rows": rows, "projections": proj}, indent=1))
    return int(any("FAILED" in r["stage"] for r in rows))


if __name__ == "__main__":
    sys.exit(main())
