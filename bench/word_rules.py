"""Which words may end a caption: each candidate "rare endings" rule, measured on a trained model.

    python bench/word_rules.py --checkpoint runs/NAME/best.pt --data-root path/to/flickr8k --split val

The word rules never put <end> after NO_END_AFTER's words (articles, prepositions, ...) nor after the words
that rarely end a training caption (vocabulary.rare_endings). This script replaces the checkpoint's rule by
each candidate in RULES and prints one row per rule and decoder: how many words it bars from ending a
caption, the share of the split's references that end on a barred word (captions a person wrote that the
rule forbids), BLEU-4, METEOR and CIDEr, distinct captions, and how many captions end on a word the current
rule (under 2% of its captions) bars: "on a red" and the like. Without Java, METEOR is n/a.
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_loader import CocoCaptionDataset, find_split, train_captions_file  # noqa: E402
from evaluate import checkpoint_settings, split_image_features  # noqa: E402
from metrics import caption_metrics  # noqa: E402
from model import NO_END_AFTER, caption_batch, checkpoint_max_len, load_checkpoint, register_word_rules  # noqa: E402
from vocabulary import read_captions, rare_endings, tokenize  # noqa: E402

# name: (share, fewer_than) for vocabulary.rare_endings; None: no rare endings, NO_END_AFTER only.
RULES = {"under 2% (the old rule)": (0.02, None),
         "under 2% and fewer than 20": (0.02, 20),
         "under 0.5%": (0.005, None),
         "articles and prepositions only": None,
         "under 2% and fewer than 10": (0.02, 10),
         "under 1%": (0.01, None),
         "never ended one": (1.0, 1)}
BEAMS = (1, 3)


def ending_counts(captions):
    """(occurrences, captions ended) per word, over tokenized captions."""
    tokens = [tokenize(c) for c in captions]
    return Counter(w for t in tokens for w in t), Counter(t[-1] for t in tokens if t)


def barred_words(rule, vocab, counts, endings):
    """(the vocabulary's words a rule bars from ending a caption, NO_END_AFTER's included; how many of them
    the rare-endings part adds)."""
    words = vocab.idx2word[3:]  # the special tokens are never counted
    rare = set(rare_endings(words, counts, endings, *rule)) if rule else set()
    return (set(NO_END_AFTER) & set(words)) | rare, len(rare - set(NO_END_AFTER))


def ending_on(texts, words):
    """How many of the texts (strings) end on one of the words."""
    return sum(bool(t.split()) and t.split()[-1] in words for t in texts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a best.pt")
    parser.add_argument("--data-root", default=None, help="its data root; None: the checkpoint's")
    parser.add_argument("--split", default="val", help="the split to caption and score (default: val)")
    parser.add_argument("--cache-dir", default=None, help="feature caches; None: the checkpoint's cache_dir")
    args = parser.parse_args(argv)
    encoder, decoder, vocab, ckpt = load_checkpoint(args.checkpoint)
    settings = checkpoint_settings(ckpt, data_root=args.data_root, cache_dir=args.cache_dir)
    image_dir, annotations = find_split(settings["data_root"], args.split)
    dataset = CocoCaptionDataset(image_dir, annotations, vocab, cache_dir=settings.get("cache_dir"))
    features, ok, _ = split_image_features(encoder, dataset, settings, ckpt["model_args"], "cpu")
    references = dataset.references()
    usable = [i for i, image_id in enumerate(dataset.image_ids) if ok[i] and image_id in references]
    counts, endings = ending_counts(read_captions(train_captions_file(settings["data_root"])))
    old_rule, _ = barred_words(RULES["under 2% (the old rule)"], vocab, counts, endings)
    all_refs = [r for i in usable for r in references[dataset.image_ids[i]]]
    max_len = checkpoint_max_len(ckpt)
    print(f"{args.checkpoint} on {args.split}: {len(usable)} images, {len(all_refs)} references, max_len {max_len}")
    print("| rule | decoder | rare endings | refs ending barred | BLEU-4 | METEOR | CIDEr | distinct | end on old-rule word |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, rule in RULES.items():
        barred, n_rare = barred_words(rule, vocab, counts, endings)
        register_word_rules(decoder, [vocab.unk_id, vocab.start_id], sorted(vocab.word2idx[w] for w in barred))
        refs_barred = ending_on([" ".join(tokenize(r)) for r in all_refs], barred) / len(all_refs)
        for beam in BEAMS:
            captions = {}
            for start in range(0, len(usable), 256):
                chunk = usable[start:start + 256]
                texts = caption_batch(encoder, decoder, vocab, features=features[chunk], beam=beam, max_len=max_len)
                captions.update(zip((dataset.image_ids[i] for i in chunk), texts))
            s = caption_metrics(dataset, captions, settings["data_root"], args.split, metrics=None, backend="auto")
            meteor = f"{s['METEOR']:.3f}" if "METEOR" in s else "n/a"
            texts = list(captions.values())
            print(f"| {name} | {'greedy' if beam == 1 else f'beam {beam}'} | {n_rare} | "
                  f"{refs_barred:.1%} | {s['Bleu_4']:.3f} | {meteor} | {s['CIDEr']:.3f} | {len(set(texts))} | "
                  f"{ending_on(texts, old_rule)} |", flush=True)


if __name__ == "__main__":
    main()
