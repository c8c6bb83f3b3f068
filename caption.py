"""Caption images with a trained checkpoint.

    python caption.py --checkpoint runs/NAME/best.pt photo.jpg more_photos/   # one "path<TAB>caption" a line
    python caption.py images/ --beam 3                                         # the newest run's best.pt
    python caption.py --checkpoint runs/NAME/best.pt --attention figs/ images/ # + figs/<image stem>.png: where
                                                                               #   each word looked (attention)

From Python (the notebooks use these):
    captioner = captioner.ImageCaptioner(path); captioner(["a.jpg", pil_image])   # also what torch.hub.load returns
    captions, failures = caption_images(encoder, decoder, vocab, paths, image_size=...)   # many files, failures named

Captioning a batch of images or cached features (model.caption_batch) and decoding itself (batched greedy and
beam search) live in model.py; this file finds the image files, feeds them in batches and names the failures.
"""
import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from captioner import ImageCaptioner
from data_loader import ImageListDataset, ImageLoadError, collate_images, get_transform, load_image
from heatmaps import attention_figure, save_png
from model import DEFAULT_MAX_LEN, caption_batch, latest_checkpoint

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ---------------------------------------------------------------------------------------------------
# Files: folders expand to their images; unreadable files are named with the reason
# ---------------------------------------------------------------------------------------------------
def image_files(inputs):
    """Paths to caption: files as given (any file PIL opens), folders as their image files, sorted.

    A folder's own files count when their extension is one of IMAGE_EXTENSIONS (any case); subfolders and
    hidden files are not searched. A folder without any raises FileNotFoundError.
    """
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
            if not found:
                raise FileNotFoundError(f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        else:
            files.append(path)  # a missing file is reported with the others, not here
    return files


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


def iter_captions(encoder, decoder, vocab, paths, image_size, beam=1, max_len=DEFAULT_MAX_LEN, length_penalty=0.0,
                  batch_size=32, num_workers=0, progress=True, attention_dir=None):
    """Yield (path, caption, None) or (path, None, reason) for every path, in order, a batch at a time.

    attention_dir (an attention decoder): also write attention_dir/<image stem>.png for each captioned image,
    the image and one panel per word with the weights behind it (heatmaps.attention_figure).
    """
    dataset = ImageListDataset(paths, get_transform(train=False, image_size=image_size))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_images)
    used = set()  # figure names written so far: a second photo.jpg (another folder) gets photo-2.png
    for images, index, failed in tqdm(loader, desc="captioning", unit="batch", leave=False,
                                      disable=None if progress else True):  # None: only on a terminal
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
        for i in sorted(results):
            yield (dataset.paths[i], *results[i])


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
# Command line
# ---------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Caption images with a trained Show-and-Tell checkpoint: one 'path<TAB>caption' line per "
                    "image on stdout; unreadable files are named on stderr and make the exit code 1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files (anything PIL opens) or folders of them (their own "
                             f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files, sorted)")
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint file; None: best.pt of the newest run under --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where training runs live (for the default checkpoint)")
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


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.beam < 1 or args.batch_size < 1:
            raise ValueError("--beam and --batch-size must be at least 1")
        paths = image_files(args.images)
        checkpoint = args.checkpoint or latest_checkpoint(args.runs_dir)
        model = ImageCaptioner(checkpoint, device=args.device, max_len=args.max_len)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    if args.attention is not None and not model.has_attention:
        kind = model.ckpt["model_args"].get("decoder", "lstm")
        print(f"error: {checkpoint} has no attention to draw (its decoder is {kind!r}); --attention needs a "
              "checkpoint trained with --decoder attention", file=sys.stderr)
        return 2
    print(f"{checkpoint}: {model.trained_on}", file=sys.stderr)  # so that a Flickr8k model's words surprise nobody
    failed = 0
    try:
        for path, text, reason in iter_captions(model.encoder, model.decoder, model.vocab, paths, model.image_size,
                                                args.beam, model.max_len, args.length_penalty, args.batch_size,
                                                args.num_workers, attention_dir=args.attention):
            if reason is None:
                tqdm.write(f"{path}\t{text}", file=sys.stdout)
            else:
                failed += 1
                tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
    except OSError as e:  # the attention folder cannot be written
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    if failed:
        print(f"error: {failed} of {len(paths)} images could not be captioned (named above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
