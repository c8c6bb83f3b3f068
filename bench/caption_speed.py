"""Captioning speed of `caption.py --out`: images per second on a folder of photos, greedy and beam 3.

    python bench/caption_speed.py --data-root data/flickr8k                    # the 1,000 development photos
    python bench/caption_speed.py --data-root data/flickr8k --checkpoint runs/NAME/best.pt --images 200

Times what `python caption.py FOLDER --out captions.jsonl` does, end to end: decoding the files in
--num-workers processes, the evaluation transform, the CNN, batched decoding, and appending the records a
batch at a time (caption.caption_to_file), with the model already loaded. Prints the CPU (or GPU), the threads
and the load average with the table; asserts nothing about time.
"""
import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's modules

from caption import caption_to_file  # noqa: E402
from captioner import ImageCaptioner  # noqa: E402


def dev_photos(data_root, limit=None):
    """Flickr8k's development photos, in its split file's order (the original layout)."""
    root = Path(data_root)
    names = (root / "Flickr8k_text" / "Flickr_8k.devImages.txt").read_text().split()
    return [root / "Flicker8k_Dataset" / name for name in names[:limit]]


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-root", default="data/flickr8k", help="Flickr8k in its original layout")
    parser.add_argument("--checkpoint", default="models/flickr8k.pt", help="the model that captions")
    parser.add_argument("--images", type=int, default=None, help="only the first N photos; None: all 1,000")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 3], help="beam widths to time; 1 is greedy")
    parser.add_argument("--batch-size", type=int, default=32, help="as caption.py's --batch-size")
    parser.add_argument("--num-workers", type=int, default=2, help="as caption.py's --num-workers")
    parser.add_argument("--device", default="cpu", help="a torch device name")
    args = parser.parse_args(argv)

    paths = dev_photos(args.data_root, args.images)
    model = ImageCaptioner(args.checkpoint, device=args.device)
    where = torch.cuda.get_device_name() if model.device.type == "cuda" else cpu_name()
    print(f"{where}; {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {args.num_workers} "
          f"decoding processes; load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{len(paths)} photos from {args.data_root}; {args.checkpoint}: {model.trained_on}")
    print("| decoding | images | seconds | images/s |\n| --- | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for beam in args.beams:
            done = caption_to_file(model, paths, Path(tmp) / f"beam{beam}.jsonl", beam=beam,
                                   batch_size=args.batch_size, num_workers=args.num_workers, progress=False)
            name = "greedy" if beam == 1 else f"beam {beam}"
            print(f"| {name} | {done['captioned']} | {done['seconds']:.1f} | {done['images_per_s']:.1f} |",
                  flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
