"""Flickr8k side by side: the seed's model, the `flickr8k` recipe and `flickr8k-best`, trained on the same data.

    python bench/flickr8k.py --data-root path/to/flickr8k --cache-dir data/cache
    python bench/flickr8k.py --data-root path/to/flickr8k --only best --split test   # with a test split

For each model it trains from scratch (train.py's `train`, so exactly what the CLI does), times it, then
captions the development split (`val`, or --split) with greedy decoding and with beam 3 and prints every
metric (BLEU-1 to 4, METEOR, ROUGE-L, CIDEr) for both, beside the training time. The feature cache is built
by the first model that needs it and reused by the other (both use pooled MobileNetV2 features at 224 px), so
the first training time includes it: the line says whether the cache was cold.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluate import evaluate_checkpoint  # noqa: E402
from metrics import diagnostics_lines, scores_table  # noqa: E402
from train import make_config, train  # noqa: E402

# The seed's model as the issue measured it: TrainConfig's defaults at 224 px for 10 epochs.
MODELS = {"seed": ("seed", dict(image_size=224, epochs=10)), "recipe": ("flickr8k", {}), "best": ("flickr8k-best", {})}
BEAMS = (1, 3)


def run_model(name, data_root, out_dir, cache_dir, split, epochs=None):
    """Train one model, then score its best.pt on the split; returns (columns, seconds, cache was cold)."""
    preset, overrides = MODELS[name]
    cfg = make_config(preset, **{**overrides, "data_root": str(data_root), "out_dir": str(out_dir),
                                 "run_name": f"bench-{name}", "cache_dir": str(cache_dir), "epochs": epochs})
    cached_before = set(Path(cache_dir).glob("*.pt")) if Path(cache_dir).is_dir() else set()
    start = time.perf_counter()
    run_dir = train(cfg)
    seconds = time.perf_counter() - start
    cold = bool(set(Path(cache_dir).glob("*.pt")) - cached_before)
    columns = {}
    for beam in BEAMS:
        scores, _ = evaluate_checkpoint(run_dir / "best.pt", split=split, beam=beam, data_root=str(data_root),
                                        out_dir=run_dir, progress=False)
        columns[f"{name}, {'greedy' if beam == 1 else f'beam {beam}'}"] = scores
    return columns, seconds, cold


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default="data/flickr8k", help="a Flickr8k folder (any layout data_sources reads)")
    parser.add_argument("--out-dir", default="runs", help="where the run folders go (bench-seed, bench-recipe, bench-best)")
    parser.add_argument("--cache-dir", default="data/cache", help="feature caches, shared with train.py")
    parser.add_argument("--split", default="val", help="split to score: val is Flickr8k's development split")
    parser.add_argument("--only", choices=sorted(MODELS), default=None, help="train one of the models only")
    parser.add_argument("--epochs", type=int, default=None, help="override both models' epochs (quick checks)")
    args = parser.parse_args(argv)
    columns, times = {}, []
    for name in [args.only] if args.only else list(MODELS):
        cols, seconds, cold = run_model(name, args.data_root, args.out_dir, args.cache_dir, args.split, args.epochs)
        columns.update(cols)
        times.append(f"{name}: trained in {seconds / 60:.1f} min ({'cold' if cold else 'warm'} feature cache)")
    print(f"\n{args.data_root}, split {args.split}, best.pt of each run:\n")
    print(scores_table(columns))
    for name, scores in columns.items():
        print(f"\n{name}: " + "\n".join(diagnostics_lines(scores.diagnostics)))
    print("\n" + "\n".join(times))


if __name__ == "__main__":
    main()
