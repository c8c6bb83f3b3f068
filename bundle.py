"""The bundled model: a small checkpoint under models/ that captions photographs right after set-up.

    python bundle.py export runs/NAME/best.pt models/flickr8k.pt      # a compact copy of a trained checkpoint
    python bundle.py card models/flickr8k.pt --scores DIR         # models/MODEL_CARD.md from evaluate.py's scores

`make model DATA_ROOT=path/to/flickr8k` runs the whole recipe: `train.py --preset flickr8k-best`, the export,
evaluate.py on the development split (greedy and beam 3), and the card.

The export keeps what captioning needs and nothing else:
- the decoder's and the encoder head's weights: matrices in float16, vectors (biases, LayerNorm, the feature
  statistics) in float32, where half precision would cost accuracy for almost no bytes;
- the vocabulary, model_args, the training settings, the image digests of the training and validation images
  (so evaluate.py still warns about overlaps), and the chosen epoch's validation scores (not its timings).
It drops the optimiser and RNG state, and the CNN backbone: its ImageNet weights come from torch's cache (`make
weights`) or torchvision's download, and the file keeps their digest, so the head never runs on other weights.
The same best.pt always gives the same bytes: no time stamps, no paths of this machine.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

import model_card
from features import atomic_save
from model import (CHECKPOINT_FORMAT, PREFERRED_WEIGHTS, build_model, load_checkpoint, read_checkpoint,
                   resolve_weights, state_digest, weights_path)
from vocabulary import file_digest as sha256

REPO = Path(__file__).resolve().parent
BUNDLED_MODEL = REPO / "models" / "flickr8k.pt"
CARD = "MODEL_CARD.md"
# Settings that say where a run lived or how it logged, not what it learnt: left out of the bundle.
MACHINE_SETTINGS = ("out_dir", "run_name", "cache_dir", "resume", "device", "num_workers", "log_every",
                    "save_every", "init_from")
# Tensors with fewer elements than this stay float32 (biases, norms, feature statistics): a few KB in all.
HALF_FROM = 4096


def compact(tensor):
    """float16 for large float tensors, the tensor as it is otherwise."""
    if tensor.is_floating_point() and tensor.numel() >= HALF_FROM:
        return tensor.to(torch.float16)
    return tensor.clone()


def export(checkpoint, out, data_root_name="data/flickr8k"):
    """Write the bundled copy of a trained checkpoint (see the module's docstring); returns out's sha256."""
    ckpt = read_checkpoint(checkpoint)
    args = ckpt["model_args"]
    if args.get("train_backbone"):
        raise ValueError(f"{checkpoint} fine-tuned its CNN: its backbone cannot come from torchvision")
    weights = resolve_weights(args["backbone"], PREFERRED_WEIGHTS.get(args["backbone"], True))
    encoder, _ = build_model({**args, "pretrained": False})
    backbone_keys = {f"backbone.{k}" for k in encoder.backbone.state_dict()}
    backbone = {k[len("backbone."):]: v for k, v in ckpt["encoder"].items() if k in backbone_keys}
    config = {k: v for k, v in ckpt["config"].items() if k not in MACHINE_SETTINGS}
    config["data_root"] = data_root_name  # the same file whichever folder held the data
    bundle = {
        "format": CHECKPOINT_FORMAT,
        "model_args": {**args, "pretrained": True},
        "backbone": {"name": args["backbone"], "weights": weights.name, "file": weights_path(weights).name,
                     "sha256": state_digest(backbone)},
        "encoder": {k: compact(v) for k, v in ckpt["encoder"].items() if k not in backbone_keys},
        "decoder": {k: compact(v) for k, v in ckpt["decoder"].items()},
        "vocab": ckpt["vocab"], "config": config, "epoch": ckpt["epoch"], "metrics": scores_only(ckpt.get("metrics", {})),
        "train_images": ckpt.get("train_images"), "val_images": ckpt.get("val_images"),
        "data": data_summary(checkpoint, data_root_name),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(bundle, out)
    return sha256(out)


def scores_only(metrics):
    """The chosen epoch's validation row without its timings (seconds, speeds, shares of a step's time), which
    differ from run to run while the weights do not."""
    return {k: v for k, v in metrics.items() if not k.endswith(("_s", "_share"))}


def data_summary(checkpoint, root_name):
    """The run's data summary (name, layout, split sizes) from its model card, without this machine's path."""
    data = model_card.read_state(Path(checkpoint).parent).get("data")
    return {**data, "root": root_name} if data else None


def read_scores(scores_dir):
    """{(split, beam): record} from the scores_<split>_beam<k>.json files evaluate.py wrote into scores_dir."""
    found = {}
    for path in sorted(Path(scores_dir).glob("scores_*_beam*.json")):
        record = json.loads(path.read_text())
        if record.get("word_rules") is False or record.get("length_penalty"):  # measurements, not the model
            continue
        found[(record["split"], record["beam"])] = record
    return found


SCORE_NAMES = (("Bleu_1", "BLEU-1"), ("Bleu_4", "BLEU-4"), ("METEOR", "METEOR"), ("ROUGE_L", "ROUGE-L"),
               ("CIDEr", "CIDEr"))


def scores_table(records):
    lines = ["| split | decoding | images | " + " | ".join(name for _, name in SCORE_NAMES) + " |",
             "| --- | --- | --- |" + " --- |" * len(SCORE_NAMES)]
    for (split, beam), record in sorted(records.items()):
        decoding = "greedy" if beam == 1 else f"beam {beam}"
        values = [f"{record['scores'][k]:.3f}" if k in record["scores"] else "" for k, _ in SCORE_NAMES]
        lines.append(f"| {split} | {decoding} | {record['n_images']:,} | " + " | ".join(values) + " |")
    return lines


def training_time(run_dir):
    """'29 min 49 s on Linux x86_64, 2 CPU cores, ...' from the run's model card sessions; '' without them."""
    sessions = model_card.read_state(run_dir).get("sessions", []) if run_dir else []
    if not sessions:
        return ""
    machines = sorted({s["machine"] for s in sessions})
    return (f" Training took {model_card.fmt_time(sum(s['wall_s'] for s in sessions))} "
            f"({len(sessions)} session{'s' * (len(sessions) > 1)}) on {'; '.join(machines)}.")


def card_text(bundle_path, records, run_dir=None):
    """MODEL_CARD.md of the bundled model, from the file itself and evaluate.py's records of it."""
    bundle_path = Path(bundle_path)
    encoder, decoder, vocab, ckpt = load_checkpoint(bundle_path)
    a, config = ckpt["model_args"], ckpt["config"]
    params = sum(p.numel() for p in decoder.parameters()) + sum(
        v.numel() for k, v in ckpt["encoder"].items())
    size_mb = bundle_path.stat().st_size / 1e6
    scst = f" then {config['scst_epochs']} self-critical epochs (CIDEr-D reward)," if config.get("scst_epochs") else ""
    lines = [
        f"# Model card: {bundle_path.name}", "",
        "The captioner that ships with this repository: `python caption.py photo.jpg`, "
        "`torch.hub.load(REPO, \"captioner\")` and `3_Inference` use it when no checkpoint is named.", "",
        "## What it is", "",
        f"- {a['decoder']} decoder (embeddings {a['embed_size']}, hidden {a['hidden_size']}, {a['num_layers']} "
        f"layer) on frozen {a['backbone']} features at {a['image_size']} px; {params / 1e6:.2f} million stored "
        f"parameters (the CNN's own {ckpt['backbone']['weights']} ImageNet weights are not in the file: "
        f"`make weights` puts {ckpt['backbone']['file']} into torch's cache).",
        f"- Vocabulary: {len(vocab):,} words. Trained {config['epochs']} cross-entropy epochs,{scst} and epoch "
        f"{ckpt['epoch']} was chosen by greedy validation {config['best_metric']}.",
        f"- File: {size_mb:.1f} MB; weight matrices in float16, vectors in float32; no optimiser state.",
        f"- sha256: `{sha256(bundle_path)}`", "",
        "## Data and terms", "",
        f"- {model_card.trained_on(ckpt)}.",
        "- Flickr8k (Hodosh, Young and Hockenmaier, JAIR 2013): its 6,000 official training images and their "
        "30,000 captions; `best.pt` was chosen on the 1,000 development images. The captions are for research use; "
        "each photo belongs to its Flickr owner. Use this model for research and learning.", "",
        "## Scores", "",
        "evaluate.py on this file (the word rules on: no `<unk>`, no ending on an article, a preposition or a "
        "word that rarely ends a caption). The development split chose the epoch, so these are a little "
        "optimistic.", "",
        *scores_table(records), "",
        "## What it cannot do", "",
        "It knows Flickr8k's world: people, dogs, children, sports and outdoor scenes. Anything else is described "
        "in those words (a cat becomes a dog; a cup of coffee may become a person). It was never trained on COCO.",
        "Its captions are short and often alike: self-critical training favours the phrases that score well.", "",
        "## Rebuild", "",
        "```", "make model DATA_ROOT=path/to/flickr8k", "```", "",
        "It trains `python train.py --preset flickr8k-best` from a cold cache, exports the best epoch with "
        "`python bundle.py export`, scores the development split with evaluate.py (greedy and beam 3) and writes "
        "this card." + training_time(run_dir) + " On one machine the seeded recipe repeats bit for bit, so a rebuild "
        "gives this same file (tests/test_bundle.py checks it on a small run); another kind of CPU may round "
        "differently and give other last bits.",
    ]
    return "\n".join(lines) + "\n"


def write_card(bundle_path, scores_dir, run_dir=None):
    records = read_scores(scores_dir)
    if not records:
        raise FileNotFoundError(f"no scores_<split>_beam<k>.json in {scores_dir}: run evaluate.py --checkpoint "
                                f"{bundle_path} --out {scores_dir} first")
    path = Path(bundle_path).with_name(CARD)
    model_card.atomic_write_text(path, card_text(bundle_path, records, run_dir))
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write the compact copy of a trained best.pt")
    ex.add_argument("checkpoint", help="a run's best.pt")
    ex.add_argument("out", nargs="?", default=str(BUNDLED_MODEL.relative_to(REPO)), help="the bundled file")
    card = sub.add_parser("card", help="write MODEL_CARD.md beside the bundled file from evaluate.py's scores")
    card.add_argument("bundle", nargs="?", default=str(BUNDLED_MODEL.relative_to(REPO)), help="the bundled file")
    card.add_argument("--scores", required=True, help="the folder evaluate.py --out wrote scores_*.json into")
    card.add_argument("--run", default=None, help="the run folder it was exported from (its training time)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.command == "export":
            digest = export(args.checkpoint, args.out)
            print(f"{args.out}: {Path(args.out).stat().st_size / 1e6:.2f} MB, sha256 {digest}")
        else:
            print(f"model card: {write_card(args.bundle, args.scores, args.run)}")
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
