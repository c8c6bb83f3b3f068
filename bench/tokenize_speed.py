"""What the token cache saves: nltk on every caption of a file against reading the cached tokens.

    python bench/tokenize_speed.py ../shared/data/coco-mini/annotations/captions_val2017_all5000.json
    python bench/tokenize_speed.py data/coco/annotations/captions_train2017.json   # ~591k captions

It times, on one caption file: tokenizing every caption (what every start did before the cache); the first
start with the cache (tokenize, then write the cache atomically); and a later start (hash the caption file,
read the cache). The cache goes to a temporary folder, removed at the end.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vocabulary import caption_tokens, read_captions, tokenize  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("captions", help="a COCO-format caption file")
    args = parser.parse_args(argv)
    captions = read_captions(args.captions)
    plain, t_plain = timed(lambda: [tokenize(c) for c in captions])
    with tempfile.TemporaryDirectory() as cache:
        _, t_cold = timed(lambda: caption_tokens(args.captions, captions, cache))
        table, t_warm = timed(lambda: caption_tokens(args.captions, captions, cache))
        size = sum(p.stat().st_size for p in Path(cache).iterdir())
    assert [table[c] for c in captions] == plain  # the cache gives nltk's tokens
    print(f"{len(captions):,} captions of {Path(args.captions).name}")
    print(f"  tokenize every caption (before)      {t_plain:7.2f} s")
    print(f"  first start: tokenize + write cache  {t_cold:7.2f} s  ({size / 2**20:.1f} MB)")
    print(f"  later starts: read the cache         {t_warm:7.2f} s  (saves {t_plain - t_warm:.2f} s, "
          f"{t_plain / max(t_warm, 1e-9):.0f}x faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
