"""Training correctness (issue 13): the loss per real target, --resume flags, --best-metric's direction, the best
score on resume, and collective skips and stops under torchrun."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import train as train_mod
from conftest import tiny_train_config
from model import load_checkpoint
from train import caption_loss, read_metrics, train


# ---------------------------------------------------------------------------------------------------
# Item 5: the loss over real targets (words and <end>), averaged over tokens
# ---------------------------------------------------------------------------------------------------
def test_caption_loss_leaves_out_the_start_target_and_averages_over_tokens():
    torch.manual_seed(0)
    B, T, V = 3, 5, 7
    scores = torch.randn(B, T, V)  # (B, T, V)
    captions = torch.randint(0, V, (B, T))  # (B, T)
    by_hand = -torch.log_softmax(scores, -1).gather(2, captions.unsqueeze(-1)).squeeze(-1)[:, 1:].mean()  # (B, T-1)
    assert caption_loss(scores, captions).item() == pytest.approx(by_hand.item(), rel=1e-6)
    changed = scores.clone()
    changed[:, 0] = 1e4 * torch.randn(B, V)  # position 0 predicts <start>: whatever a decoder puts there is ignored
    assert caption_loss(changed, captions).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert train_mod.real_targets(captions) == B * (T - 1)


def per_token_loss_of_split(run_dir, split_name):
    """The loss per real target over a whole split, computed here from scratch: summed cross-entropy of every
    word and <end>, divided by how many there are. Also returns how many caption lengths the split holds."""
    encoder, decoder, vocab, ckpt = load_checkpoint(run_dir / "last.pt")
    cfg = train_mod.TrainConfig(**ckpt["config"])
    split = train_mod.load_split(cfg, split_name, vocab, encoder, torch.device("cpu"))
    total, count = 0.0, 0
    with torch.no_grad():
        for length in np.unique(split.dataset.lengths[split.usable]):
            index = torch.as_tensor(split.usable[split.dataset.lengths[split.usable] == length])  # (N,)
            captions, features = split.batch(index)  # (N, L), (N, ...)
            scores = decoder(encoder.embed(features), captions)  # (N, L, V)
            total += F.cross_entropy(scores[:, 1:].reshape(-1, scores.size(-1)), captions[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += captions[:, 1:].numel()
    return total / count, len(np.unique(split.dataset.lengths[split.usable]))


def test_train_and_val_loss_are_per_real_token_means_over_the_split(tiny_shapes, tmp_path):
    """With lr 0 the weights never move, so the epoch's training loss and the validation loss (the tiny config
    validates on the training split) must both equal the per-token loss of the split computed from scratch.
    Captions of several lengths make a per-caption or per-batch mean differ from it."""
    run_dir = train(tiny_train_config(tiny_shapes, tmp_path, epochs=1, lr=0.0, batch_size=32))
    expected, n_lengths = per_token_loss_of_split(run_dir, "train")
    assert n_lengths > 2
    (row,) = read_metrics(run_dir)
    assert row["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert row["val_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert row["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert row["train_ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
