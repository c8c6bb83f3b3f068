"""Caption a whole split with a checkpoint and score the captions.

    python evaluate.py --checkpoint runs/NAME/best.pt --split test --beam 3
    python evaluate.py --split val                     # the newest run's best.pt
    python evaluate.py                                 # its data root's split: test on shapes, val on COCO

It prints BLEU-1..4, METEOR, ROUGE-L and CIDEr (object F1 too on the shapes data), and writes
captions_<split>_beam<k>.json (COCO results format) and scores_<split>_beam<k>.json beside the checkpoint; a
setting that changes the captions from the checkpoint's defaults (--max-len, --length-penalty, --no-word-rules,
another --data-root) adds a suffix to those names, e.g. scores_val_beam3_maxlen2_norules.json, and leaves the
model card's rows (default settings only) alone.
When the split holds images best.pt was chosen on (its run's validation split) or trained on, it says so, and
the scores file records it (chosen_on_this_split, images_chosen_on, images_trained_on, notes).

From Python (3_Inference uses this): scores, captions = evaluate_checkpoint("runs/NAME/best.pt", "test", beam=3)

The scorers live in metrics.py, the feature cache in features.py, decoding in model.py: this file wires them.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from data_loader import CocoCaptionDataset, data_defaults, find_split, images_among, load_coco, train_captions_file
from features import cached_features, compute_features
import model_card
from metrics import (BACKENDS, SPICE_NOTE, Scores, caption_diagnostics, caption_metrics, diagnostics_lines,
                     meteor_missing_reason, scores_table)
from model import (NO_END_AFTER, caption_batch, checkpoint_max_len, get_device, latest_checkpoint, load_checkpoint,
                   read_checkpoint)
from vocabulary import caption_tokens, read_captions

DEFAULT_CACHE_DIR = "data/cache"  # as TrainConfig.cache_dir, for checkpoints whose config does not say
DEFAULT_NUM_WORKERS = 2


def output_paths(out_dir, split, beam, suffix=""):
    """(captions file, scores file) for a split and beam width: captions_<split>_beam<k><suffix>.json, scores_...
    The suffix (decoding_suffix) names the settings that differ from the checkpoint's defaults."""
    out = Path(out_dir)
    return out / f"captions_{split}_beam{beam}{suffix}.json", out / f"scores_{split}_beam{beam}{suffix}.json"


def decoding_suffix(ckpt, max_len, length_penalty, word_rules, data_root, its_own_images=False):
    """'' when the captions are decoded as the checkpoint does by default; otherwise each setting that changes
    them, e.g. '_maxlen2_lp0.6_norules_root-coco-a1b2c3'. So a measurement with other settings never replaces
    the default scores file (make photos reuses it) nor the model card's row (add_scores takes defaults only).
    its_own_images: the split is, image for image, one the checkpoint recorded (its validation or training
    images), so another spelling or place of the data root is the same data (a bundled model's, or a moved
    dataset's)."""
    parts = []
    if max_len != checkpoint_max_len(ckpt):
        parts.append(f"maxlen{max_len}")
    if length_penalty:
        parts.append(f"lp{length_penalty:g}")
    if not word_rules:
        parts.append("norules")
    own_root = ckpt.get("config", {}).get("data_root", "")
    if not its_own_images and Path(data_root).expanduser().resolve() != Path(own_root).expanduser().resolve():
        where = hashlib.sha256(str(Path(data_root).expanduser().resolve()).encode("utf-8")).hexdigest()[:6]
        parts.append(f"root-{Path(data_root).resolve().name}-{where}")  # the hash tells two roots of one name apart
    return "".join("_" + part for part in parts)


def checkpoint_settings(ckpt, **overrides):
    """The training settings a checkpoint saved (a plain dict), with the overrides that are not None."""
    saved = dict(ckpt.get("config", {}))
    saved.update({k: v for k, v in overrides.items() if v is not None})
    return saved


def split_image_features(encoder, dataset, settings, model_args, device, batch_size=64):
    """CNN features of a dataset's images: (features (N, D) or maps (N, C, h, w) float16, ok (N,), {file: reason}).

    A frozen backbone's features go through features.cached_features, so the cache written while training
    (settings["cache_dir"]) is reused; a fine-tuned backbone's are computed afresh.
    """
    num_workers = settings.get("num_workers", DEFAULT_NUM_WORKERS)
    if not model_args.get("train_backbone", False):
        return cached_features(encoder, dataset.image_files, model_args, settings.get("cache_dir", DEFAULT_CACHE_DIR),
                               device, num_workers=num_workers,
                               desc=f"CNN features of {dataset.annotations_file.name}")
    return compute_features(encoder, dataset.image_files, model_args["image_size"], device, batch_size=batch_size,
                            num_workers=num_workers)


def default_split(data_root):
    """The split scored when none is named: test where the data root has test captions (shapes), else val
    (COCO's test split has no public captions). data_loader.data_defaults decides."""
    return data_defaults(data_root)["eval_split"]


def seen_images(ckpt, data_root, split, image_files):
    """(chosen, trained): how many of a split's images best.pt was chosen on (its run's validation images) and
    trained on, from the image digests its checkpoint records (train.split_digests); trained is None for a
    checkpoint older than that record, and chosen then comes from where_chosen."""
    if ckpt.get("val_images") is None:
        return (len(image_files) if where_chosen(ckpt, data_root, split) else 0), None
    return images_among(image_files, ckpt["val_images"]), images_among(image_files, ckpt.get("train_images"))


def where_chosen(ckpt, data_root, split):
    """Whether `split` of `data_root` is the caption file the run validated on: the same file after conversion
    (so data/flickr8k, its absolute path and data/flickr8k/ are one root) or, when the run's data root is gone,
    the same split name under the same resolved root."""
    config = ckpt.get("config", {})
    val_split = config.get("val_split", "val")
    try:
        scored, validated = find_split(data_root, split)[1], find_split(config.get("data_root", ""), val_split)[1]
        return scored.resolve() == validated.resolve()
    except (OSError, ValueError):
        return split == val_split and Path(data_root).resolve() == Path(config.get("data_root", "")).resolve()


def same_images_note(ckpt, data_root, split, image_files):
    """(chosen, trained, lines to print): warnings when the split holds images best.pt was chosen on (its run's
    validation split: the scores are optimistic) or trained on (they overstate what it does on unseen images,
    e.g. after a dataset's split was redrawn). On COCO the first is val2017 unless a held-out split (Karpathy's)
    is used."""
    chosen, trained = seen_images(ckpt, data_root, split, image_files)
    n, lines = len(image_files), []
    # A run started with --init-from records the images of the checkpoints it started from too (train.image_records)
    init_from = ckpt.get("config", {}).get("init_from")
    which_model = f"the checkpoint (or {init_from}, which it started from)" if init_from else "the checkpoint"
    if chosen:
        which = "these" if chosen == n else f"{chosen:,} of these {n:,}"
        lines.append(f"note: {which_model} was chosen on {which} {split} images (its validation split), so these "
                     "scores are optimistic; score a split training never saw (test, or a Karpathy test split on "
                     "COCO)")
    if trained:
        lines.append(f"warning: {trained:,} of these {n:,} {split} images are among those {which_model} was "
                     "trained on, so these scores overstate what it does on new images; score a split that "
                     "training never saw")
    return chosen, trained, lines


def evaluate_checkpoint(checkpoint, split=None, beam=1, max_len=None, length_penalty=0.0, data_root=None,
                        out_dir=None, batch_size=256, device="auto", num_workers=None, backend="auto", save=True,
                        progress=True, word_rules=True):
    """Caption every usable image of a split with a checkpoint, score the captions and (save) write them.

    Returns (scores, captions): scores is a Scores dict (Bleu_1..4, METEOR, ROUGE_L, CIDEr, and on shapes
    data object_f1 and object_exact; `.missing` says why any is absent; `.diagnostics`, what the scores hide:
    metrics.caption_diagnostics; `.files`, the two files written), captions {image_id: caption}.
    split None: default_split of the data root (test on shapes, val on COCO);
    max_len None: the checkpoint's training max_len; data_root None: the checkpoint's; out_dir None: the
    checkpoint's folder, which receives captions_<split>_beam<k>.json (COCO results format) and
    scores_<split>_beam<k>.json, with decoding_suffix's suffix when a setting differs from the checkpoint's
    defaults. word_rules=False decodes without model.word_rules (<unk> and any last word allowed), to measure
    what the rules change.
    """
    device = get_device(device)
    encoder, decoder, vocab, ckpt = load_checkpoint(checkpoint, device)
    decoder.has_word_rules = word_rules
    settings = checkpoint_settings(ckpt, data_root=data_root, num_workers=num_workers)
    max_len = checkpoint_max_len(ckpt, max_len)
    split = split or default_split(settings["data_root"])
    image_dir, annotations = find_split(settings["data_root"], split)
    dataset = CocoCaptionDataset(image_dir, annotations, vocab, cache_dir=settings.get("cache_dir", DEFAULT_CACHE_DIR))
    chosen, trained, notes = same_images_note(ckpt, settings["data_root"], split, dataset.image_files)
    for line in notes if progress else ():
        print(line)
    features, ok, failures = split_image_features(encoder, dataset, settings, ckpt["model_args"], device, batch_size)
    for file_name, reason in failures.items():  # decode failures join the header-time skips in one summary
        dataset.image_report.add(reason, file_name)
    if failures:
        print(f"{annotations.name}: {dataset.image_report.describe()} while computing features")
    references = dataset.references()
    usable = [i for i, image_id in enumerate(dataset.image_ids) if ok[i] and image_id in references]
    if not usable:
        raise ValueError(f"{annotations} has no usable image with captions to evaluate")
    captions = {}
    for start in tqdm(range(0, len(usable), batch_size), desc=f"captioning {split} (beam {beam})", unit="batch",
                      leave=False, disable=None if progress else True):
        chunk = usable[start:start + batch_size]
        texts = caption_batch(encoder, decoder, vocab, features=features[chunk], beam=beam, max_len=max_len,
                              length_penalty=length_penalty)
        captions.update(zip((dataset.image_ids[i] for i in chunk), texts))
    values = caption_metrics(dataset, captions, settings["data_root"], split, metrics=None, backend=backend)
    missing = {} if "METEOR" in values else {"METEOR": meteor_missing_reason()}
    scores = Scores(values, {**missing, "SPICE": SPICE_NOTE})
    scores.diagnostics = caption_diagnostics(
        captions, training_captions(settings["data_root"], settings.get("cache_dir", DEFAULT_CACHE_DIR)),
        NO_END_AFTER, max_len=max_len)
    scores.files = None  # (captions file, scores file) once written
    if save:
        n = len(dataset.image_files)
        recorded = ckpt.get("val_images") is not None and n in (chosen, trained)
        suffix = decoding_suffix(ckpt, max_len, length_penalty, word_rules, settings["data_root"], recorded)
        info = dict(checkpoint=str(checkpoint), data_root=str(settings["data_root"]), split=split, beam=beam,
                    max_len=max_len, length_penalty=length_penalty, word_rules=word_rules,
                    default_decoding=not suffix, n_images=len(captions), chosen_on_this_split=bool(chosen),
                    images_chosen_on=chosen, images_trained_on=trained, notes=notes, diagnostics=scores.diagnostics)
        scores.files = write_results(out_dir or Path(checkpoint).parent, split, beam, captions, scores, info, suffix)
        if not suffix:  # the model card lists the model as it captions by default; other settings are measurements
            model_card.add_scores(checkpoint, {**info, "scores": dict(scores)})  # its row on MODEL_CARD.md
    return scores, captions


def training_captions(data_root, cache_dir=None):
    """The training split's captions as token lists, to count the captions that copy one or end as none does;
    () when the root has none. With a cache_dir the tokens come from the token cache that training writes
    (vocabulary.caption_tokens: keyed by the caption file's sha256, written atomically), so only the first
    evaluation of a caption file tokenizes it (about 90 s on COCO)."""
    try:
        path = train_captions_file(data_root)
        texts = read_captions(path)
    except (FileNotFoundError, ValueError):
        return ()
    tokens = caption_tokens(path, texts, cache_dir)  # {text: words}
    return [tokens[t] for t in texts]


def write_results(out_dir, split, beam, captions, scores, info=None, suffix=""):
    """Write captions (COCO results: [{"image_id", "caption"}]) and scores JSON; returns both paths."""
    captions_file, scores_file = output_paths(out_dir, split, beam, suffix)
    captions_file.parent.mkdir(parents=True, exist_ok=True)
    results = [{"image_id": i, "caption": captions[i]} for i in sorted(captions)]
    captions_file.write_text(json.dumps(results, indent=1))
    record = {**(info or {}), "scores": dict(scores), "missing": getattr(scores, "missing", {})}
    scores_file.write_text(json.dumps(record, indent=1))
    return captions_file, scores_file


def split_image_files(data_root, split):
    """{image_id: image path} of a split, for showing images beside their captions."""
    image_dir, annotations = find_split(data_root, split)
    coco = load_coco(annotations)
    return {i: image_dir / img["file_name"] for i, img in coco.imgs.items()}


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Caption a split with a checkpoint and score the captions (BLEU 1-4, METEOR, ROUGE-L, CIDEr; "
                    "object F1 on shapes). Writes captions_<split>_beam<k>.json (COCO results format) and "
                    "scores_<split>_beam<k>.json; settings other than the checkpoint's defaults add a suffix, e.g. "
                    "scores_val_beam3_maxlen2_norules.json, and leave the model card alone.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint file; None: best.pt of the newest run under --runs-dir")
    parser.add_argument("--runs-dir", default="runs", help="where training runs live (for the default checkpoint)")
    parser.add_argument("--split", default=None,
                        help="split to caption: captions_<split><year>.json; None: test where the data root has "
                             "test captions (shapes), else val (COCO)")
    parser.add_argument("--beam", type=int, default=1, help="beam width; 1 is greedy decoding")
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest caption, in words; None: the checkpoint's training max_len")
    parser.add_argument("--length-penalty", type=float, default=0.0,
                        help="GNMT length penalty alpha for beam search; 0 ranks by plain log-probability")
    parser.add_argument("--no-word-rules", dest="word_rules", action="store_false",
                        help="decode without the word rules (no <unk>, no caption ending on 'a', 'of', ...), to "
                             "measure what they change")
    parser.add_argument("--data-root", default=None, help="COCO-layout data root; None: the checkpoint's data_root")
    parser.add_argument("--out", default=None, help="folder for the captions and scores; None: the checkpoint's folder")
    parser.add_argument("--batch-size", type=int, default=256, help="images captioned at once")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="image-decoding processes for CNN features; None: the checkpoint's setting")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="metrics: java (pycocoevalcap, with METEOR), python (no Java, no METEOR), auto")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), or a torch device name")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.beam < 1 or args.batch_size < 1:
            raise ValueError("--beam and --batch-size must be at least 1")
        checkpoint = args.checkpoint or latest_checkpoint(args.runs_dir)
        if args.split is None:  # named here too: the output files and the summary carry it
            settings = checkpoint_settings(read_checkpoint(checkpoint), data_root=args.data_root)
            args.split = default_split(settings["data_root"])
        scores, captions = evaluate_checkpoint(checkpoint, args.split, args.beam, args.max_len, args.length_penalty,
                                               args.data_root, args.out, args.batch_size, args.device,
                                               args.num_workers, args.backend, word_rules=args.word_rules)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # CheckpointError is a ValueError
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return 1
    name = "greedy" if args.beam == 1 else f"beam {args.beam}"
    print(f"{checkpoint}: {len(captions)} {args.split} images\n")
    print(scores_table({name: scores}))
    print("\n" + "\n".join(diagnostics_lines(scores.diagnostics)))
    captions_file, scores_file = scores.files
    print(f"\nwrote {captions_file} and {scores_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
