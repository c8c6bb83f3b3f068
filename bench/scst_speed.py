"""Self-critical speed: images per second of scst.py's step against captions per second of cross-entropy steps.

    python bench/scst_speed.py --checkpoint runs/NAME/last.pt     # a trained model, its run's data and cache

Both kinds of step train the same model from the same feature cache, in one process, interleaved in rounds so
that a machine shared with other jobs slows both alike:
- cross-entropy: batch_size captions of one length, as train.py's epochs take them;
- self-critical: batch_size // scst_samples images, scst_samples captions sampled for each, their CIDEr-D
  reward, the mean-of-others baseline, the teacher-forced log-probabilities and the update (scst.scst_step).
It prints captions per second, images per second, and the share of the self-critical step spent in the reward.
"""
import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import scst  # noqa: E402
from data_loader import LengthBatchSampler  # noqa: E402
from model import load_checkpoint  # noqa: E402
from train import Captioner, TrainConfig, caption_loss, load_split  # noqa: E402


def xe_step(model, optimizer, captions, inputs):
    loss = caption_loss(model(inputs, captions, True), captions)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a checkpoint whose run's data and cache to use")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (cross-entropy steps, self-critical steps)")
    parser.add_argument("--steps", type=int, default=4, help="steps of each kind per round")
    parser.add_argument("--samples", type=int, default=None, help="captions per image (default: the config's)")
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest sampled caption (default: the config's scst_max_len, else max_len)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="captions per step, sampled ones too (default: the config's)")
    args = parser.parse_args(argv)
    encoder, decoder, vocab, ckpt = load_checkpoint(args.checkpoint)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in ckpt["config"].items() if k in known})
    for flag, name in ((args.samples, "scst_samples"), (args.max_len, "scst_max_len"), (args.batch_size, "batch_size")):
        if flag:
            cfg = dataclasses.replace(cfg, **{name: flag})
    device = torch.device("cpu")
    split = load_split(cfg, cfg.train_split, vocab, encoder, device)
    model = Captioner(encoder, decoder)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-6)  # tiny steps: the model stays what it was
    reward = scst.CiderD(scst.training_references(split.dataset, split.usable), vocab)
    lengths = split.dataset.lengths[split.usable]
    xe_batches = [split.usable[b] for b in LengthBatchSampler(lengths, cfg.batch_size, seed=0).batches(0)
                  if len(b) == cfg.batch_size]
    images = np.unique(split.dataset.caption_image[split.usable])
    per_step = cfg.batch_size // cfg.scst_samples
    scst_batches = scst.epoch_images(images, per_step, 0, 0)
    scst_batches = [b for b in scst_batches if len(b) == per_step]
    xe_time = sc_time = reward_time = sample_time = 0.0
    n_captions = n_images = 0
    for r in range(args.rounds):
        model.train()
        t0 = time.perf_counter()
        for s in range(args.steps):
            index = torch.as_tensor(xe_batches[(r * args.steps + s) % len(xe_batches)])
            captions, inputs = split.batch(index)
            xe_step(model, optimizer, captions, inputs)
            n_captions += len(index)
        xe_time += time.perf_counter() - t0
        model.eval()  # as scst_epoch runs it: dropout off
        for s in range(args.steps):
            batch = scst_batches[(r * args.steps + s) % len(scst_batches)]
            stats = scst.scst_step(model.encoder, model.decoder, optimizer, split.features[torch.as_tensor(batch)].float(),
                                   torch.as_tensor(batch), reward, cfg.scst_samples, "mean",
                                   cfg.scst_max_len or cfg.max_len, cfg.grad_clip)
            sc_time += stats["step_s"]
            reward_time += stats["reward_s"]
            sample_time += stats["sample_s"]
            n_images += len(batch)
    print(f"threads {torch.get_num_threads()}, {cfg.batch_size} captions per cross-entropy step, "
          f"{per_step} images x {cfg.scst_samples} samples per self-critical step")
    print(f"cross-entropy: {n_captions / xe_time:,.0f} captions/s")
    print(f"self-critical: {n_images / sc_time:,.1f} images/s ({n_images * cfg.scst_samples / sc_time:,.0f} sampled "
          f"captions/s); reward {reward_time / sc_time:.1%} of the step time "
          f"({1000 * reward_time / (args.rounds * args.steps):.1f} ms a step), sampling {sample_time / sc_time:.1%}, "
          f"the teacher-forced pass, backward and update {1 - (reward_time + sample_time) / sc_time:.1%}; "
          f"sampled captions up to {cfg.scst_max_len or cfg.max_len} words")


if __name__ == "__main__":
    main()
