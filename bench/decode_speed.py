"""Decoding speed: batched greedy and beam search (model.py) against the seed's one-image loop.

    python bench/decode_speed.py                       # CPU; a COCO-like 10,000-word vocabulary and the shapes one
    python bench/decode_speed.py --device cuda --images 8192
    python bench/decode_speed.py --small               # a quick look with fewer images

Decoder only, from image embeddings (the CNN is not timed): the seed's sizes, embedding 100 and hidden 512.
The seed captioned one image at a time, ran a fixed number of steps and called .item() on every word (the
Udacity project's DecoderRNN.sample); greedy_search and beam_search decode a whole batch per step. The weights
are random and the <end> score is pushed far down, so that no caption stops early: every decoder does exactly
--steps words per image, and the figures compare equal work. Batched decoding runs under bf16 autocast on CUDA
(as caption.py runs it); the seed loop in fp32. Prints a table; asserts nothing about time.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's modules

from model import DecoderRNN, autocast, beam_search, get_device, greedy_search  # noqa: E402

EMBED_SIZE, HIDDEN_SIZE = 100, 512  # the seed's decoder
COCO_VOCAB = 10_000  # about what COCO's training captions give with threshold 5
SHAPES_VOCAB = 45  # the shapes dataset's vocabulary, special tokens included
NEVER = -1e4  # added to <end>'s score so that no caption ends before --steps words


@torch.inference_mode()
def seed_sample(decoder, inputs, steps):
    """The seed's loop for one image: a fixed number of steps, one .item() per word. inputs (1, 1, E)."""
    ids, states = [], None
    for _ in range(steps):
        hidden, states = decoder.lstm(inputs, states)  # (1, 1, H)
        word = decoder.fc(hidden.squeeze(1)).argmax(1)  # (1,)
        ids.append(word.item())  # a host sync on every step
        inputs = decoder.embed(word).unsqueeze(1)  # (1, 1, E)
    return ids


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats=1):
    """Best wall time of `repeats` runs, after one warm-up run."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def make_decoder(vocab_size, device):
    torch.manual_seed(0)
    decoder = DecoderRNN(EMBED_SIZE, HIDDEN_SIZE, vocab_size).to(device).eval()
    with torch.no_grad():
        decoder.fc.bias[decoder.end_id] += NEVER
    return decoder


def bench_vocab(vocab_size, args, device):
    """Rows (name, images, seconds) for one vocabulary size."""
    decoder = make_decoder(vocab_size, device)
    embedded = torch.randn(args.images, EMBED_SIZE, device=device)  # (N, E): what the encoder would give
    seed_n = min(args.images, args.seed_images)

    def seed():
        for i in range(seed_n):
            seed_sample(decoder, embedded[i].view(1, 1, -1), args.steps)

    def batched(decode):
        def run():
            with autocast(device):
                for start in range(0, args.images, args.batch_size):
                    decode(embedded[start:start + args.batch_size])
        return run

    greedy = batched(lambda x: greedy_search(decoder, x, args.steps))
    beam = batched(lambda x: beam_search(decoder, x, args.beam, args.steps))
    check_batching(decoder, embedded[:8], args.steps, device)
    return [("seed loop, 1 image", seed_n, timed(seed, device)),
            (f"greedy, batch {args.batch_size}", args.images, timed(greedy, device, args.repeats)),
            (f"beam {args.beam}, batch {args.batch_size}", args.images, timed(beam, device, args.repeats))]


def check_batching(decoder, embedded, steps, device):
    """Batched greedy gives each image the caption that greedy decoding of that image alone gives."""
    with autocast(device):
        together, _ = greedy_search(decoder, embedded, steps)
        alone = [greedy_search(decoder, embedded[i:i + 1], steps)[0][0] for i in range(len(embedded))]
    if device.type == "cpu" and together != alone:  # bf16 on CUDA may flip a near tie between batch shapes
        raise AssertionError("batched greedy decoding differs from one image at a time")
    if any(len(ids) != steps for ids in together):
        raise AssertionError("a caption ended early: the <end> suppression did not hold")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps, or auto")
    parser.add_argument("--images", type=int, default=2048, help="images decoded by the batched decoders")
    parser.add_argument("--seed-images", type=int, default=256, help="images decoded by the (slow) seed loop")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch for greedy and beam search")
    parser.add_argument("--beam", type=int, default=3, help="beam width")
    parser.add_argument("--steps", type=int, default=20, help="words per caption (the seed's max_len)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[COCO_VOCAB, SHAPES_VOCAB], help="vocabulary sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the batched decoders (best is kept)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 leaves torch's default")
    parser.add_argument("--small", action="store_true", help="a quick run: 256 images, 64 for the seed loop, 1 repeat")
    args = parser.parse_args(argv)
    if args.small:
        args.images, args.seed_images, args.repeats = 256, 64, 1
    return args


def main(argv=None):
    args = parse_args(argv)
    device = get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"decoder: embedding {EMBED_SIZE}, hidden {HIDDEN_SIZE}, {args.steps} words per caption; "
          f"device {device} ({name}); torch {torch.__version__}\n")
    print(f"{'vocab':>6}  {'decoder':<20} {'images':>7} {'seconds':>8} {'images/s':>9} {'vs seed':>8}")
    for vocab_size in args.vocab:
        rows = bench_vocab(vocab_size, args, device)
        seed_rate = rows[0][1] / rows[0][2]
        for label, n, seconds in rows:
            rate = n / seconds
            print(f"{vocab_size:>6}  {label:<20} {n:>7} {seconds:>8.3f} {rate:>9,.0f} {rate / seed_rate:>7.1f}x")
    print("\nvs seed: images per second over the seed loop's, for the same vocabulary (greater is faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
