"""The frozen CNN's features, computed once per image and cached on disk.

    features, ok, failures = cached_features(encoder, files, model_args, "data/cache", device)

With the backbone frozen (the default, as in the seed), training, evaluation and the notebooks never run the
CNN twice on one image: `compute_features` runs it over a list of files, and `cached_features` stores the
result under data/cache/, keyed by everything the features depend on (`cache_key`). Two decoding pipelines
feed the CNN: PIL in DataLoader worker processes (the CPU path), and torchvision's decode_jpeg on the device
(nvJPEG on CUDA) with the resize, crop and normalisation done there too (the GPU path).

`atomic_save` (write a temporary file, then rename) is how caches and checkpoints are written.
"""
import hashlib
import json
import math
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.io import ImageReadMode, decode_jpeg
from tqdm.auto import tqdm

from data_loader import (DATASET_UPRIGHT, MAX_IMAGE_PIXELS, ImageListDataset, ImageLoadError, collate_images,
                         get_transform, jpeg_header, load_image, tensor_eval_transform)
from model import autocast

DECODERS = ("auto", "pil", "torch")


def resolve_decode(decode, device):
    """'torch' or 'pil'. auto: torchvision's decode_jpeg on CUDA (nvJPEG, batched on the GPU); PIL elsewhere,
    where the CNN dominates and PIL worker processes decode beside it (bench/gpu.py: the same speed on a CPU)."""
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}")
    if decode == "auto":
        return "torch" if torch.device(device).type == "cuda" else "pil"
    return decode


@torch.inference_mode()
def compute_features(encoder, files, image_size, device, batch_size=None, num_workers=2, desc="CNN features",
                     decode="auto"):
    """Pooled CNN features of image files with the evaluation transform.

    decode: 'pil' reads and transforms images with PIL in `num_workers` DataLoader processes; 'torch' reads
    bytes in `num_workers` threads, two batches ahead, decodes JPEGs with torchvision on `device` (nvJPEG on
    CUDA) and resizes, crops and normalises there (data_loader.tensor_eval_transform); files it cannot take
    (PNG, CMYK, truncated, ...) go through PIL as before. 'auto': torch on CUDA, pil elsewhere.
    batch_size: images per CNN batch; default 256 on CUDA, 64 elsewhere.
    Returns (features (N, D) float16 on the CPU, or maps (N, C, h, w) for an encoder with local features;
    ok (N,) bool; failures {file name: reason}). Unreadable images get ok=False and zeros; callers skip them
    and say so.

    Memory: the result is written batch by batch into one preallocated CPU tensor (pinned on CUDA), so the
    device holds one batch of images and features at a time, never the whole cache, and the host holds the
    cache once. For COCO's training maps (ResNet-50 at 224 px, batch 256) the peak is the cache on the host
    (23 GB in fp16) and, on the device, the CNN's activations, 154 MB of images and 3 x 51 MB of features (its
    output, the fp16 copy, the block in file order); it was 23 GB on the device, then 23 GB more on the host
    for the final copy. On CUDA each batch's copy is queued with non_blocking=True on the compute stream:
    nothing waits for the GPU until the single synchronize at the end.
    """
    device = torch.device(device)
    decode = resolve_decode(decode, device)
    batch_size = batch_size or (256 if device.type == "cuda" else 64)
    if decode == "torch":
        batches = torch_decoded_batches(files, image_size, device, batch_size, num_workers)
    else:
        dataset = ImageListDataset(files, get_transform(train=False, image_size=image_size), upright=DATASET_UPRIGHT)
        batches = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
    shape = encoder.feature_shape(image_size)  # (D,) pooled, or (C, h, w) for local features
    features = host_buffer((len(files), *shape), device)  # (N, D) or (N, C, h, w) float16, zeros
    ok = torch.zeros(len(files), dtype=torch.bool)
    failures = {}
    was_training = encoder.training
    encoder.eval()
    for images, index, failed in tqdm(batches, desc=desc, unit="batch", leave=False,
                                      total=math.ceil(len(files) / batch_size)):
        failures.update((Path(files[i]).name, reason) for i, reason in failed)
        if images is None:
            continue
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with autocast(device):
            batch = encoder.features(images).half()  # (B, D), or (B, C, h, w) maps
        write_rows(features, index, batch)
        ok[index] = True
    encoder.train(was_training)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the queued copies into `features` have landed
    return features, ok, failures


def host_buffer(shape, device):
    """A float16 CPU tensor of zeros for the whole cache; pinned when the features come from CUDA, so that
    the copies into it can be asynchronous."""
    if torch.device(device).type == "cuda":
        try:
            return torch.zeros(shape, dtype=torch.float16, pin_memory=True)
        except RuntimeError:  # the host cannot lock that much memory: pageable copies still work, synchronously
            pass
    return torch.zeros(shape, dtype=torch.float16)


def write_rows(out, index, rows):
    """out[index] = rows, with `out` on the CPU and `rows` (B, ...) on any device, without waiting for it.

    index (a CPU tensor) may skip rows (failed images) and come in any order. From a device, the rows are first
    put in file order there (rows_in_file_order) and copied as one contiguous block: a scatter into host
    memory would have to wait for the GPU.
    """
    if rows.device.type == "cpu":
        out[index] = rows
        return
    first, block = rows_in_file_order(index, rows)
    # Asynchronous on CUDA only; compute_features synchronises once at the end. Dropping `block` is safe: the
    # caching allocator reuses its memory only for work queued after this copy on the same stream.
    out[first:first + len(block)].copy_(block, non_blocking=rows.device.type == "cuda")


def rows_in_file_order(index, rows):
    """(first, block): rows (B, ...) placed at index - first in a zero block (span, ...) on their own device,
    where first = min(index) and span = max(index) - first + 1; rows of failed images stay zero."""
    first, last = int(index.min()), int(index.max())
    block = torch.zeros(last - first + 1, *rows.shape[1:], dtype=rows.dtype, device=rows.device)  # (span, ...)
    block[(index - first).to(rows.device, non_blocking=True)] = rows
    return first, block


def read_for_decode(path, image_size):
    """Thread-pool work for the torch decoder: ('jpeg', uint8 bytes tensor) for a file it can decode; for
    any other file PIL's result now, ('image', normalised (3, S, S) tensor) or ('failed', reason)."""
    try:
        data = Path(path).read_bytes()
        header = jpeg_header(data)
        if header is not None and header[2] in (1, 3) and 0 < header[0] * header[1] <= MAX_IMAGE_PIXELS:
            return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)  # (bytes,)
    except OSError:
        pass  # missing or unreadable: load_image names the reason
    return pil_eval_item(path, image_size)


def pil_eval_item(path, image_size):
    """('image', get_transform(train=False)(load_image(path))) or ('failed', reason): the PIL fallback."""
    try:
        return "image", get_transform(train=False, image_size=image_size)(load_image(path, DATASET_UPRIGHT))
    except ImageLoadError as e:
        return "failed", e.reason


def decode_jpegs(data, device):
    """decode_jpeg on a list of byte tensors, batched; if the batch fails, one by one. None where it fails."""
    if not data:
        return []
    try:
        return decode_jpeg(data, device=device, mode=ImageReadMode.RGB)
    except torch.cuda.OutOfMemoryError:
        raise  # a smaller batch_size helps; PIL would not
    except Exception:  # a file nvJPEG refuses, or a torchvision without batched decoding (< 0.19)
        pass
    decoded = []
    for d in data:
        try:
            decoded.append(decode_jpeg(d, device=device, mode=ImageReadMode.RGB))
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception:
            decoded.append(None)
    return decoded


def torch_decoded_batches(files, image_size, device, batch_size, num_workers, prefetch=2):
    """(images (B, 3, S, S) on device or None, index (B,), [(index, reason), ...]) per batch of files, as the
    DataLoader of collate_images gives them. Threads read the bytes of the next `prefetch` batches while the
    device decodes and encodes this one."""
    starts = range(0, len(files), batch_size)
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        submit = lambda s: [pool.submit(read_for_decode, files[i], image_size)
                            for i in range(s, min(s + batch_size, len(files)))]
        pending = deque(submit(s) for s in starts[:prefetch])
        for k, start in enumerate(starts):
            items = [f.result() for f in pending.popleft()]
            if k + prefetch < len(starts):
                pending.append(submit(starts[k + prefetch]))
            jpeg_at = [j for j, (kind, _) in enumerate(items) if kind == "jpeg"]
            for j, image in zip(jpeg_at, decode_jpegs([items[j][1] for j in jpeg_at], device)):
                # nvJPEG or libjpeg refused a file its header looked fine for: PIL decides.
                items[j] = ("decoded", image) if image is not None else pil_eval_item(files[start + j], image_size)
            decoded = [j for j, (kind, _) in enumerate(items) if kind == "decoded"]
            loaded = [j for j, (kind, _) in enumerate(items) if kind == "image"]
            parts = [tensor_eval_transform([items[j][1] for j in decoded], image_size, device)] if decoded else []
            if loaded:
                parts.append(torch.stack([items[j][1] for j in loaded]).to(device, non_blocking=True))
            failed = [(start + j, reason) for j, (kind, reason) in enumerate(items) if kind == "failed"]
            index = torch.tensor([start + j for j in decoded + loaded], dtype=torch.long)
            yield (torch.cat(parts) if parts else None), index, failed


def backbone_digest(encoder):
    """sha256 of the weights actually in the encoder's CNN (parameters and batch-norm buffers), whatever their
    origin: ImageNet, a seeded random initialisation, or a checkpoint's saved backbone. Training and
    evaluating one run thus name the same cache file, and two random backbones never share one.

    About 0.1 s for MobileNetV2, under a second for ResNet-50 (100 MB). The digest is remembered on the encoder
    with each tensor's storage and version counter, which any in-place change (load_state_dict, an optimiser
    step) bumps: a run hashes its frozen backbone once, however many splits it caches.
    """
    state = encoder.backbone.state_dict()
    stamp = tuple((name, t.data_ptr(), t._version) for name, t in state.items())
    memo = getattr(encoder, "_backbone_digest", None)
    if memo is not None and memo[0] == stamp:
        return memo[1]
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()  # row-major whatever the memory format (channels_last)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    encoder._backbone_digest = (stamp, digest)
    return digest


def cache_key(model_args, files, weights, upright=DATASET_UPRIGHT):
    """What the cached features depend on: backbone and its blocks, its weights, image size, pooling, files,
    and whether the images were turned upright by their EXIF orientation (upright, data_loader.DATASET_UPRIGHT).

    model_args: the dict a checkpoint stores (TrainConfig.model_args); the keys read here are backbone,
    image_size, grid, backbone_blocks, and whether maps are kept (keeps_maps: local_hidden or the attention
    decoder). weights: backbone_digest(encoder), the hash of the CNN's weights (not the `pretrained` flag: two
    random backbones of different seeds give other features).
    files: each file's folder and name, size and modification time, so a file replaced in place (same name and
    size) rebuilds the cache.
    Not the decoding pipeline (PIL or torch/nvJPEG), nor the device or precision: a cache built one way is
    reused the other. (Neither path turns images by their EXIF orientation: nvJPEG cannot, so DATASET_UPRIGHT
    stays False unless the torch path learns to.) Measured on the CPU (tests/test_features.py), the two pipelines' features differ less
    than those of an image and itself plus invisible noise (half an 8-bit level): 1 - cosine 2e-7 for
    ResNet-50 at 224 px, 3e-4 at worst for MobileNetV2 at 64 px. bench/gpu.py reports the GPU's figure
    (features_min_cosine_torch_vs_pil); should nvJPEG ever differ materially, add the pipeline here.
    """
    a = model_args
    blob = json.dumps({"backbone": a["backbone"], "weights": weights, "image_size": a["image_size"],
                       "grid": a.get("grid", 1), "files": [describe_file(f) for f in files], "version": 2,
                       **({"blocks": a["backbone_blocks"]} if a.get("backbone_blocks") else {}),
                       **({"maps": True} if keeps_maps(a) else {}),
                       **({"upright": True} if upright else {})})  # as stored: the key caches had before
    return hashlib.sha256(blob.encode()).hexdigest()


def describe_file(path):
    """[folder/name, size, mtime in ns] of an image file; [folder/name, -1, -1] for a missing one."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return [f"{path.parent.name}/{path.name}", -1, -1]
    return [f"{path.parent.name}/{path.name}", st.st_size, st.st_mtime_ns]


def keeps_maps(model_args):
    """Whether the cache keeps whole maps (N, C, h, w) rather than pooled features: for local features, and for
    the attention decoder's annotation vectors. Both read the same maps, so they share one cache."""
    return bool(model_args.get("local_hidden")) or model_args.get("decoder", "lstm") == "attention"


def cache_path(model_args, cache_dir, key):
    """cache_dir/<backbone>[-b<blocks>]-<size>px-<g<grid> or maps>-<key>.pt: readable names, keyed content."""
    a = model_args
    layout = "maps" if keeps_maps(a) else f"g{a.get('grid', 1)}"
    blocks = f"-b{a['backbone_blocks']}" if a.get("backbone_blocks") else ""
    return Path(cache_dir) / f"{a['backbone']}{blocks}-{a['image_size']}px-{layout}-{key[:16]}.pt"


CHUNK_IMAGES = 4096  # images per finished piece of a cache being built: a kill loses at most this much work


def cached_features(encoder, files, model_args, cache_dir, device, num_workers=2, desc="CNN features",
                    weights=None, chunk=CHUNK_IMAGES):
    """compute_features, stored under cache_dir and reused while the key matches.

    The key holds the hash of the weights in `encoder`'s backbone (weights: that digest, when the caller has
    it already). The file is written to a temporary name and renamed when complete, so an interrupted build
    is never mistaken for a cache; an unreadable or mismatching file is rebuilt.
    A build goes `chunk` images at a time, each finished piece saved beside the cache (cache_pieces), so a
    build killed in the middle resumes where it stopped: on a laptop's CPU COCO's cache takes hours.
    A cache is loaded memory-mapped: its pages are the file's, which the system can drop and read again
    under memory pressure instead of holding a private copy (the attention decoder's COCO maps are ~25 GB).
    """
    key = cache_key(model_args, files, weights if weights is not None else backbone_digest(encoder))
    path = cache_path(model_args, cache_dir, key)
    if path.exists():
        try:
            c = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if c.get("key") == key and c["features"].shape[0] == len(files):
                return c["features"], c["ok"], c["failures"]
            print(f"feature cache {path} does not match its inputs; rebuilding it")
        except Exception as e:
            print(f"feature cache {path} is unreadable ({type(e).__name__}); rebuilding it")
    pieces = cache_pieces(path)
    pieces.mkdir(parents=True, exist_ok=True)
    done = [piece_of(pieces, start, key) for start in range(0, len(files), chunk)]
    if any(p is not None for p in done):
        print(f"feature cache {path.name}: resuming, {sum(p is not None for p in done)} of {len(done)} pieces done")
    features = ok = None
    failures = {}
    for i, start in enumerate(range(0, len(files), chunk)):
        part = done[i] or build_piece(encoder, files[start:start + chunk], model_args["image_size"], device,
                                      num_workers, f"{desc} {i + 1}/{len(done)}", pieces / f"{start:09d}.pt", key)
        if features is None:  # (N, D) or (N, C, h, w) float16, filled piece by piece
            features = torch.empty((len(files), *part["features"].shape[1:]), dtype=torch.float16)
            ok = torch.zeros(len(files), dtype=torch.bool)
        features[start:start + len(part["ok"])] = part["features"]
        ok[start:start + len(part["ok"])] = part["ok"]
        failures.update(part["failures"])
        done[i] = None  # one piece in memory at a time, beside the whole cache
    if features is None:  # no files at all
        features, ok, failures = compute_features(encoder, files, model_args["image_size"], device,
                                                  num_workers=num_workers, desc=desc)
    atomic_save({"key": key, "features": features, "ok": ok, "failures": failures}, path)
    shutil.rmtree(pieces, ignore_errors=True)
    return features, ok, failures


def cache_pieces(path):
    """The folder of a cache's finished pieces while it is being built: .pieces-<the key's 16 hex digits> beside
    the cache file, whose name ends in them."""
    return path.with_name(f".pieces-{path.stem.rsplit('-', 1)[-1]}")


def piece_of(pieces, start, key):
    """The finished piece that starts at image `start` (a dict like the cache's), or None if absent or unusable."""
    path = pieces / f"{start:09d}.pt"
    try:
        piece = torch.load(path, map_location="cpu", weights_only=True)
        return piece if piece.get("key") == key else None
    except Exception:  # absent, or torn by the kill: built again
        return None


def build_piece(encoder, files, image_size, device, num_workers, desc, path, key):
    """compute_features over a piece's files, saved atomically at `path`; the piece as a dict."""
    features, ok, failures = compute_features(encoder, files, image_size, device, num_workers=num_workers, desc=desc)
    piece = {"key": key, "features": features, "ok": ok, "failures": failures}
    atomic_save(piece, path)
    return piece


def atomic_save(obj, path):
    """torch.save to a temporary file, flush it to disk, then rename: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written file stays behind (kill -9 leaves tmp, never path)
        tmp.unlink(missing_ok=True)
        raise
