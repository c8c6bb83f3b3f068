"""Peak host memory of fitting the feature standardisation (model.Standardize.fit) on a synthetic cache.

    python bench/fit_memory.py                          # 1,000 COCO-like maps (2048 x 7 x 7, fp16): 200 MB
    python bench/fit_memory.py --images 4000 --channels 96 --side 8

Each measurement runs in a fresh process: it makes a float16 cache of random maps (N, C, h, w), as
features.cached_features stores them, reads the process's peak resident memory (ru_maxrss), fits the
statistics, and reads the peak again. The difference is what the fit itself needed on top of the cache.
COCO's training maps (118k images, ResNet-50 at 224 px) are 23 GB in fp16: scale the figures by 118 / N * 1000.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(images, channels, side):
    """Run in a child process: {cache_mb, fit_peak_extra_mb, fit_s}."""
    import torch

    sys.path.insert(0, str(REPO))
    from model import Standardize

    torch.manual_seed(0)
    cache = torch.empty(images, channels, side, side, dtype=torch.float16).normal_().abs_()  # (N, C, h, w)
    norm = Standardize(channels)
    norm.fit(cache[:2])  # code paths warmed up, so the measurement sees the fit's buffers only
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    t0 = time.perf_counter()
    norm.fit(cache)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"cache_mb": cache.numel() * 2 / 2**20, "fit_peak_extra_mb": (after - before) / 1024, "fit_s": seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images in the synthetic cache")
    parser.add_argument("--channels", type=int, default=2048, help="channels of each map (ResNet-50: 2048)")
    parser.add_argument("--side", type=int, default=7, help="map height and width (ResNet-50 at 224 px: 7)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.images, args.channels, args.side)))
        return 0
    cmd = [sys.executable, __file__, "--child", "--images", str(args.images), "--channels", str(args.channels),
           "--side", str(args.side)]
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    print(f"cache {args.images} x {args.channels} x {args.side} x {args.side} fp16: {r['cache_mb']:.0f} MB; "
          f"the fit needed {r['fit_peak_extra_mb']:.0f} MB more at its peak "
          f"({r['fit_peak_extra_mb'] / r['cache_mb']:.2f} x the cache), {r['fit_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
