"""Where an attention checkpoint looks on shapes: is each colour and shape word read from an object of that
colour or shape, and does the shape after a colour come from the same object?

    python bench/attention_grounding.py --checkpoint runs/NAME/best.pt --split test_novel

For every greedy caption of the split, each "colour [size] shape" mention is located: the object a word
attends to is the true object whose bounding box holds the most of that word's attention (the weights on
the map's grid, each cell counted for the object its centre falls in). Prints, for seen and for held-out
(novel) colour-shape pairs, how often the colour word attends to an object of that colour, the shape word
to an object of that shape, and both words to the same object; and how often the true novel objects are
named right, with what the model says instead. Needs the shapes ground truth; asserts nothing.
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's modules

from data_loader import CocoCaptionDataset, find_split  # noqa: E402
from evaluate import checkpoint_settings, split_image_features  # noqa: E402
from model import caption_batch, checkpoint_max_len, load_checkpoint  # noqa: E402
from shapes_dataset import COLOURS, HELD_OUT_PAIRS, SHAPES, SIZE_WORDS, load_ground_truth  # noqa: E402


def cell_owner(objects, grid, image_size):
    """(h, w) list of lists: the index of the object whose bounding box holds each cell's centre, or None."""
    h, w = grid
    owners = [[None] * w for _ in range(h)]
    for r in range(h):
        for c in range(w):
            y, x = (r + 0.5) * image_size / h, (c + 0.5) * image_size / w
            inside = [k for k, o in enumerate(objects)
                      if o["bbox"][0] <= x <= o["bbox"][0] + o["bbox"][2]
                      and o["bbox"][1] <= y <= o["bbox"][1] + o["bbox"][3]]
            owners[r][c] = min(inside, key=lambda k: objects[k]["bbox"][2] * objects[k]["bbox"][3]) if inside else None
    return owners


def attended_object(weights, owners, n_objects):
    """(object index or None, its share of the weights): the object whose cells hold the most attention."""
    mass = [0.0] * n_objects
    for r, row in enumerate(owners):
        for c, k in enumerate(row):
            if k is not None:
                mass[k] += float(weights[r, c])
    best = max(range(n_objects), key=lambda k: mass[k]) if n_objects else None
    return (best, mass[best]) if best is not None and mass[best] > 0 else (None, 0.0)


def mentions(words):
    """[(colour index, shape index)] of each "colour [size words] shape" in a caption's words."""
    out = []
    for i, word in enumerate(words):
        if word in COLOURS:
            j = i + 1
            while j < len(words) and words[j] in SIZE_WORDS:
                j += 1
            if j < len(words) and words[j] in SHAPES:
                out.append((i, j))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="an attention checkpoint trained on shapes")
    parser.add_argument("--split", default="test_novel", help="test, val or test_novel")
    parser.add_argument("--data-root", default=None, help="shapes root; None: the checkpoint's")
    parser.add_argument("--beam", type=int, default=1, help="beam width (1: greedy)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    encoder, decoder, vocab, ckpt = load_checkpoint(args.checkpoint)
    if not getattr(encoder, "attention", False):
        sys.exit(f"error: {args.checkpoint} has no attention decoder")
    settings = checkpoint_settings(ckpt, data_root=args.data_root)
    dataset = CocoCaptionDataset(*find_split(settings["data_root"], args.split), vocab)
    features, ok, _ = split_image_features(encoder, dataset, settings, ckpt["model_args"], torch.device("cpu"))
    truth = load_ground_truth(settings["data_root"], args.split)
    size = ckpt["model_args"]["image_size"]
    novel = set(HELD_OUT_PAIRS)
    counts = {kind: Counter() for kind in ("seen", "novel")}
    said_for_novel = Counter()
    for start in range(0, len(dataset.image_ids), 128):
        index = [i for i in range(start, min(start + 128, len(dataset.image_ids))) if ok[i]]
        texts, attention = caption_batch(encoder, decoder, vocab, features=features[index], beam=args.beam,
                                         max_len=checkpoint_max_len(ckpt), with_attention=True)
        for i, (words, maps) in zip(index, attention):
            objects = truth[dataset.image_ids[i]]
            owners = cell_owner(objects, maps.shape[1:], size)
            for ci, si in mentions(words):
                pair = (words[ci], words[si])
                c = counts["novel" if pair in novel else "seen"]
                k_colour, share_colour = attended_object(maps[ci], owners, len(objects))
                k_shape, _ = attended_object(maps[si], owners, len(objects))
                c["mentions"] += 1
                c["colour word on that colour"] += k_colour is not None and objects[k_colour]["colour"] == pair[0]
                c["shape word on that shape"] += k_shape is not None and objects[k_shape]["shape"] == pair[1]
                c["both on one object"] += k_colour is not None and k_colour == k_shape
                c["pair really there"] += any((o["colour"], o["shape"]) == pair for o in objects)
                c["colour share"] += share_colour
            named = set((words[ci], words[si]) for ci, si in mentions(words))
            for o in objects:
                pair = (o["colour"], o["shape"])
                if pair in novel:
                    counts["novel"]["true novel objects"] += 1
                    counts["novel"]["named right"] += pair in named
                    said = [p for p in named if p[0] == pair[0]]  # what the model says with that colour
                    said_for_novel[f"{pair[0]} {pair[1]} -> {said[0][0] + ' ' + said[0][1] if said else 'colour not said'}"] += 1
    print(f"{args.checkpoint}, {args.split}, beam {args.beam}")
    for kind, c in counts.items():
        n = max(c["mentions"], 1)
        print(f"  {kind} pairs named: {c['mentions']}")
        for key in ("colour word on that colour", "shape word on that shape", "both on one object", "pair really there"):
            print(f"    {key:<28} {c[key] / n:.3f}")
        print(f"    {'colour word share on object':<28} {c['colour share'] / n:.3f}")
    c = counts["novel"]
    if c["true novel objects"]:
        print(f"  true novel objects: {c['true novel objects']}, named right {c['named right'] / c['true novel objects']:.3f}")
        for line, k in said_for_novel.most_common(12):
            print(f"    {k:>4}  {line}")


if __name__ == "__main__":
    main()
