"""Caption images with a trained checkpoint.

    python caption.py photo.jpg more_photos/                       # the bundled Flickr8k model: "path<TAB>caption"
    python caption.py --checkpoint runs/NAME/best.pt --beam 3 images/
    python caption.py --latest images/                             # best.pt of the newest run under runs/
    python caption.py ~/Pictures --recursive --out captions.csv    # or .jsonl, or .json (COCO results); run the
                                                                   #   same command again to resume
    python caption.py --checkpoint runs/NAME/best.pt --attention figs/ images/ # + figs/<image stem>.png: where
                                                                               #   each word looked (attention)

From Python (the notebooks use these):
    captioner = captioner.ImageCaptioner(path); captioner(["a.jpg", pil_image])   # also what torch.hub.load returns
    captions, failures = caption_images(encoder, decoder, vocab, paths, image_size=...)   # many files, failures named

Captioning a batch of images or cached features (model.caption_batch) and decoding itself (batched greedy and
beam search) live in model.py; this file finds the image files, feeds them in batches, names the failures, and
writes the captions to a file that a crash or a rerun never loses.
"""
import argparse
import csv
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captioner import ImageCaptioner
from data_loader import ImageListDataset, ImageLoadError, collate_images, get_transform, load_image
from heatmaps import attention_figure, save_png
from model import DEFAULT_MAX_LEN, caption_batch, latest_checkpoint

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".heic", ".heif")  # HEIC/HEIF: with the optional pillow-heif package


# ---------------------------------------------------------------------------------------------------
# Files: folders expand to their images; unreadable files are named with the reason
# ---------------------------------------------------------------------------------------------------
def image_files(inputs, recursive=False):
    """Paths to caption: files as given (any file PIL opens), folders as their image files, sorted.

    A folder's files count when their extension is one of IMAGE_EXTENSIONS (any case), hidden ones aside;
    recursive: its sub-folders' too (hidden folders aside). A folder without any raises FileNotFoundError.
    A file named twice (itself and in its folder) is listed once.
    """
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                where = f"{path} and its sub-folders hold" if recursive else f"{path} holds"
                raise FileNotFoundError(f"{where} no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        else:
            files.append(path)  # a missing file is reported with the others, not here
    seen = set()
    return [p for p in files if not (p.resolve() in seen or seen.add(p.resolve()))]


def failure_reason(path, short_reason="unreadable"):
    """Why an image cannot be used, in words: 'empty file (0 bytes)', 'unreadable (cannot identify ...)'."""
    path = Path(path)
    if not path.exists():
        return "missing (no such file)"
    if path.is_dir():
        return "a folder, not an image file"
    if path.is_file() and path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        load_image(path)  # only for failed files: again, to learn the detail that the loader summarised
    except ImageLoadError as e:
        return str(e).removeprefix(f"{e.path}: ")
    return short_reason


def iter_caption_batches(encoder, decoder, vocab, paths, image_size, beam=1, max_len=DEFAULT_MAX_LEN,
                         length_penalty=0.0, batch_size=32, num_workers=0, progress=True, attention_dir=None):
    """Yield, per batch of paths, a list of (path, caption, None) or (path, None, reason), in order.

    Images are decoded in `num_workers` processes and captioned a batch at a time; a progress bar counts
    images (on a terminal). attention_dir (an attention decoder): also write attention_dir/<image stem>.png
    for each captioned image, the image and one panel per word with the weights behind it.
    """
    dataset = ImageListDataset(paths, get_transform(train=False, image_size=image_size))  # photos: upright
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
    used = set()  # figure names written so far: a second photo.jpg (another folder) gets photo-2.png
    with tqdm(total=len(paths), desc="captioning", unit="img", leave=False,
              disable=None if progress else True) as bar:  # None: only on a terminal
        for images, index, failed in loader:
            results = {i: (None, failure_reason(dataset.paths[i], reason)) for i, reason in failed}
            if images is not None:
                out = caption_batch(encoder, decoder, vocab, images=images, beam=beam, max_len=max_len,
                                    length_penalty=length_penalty, with_attention=attention_dir is not None)
                texts = out[0] if attention_dir is not None else out
                results.update((int(i), (text, None)) for i, text in zip(index, texts))
                if attention_dir is not None:
                    for i, image, text, (words, maps) in zip(index.tolist(), images, texts, out[1]):
                        figure = attention_figure(image, words, maps, title=f"{Path(dataset.paths[i]).name}: {text}")
                        save_png(figure, figure_path(attention_dir, dataset.paths[i], used))
            bar.update(len(results))
            yield [(dataset.paths[i], *results[i]) for i in sorted(results)]


def iter_captions(*args, **kwargs):
    """Yield (path, caption, None) or (path, None, reason) for every path, in order (iter_caption_batches)."""
    for batch in iter_caption_batches(*args, **kwargs):
        yield from batch


def figure_path(folder, image_path, used):
    """folder/<image stem>.png, or <stem>-2.png, -3, ... when an earlier image of this run had that stem."""
    stem, n = Path(image_path).stem, 1
    name = f"{stem}.png"
    while name in used:
        n += 1
        name = f"{stem}-{n}.png"
    used.add(name)
    return Path(folder) / name


def caption_images(encoder, decoder, vocab, paths, image_size, beam=1, max_len=DEFAULT_MAX_LEN, length_penalty=0.0,
                   batch_size=32, num_workers=0, progress=True):
    """({path: caption} for the readable images, {path: reason} for the others), in the order given."""
    captions, failures = {}, {}
    for path, text, reason in iter_captions(encoder, decoder, vocab, paths, image_size, beam, max_len,
                                            length_penalty, batch_size, num_workers, progress):
        if reason is None:
            captions[path] = text
        else:
            failures[path] = reason
    return captions, failures


# ---------------------------------------------------------------------------------------------------
# Caption files: .csv, .jsonl, .json (COCO results); appended a batch at a time, read back to resume
# ---------------------------------------------------------------------------------------------------
FIELDS = ("path", "caption", "model", "model_sha256", "beam", "max_len", "length_penalty")  # one record
NUMBERS = {"image_id": int, "beam": int, "max_len": int, "length_penalty": float}  # typed again on reading
SETTINGS = ("model_sha256", "beam", "max_len", "length_penalty")  # one caption file, one model and decoding
COCO_NAME = re.compile(r"(?:COCO_[a-z]+\d{4}_)?(\d+)")  # 000000391895.jpg, COCO_val2014_000000391895.jpg, 42.png


def out_format(out):
    """'csv', 'jsonl' or 'json', from --out's suffix."""
    kind = Path(out).suffix.lower().lstrip(".")
    if kind not in ("csv", "jsonl", "json"):
        raise ValueError(f"--out {out}: give a file ending in .csv, .jsonl or .json (COCO's results format)")
    return kind


def partial_path(out):
    """Where a .json output's records wait while the run goes (JSON Lines), until the .json is written whole."""
    return Path(out).with_name(Path(out).name + ".partial.jsonl")


def coco_image_ids(paths):
    """{path: COCO image id} from names like 000000391895.jpg, COCO_val2014_000000391895.jpg or 42.png, for
    --out X.json; ValueError naming a file without one, or two files with one id."""
    ids, owner = {}, {}
    for path in paths:
        found = COCO_NAME.fullmatch(Path(path).stem)
        if found is None:
            raise ValueError(f"--out .json writes COCO results, which need image ids, and {Path(path).name} holds "
                             "none (COCO names are like 000000391895.jpg); use --out captions.jsonl or .csv")
        image_id = int(found.group(1))
        if image_id in owner:
            raise ValueError(f"{owner[image_id]} and {path} both name image id {image_id}: COCO results need one "
                             "caption per id; use --out captions.jsonl or .csv")
        ids[path], owner[image_id] = image_id, path
    return ids


def read_records(path):
    """The records in a caption file this script wrote (csv, jsonl, json, or a .json's partial file), typed as
    written. A last line cut short by a crash is left out (its image is captioned again)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    kind = out_format(path)  # a .json's partial file ends in .jsonl
    if kind != "json" and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a torn last line
    try:
        if kind == "json":
            records = json.loads(text) if text.strip() else []
        elif kind == "jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = list(csv.DictReader(text.splitlines()))
        for record in records:
            for name, kind_of in NUMBERS.items():
                if name in record:
                    record[name] = kind_of(record[name])
            missing = [f for f in FIELDS if f not in record]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
    except (ValueError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not a caption file that caption.py wrote ({one_line(e)}); give another --out "
                         "or move it away") from None
    return records


def drop_torn_line(path):
    """Cut a last line without its newline (a crash mid-write) off a csv or jsonl file before appending to it."""
    path = Path(path)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)


def append_records(path, records, kind):
    """Append records to a csv (a header first when new) or jsonl file, and make them durable: flush and fsync,
    so that a crash afterwards loses none of them."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", encoding="utf-8", newline="") as f:
        if kind == "csv":
            writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
            if new:
                writer.writeheader()
            writer.writerows(records)
        else:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        f.flush()
        os.fsync(f.fileno())


def write_json(out, records):
    """COCO's results format, [{"image_id": int, "caption": str, ...}], written whole to a temporary file that
    then replaces `out`: readers see the old file or the new one, never half of one."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(records, f, ensure_ascii=False, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def same_file(path):
    """What two names of one image have in common: its absolute path (records keep the path as given)."""
    return str(Path(path).resolve())


def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class CaptionFile:
    """--out: the records already there (to skip), and appending new ones a batch at a time.

    csv and jsonl grow in place; a .json collects its new records in a .partial.jsonl file beside it and is
    rewritten whole by finish(). Every record holds the decoding settings, and one file never mixes two.
    """

    def __init__(self, out, settings):
        self.out, self.kind, self.settings = Path(out), out_format(out), settings
        self.pending = partial_path(out) if self.kind == "json" else self.out  # where batches are appended
        found = read_records(self.out) + (read_records(self.pending) if self.kind == "json" else [])
        self.records, self.done = [], set()
        for record in found:  # one record per image: a crash between finish()'s two steps leaves some twice
            if same_file(record["path"]) not in self.done:
                self.records.append(record)
                self.done.add(same_file(record["path"]))
        wanted = {k: settings[k] for k in SETTINGS}
        for record in self.records:
            theirs = {k: record[k] for k in SETTINGS}
            if theirs != wanted:
                raise ValueError(f"{self.out} holds captions made with other settings ({theirs}, model "
                                 f"{record['model']}); this run asks for {wanted}: give another --out, or the "
                                 "same settings to resume")
        drop_torn_line(self.pending)

    def todo(self, paths):
        return [p for p in paths if same_file(p) not in self.done]

    def append(self, captions, image_ids=None):
        """captions [(path, caption)]: one record each, durable when this returns."""
        records = [{**({"image_id": image_ids[p]} if image_ids else {}), "path": str(p), "caption": text,
                    **self.settings} for p, text in captions]
        if records:
            append_records(self.pending, records, "jsonl" if self.kind == "json" else self.kind)
        self.records += records

    def finish(self):
        """For .json: write the whole file (old records and new), then drop the partial file."""
        if self.kind == "json":
            write_json(self.out, self.records)
            self.pending.unlink(missing_ok=True)


def caption_to_file(model, paths, out, beam=1, length_penalty=0.0, batch_size=32, num_workers=2, progress=True):
    """Caption `paths` into `out` (csv, jsonl or json), skipping those already there; flushed every batch.

    Returns a summary dict: captioned, skipped (already in out), failed {path: reason}, seconds, images_per_s.
    """
    settings = {"model": str(model.checkpoint), "model_sha256": file_sha256(model.checkpoint)[:16], "beam": beam,
                "max_len": model.max_len, "length_penalty": length_penalty}
    image_ids = coco_image_ids(paths) if out_format(out) == "json" else None  # before any work: fail early
    file = CaptionFile(out, settings)
    todo = file.todo(paths)
    failed, captioned, start = {}, 0, time.perf_counter()
    for batch in iter_caption_batches(model.encoder, model.decoder, model.vocab, todo, model.image_size, beam,
                                      model.max_len, length_penalty, batch_size, num_workers, progress):
        file.append([(p, text) for p, text, reason in batch if reason is None], image_ids)
        captioned += sum(reason is None for _, _, reason in batch)
        for p, _, reason in batch:
            if reason is not None:
                failed[p] = reason
                tqdm.write(f"error: {p}: {reason}", file=sys.stderr)
    file.finish()
    seconds = time.perf_counter() - start
    return dict(captioned=captioned, skipped=len(paths) - len(todo), failed=failed, seconds=seconds,
                images_per_s=captioned / seconds if seconds > 0 else 0.0)


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Caption images with a trained Show-and-Tell checkpoint: one 'path<TAB>caption' line per "
                    "image on stdout, or records in --out; unreadable files are named on stderr and make the "
                    "exit code 1, and the others are captioned all the same.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files (anything PIL opens) or folders of them (their own "
                             f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files, sorted)")
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint file; None: the bundled Flickr8k model (models/flickr8k.pt)")
    parser.add_argument("--latest", action="store_true", help="use best.pt of the newest run under runs/")
    parser.add_argument("--runs-dir", default=None, metavar="DIR",
                        help="use best.pt of the newest run under DIR (as --latest does under runs/)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the captions to FILE instead of stdout: .csv, .jsonl, or .json (COCO's results "
                             "format, for names like 000000391895.jpg); each record names the path, the caption, "
                             "the model and the decoding. Records go in a batch at a time, and a rerun skips "
                             "the images already there")
    parser.add_argument("--recursive", action="store_true", help="also caption the images in sub-folders")
    parser.add_argument("--beam", type=int, default=1, help="beam width; 1 is greedy decoding")
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest caption, in words; None: the checkpoint's training max_len")
    parser.add_argument("--length-penalty", type=float, default=0.0,
                        help="GNMT length penalty alpha for beam search; 0 ranks by plain log-probability")
    parser.add_argument("--batch-size", type=int, default=32, help="images decoded and captioned at once")
    parser.add_argument("--num-workers", type=int, default=2, help="image-decoding processes")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    parser.add_argument("--attention", default=None, metavar="DIR",
                        help="also write DIR/<image stem>.png: where each word looked (attention decoders only)")
    return parser.parse_args(argv)


def one_line(error):
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def check_args(args):
    if args.beam < 1 or args.batch_size < 1:
        raise ValueError("--beam and --batch-size must be at least 1")
    if args.checkpoint and (args.latest or args.runs_dir):
        raise ValueError("give --checkpoint, or --latest / --runs-dir, not both")
    if args.out is not None:
        out_format(args.out)
        if args.attention is not None:
            raise ValueError("--attention draws figures for stdout captions; leave out --out to use it")


def caption_to_stdout(model, paths, args):
    """One 'path<TAB>caption' line per image on stdout, errors on stderr. Returns the number of failures."""
    failed = 0
    for path, text, reason in iter_captions(model.encoder, model.decoder, model.vocab, paths, model.image_size,
                                            args.beam, model.max_len, args.length_penalty, args.batch_size,
                                            args.num_workers, attention_dir=args.attention):
        if reason is None:
            tqdm.write(f"{path}\t{text}", file=sys.stdout)
        else:
            failed += 1
            tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
    return failed


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args)
        paths = image_files(args.images, args.recursive)
        if args.out is not None and out_format(args.out) == "json":
            coco_image_ids(paths)  # before loading anything: names without image ids fail at once
        if args.latest or args.runs_dir:
            checkpoint = latest_checkpoint(args.runs_dir or "runs")
        else:
            checkpoint = args.checkpoint  # None: the bundled model; never a run picked without being asked
        model = ImageCaptioner(checkpoint, device=args.device, max_len=args.max_len)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    if args.attention is not None and not model.has_attention:
        kind = model.ckpt["model_args"].get("decoder", "lstm")
        print(f"error: {model.checkpoint} has no attention to draw (its decoder is {kind!r}); --attention needs a "
              "checkpoint trained with --decoder attention", file=sys.stderr)
        return 2
    print(f"{model.checkpoint}: {model.trained_on}", file=sys.stderr)  # which model, and what it learnt from
    start = time.perf_counter()
    try:
        if args.out is None:
            failed = caption_to_stdout(model, paths, args)
            done = dict(captioned=len(paths) - failed, skipped=0, seconds=time.perf_counter() - start)
        else:
            done = caption_to_file(model, paths, args.out, args.beam, args.length_penalty, args.batch_size,
                                   args.num_workers)
            failed = len(done["failed"])
    except ValueError as e:  # --out holds other settings, or is not a caption file
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # the attention folder or --out cannot be written
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.out is not None:
            print(f"interrupted: the captions so far are saved ({args.out}); run the same command again to go on",
                  file=sys.stderr)
        return 130
    print(summary(done, args.out), file=sys.stderr)
    if failed:
        print(f"error: {failed} of {len(paths)} images could not be captioned (named above)", file=sys.stderr)
        return 1
    return 0


def summary(done, out=None):
    """'12 images captioned in 3.1 s (3.9 images/s); 5 already in captions.csv, skipped'."""
    rate = done["captioned"] / done["seconds"] if done["seconds"] > 0 else 0.0
    line = f"{done['captioned']} images captioned in {done['seconds']:.1f} s ({rate:.1f} images/s)"
    if done["skipped"]:
        line += f"; {done['skipped']} already in {out}, skipped"
    return line + (f"; captions in {out}" if out else "")


if __name__ == "__main__":
    sys.exit(main())
