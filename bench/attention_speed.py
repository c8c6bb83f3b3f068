"""The attention decoder against the seed's LSTM decoder: training captions/s, decoding images/s, cache bytes.

    python bench/attention_speed.py                  # the shapes-cpu recipe's sizes, CPU, one thread
    python bench/attention_speed.py --threads 2 --device cuda

Both models are built by train.py's own config (`--preset`, default shapes-cpu): the same encoder head on
cached maps, then the seed's decoder (`decoder="lstm"`, with the preset's levers) or the attention decoder.
Inputs are random maps of the preset's map size and random captions of --length tokens, so no dataset is
needed and both decoders do exactly the same work per caption; the <end> score is pushed down when decoding
so that every caption runs to --steps words. The two decoders are timed in alternation and the best of
--repeats runs is kept, which evens out other load on a shared machine. Prints a table; asserts nothing.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's modules

from model import autocast, beam_search, build_model, get_device, greedy_search  # noqa: E402
from train import PRESETS, make_config  # noqa: E402
from vocabulary import Vocabulary  # noqa: E402

SHAPES_VOCAB = 45  # the shapes dataset's vocabulary, special tokens included
COCO_IMAGES = 123_287  # COCO 2014 train + val


def build(cfg, kind, vocab, image_size, device):
    """(encoder, decoder, map shape) for decoder `kind` with the config's sizes, random weights."""
    args = dict(cfg.model_args(vocab), decoder=kind, pretrained=False)
    encoder, decoder = build_model(args)
    return encoder.to(device), decoder.to(device), encoder.feature_shape(image_size)


def train_rate(encoder, decoder, maps, captions, steps, device):
    """Captions per second of forward, backward and an Adam step on cached maps (what train.py does)."""
    params = [p for p in list(encoder.parameters()) + list(decoder.parameters()) if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    encoder.train(), decoder.train()
    start = None
    for i in range(steps + 1):  # the first step warms up
        if i == 1:
            sync(device)
            start = time.perf_counter()
        with autocast(device):
            scores = decoder(encoder.embed(maps), captions)  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(scores[:, 1:].reshape(-1, scores.size(-1)).float(),
                                                 captions[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return steps * len(captions) / (time.perf_counter() - start)


@torch.inference_mode()
def decode_rate(encoder, decoder, maps, max_len, beam, device):
    """Images per second of greedy (beam=1) or beam search from cached maps, every caption max_len words."""
    encoder.eval(), decoder.eval()
    sync(device)
    start = time.perf_counter()
    with autocast(device):
        embedded = encoder.embed(maps)
        if beam == 1:
            captions = greedy_search(decoder, embedded, max_len)[0]
        else:
            captions = beam_search(decoder, embedded, beam, max_len)[0]
    sync(device)
    assert all(len(c) == max_len for c in captions)  # equal work: nothing stopped early
    return len(maps) / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="shapes-cpu", choices=sorted(PRESETS), help="train.py preset: the sizes")
    parser.add_argument("--attention-size", type=int, default=0, help="attention size; 0: the config's default")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps, or auto")
    parser.add_argument("--batch-size", type=int, default=128, help="captions per training step")
    parser.add_argument("--length", type=int, default=16, help="tokens per training caption (<start> .. <end>)")
    parser.add_argument("--train-steps", type=int, default=5, help="timed training steps per run")
    parser.add_argument("--images", type=int, default=256, help="images decoded per run")
    parser.add_argument("--steps", type=int, default=20, help="words per decoded caption")
    parser.add_argument("--beam", type=int, default=3, help="beam width (also timed: greedy)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per decoder; the best is kept")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 leaves torch's default")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    cfg = make_config(args.preset, attention_size=args.attention_size or None)
    vocab = Vocabulary([f"w{i}" for i in range(SHAPES_VOCAB - 3)])
    torch.manual_seed(0)
    models = {kind: build(cfg, kind, vocab, cfg.image_size, device) for kind in ("lstm", "attention")}
    shape = models["lstm"][2]
    maps = torch.randn(args.batch_size, *shape, device=device)  # (B, C, h, w), or (B, D) for pooled features
    captions = torch.randint(3, len(vocab), (args.batch_size, args.length), device=device)
    captions[:, 0], captions[:, -1] = vocab.start_id, vocab.end_id
    decode_maps = torch.randn(args.images, *shape, device=device)
    for _, decoder, _ in models.values():  # no caption ends early: every decoder does --steps words
        with torch.no_grad():
            decoder.fc.bias[vocab.end_id] -= 1e4
    best = {kind: {} for kind in models}
    for _ in range(args.repeats):
        for kind, (encoder, decoder, _) in models.items():
            rates = {"train captions/s": train_rate(encoder, decoder, maps, captions, args.train_steps, device),
                     "greedy images/s": decode_rate(encoder, decoder, decode_maps, args.steps, 1, device),
                     f"beam {args.beam} images/s": decode_rate(encoder, decoder, decode_maps, args.steps, args.beam,
                                                              device)}
            for name, rate in rates.items():
                best[kind][name] = max(best[kind].get(name, 0.0), rate)
    per_image = 2 * torch.Size(shape).numel()  # float16, as the cache stores it
    print(f"preset {args.preset}: maps {tuple(shape)} at {cfg.image_size} px ({per_image / 1e3:.1f} KB an image in "
          f"the cache, {per_image * COCO_IMAGES / 1e9:.1f} GB for COCO's {COCO_IMAGES:,}); device {device}, "
          f"{torch.get_num_threads()} thread(s); attention size {models['attention'][1].attention.key.out_features}")
    names = list(best["lstm"])
    print(f"{'':>22}" + "".join(f"{n:>20}" for n in names))
    for kind in models:
        print(f"{kind + ' decoder':>22}" + "".join(f"{best[kind][n]:>20,.0f}" for n in names))
    print(f"{'attention / lstm':>22}" + "".join(f"{best['attention'][n] / best['lstm'][n]:>20.2f}" for n in names))


if __name__ == "__main__":
    main()
