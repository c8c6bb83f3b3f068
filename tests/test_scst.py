"""Self-critical training (scst.py): the CIDEr-D reward against the repository's scorer, sampling, the loss."""
import random

import pytest
import torch

import scst
from model import AttentionDecoder, DecoderRNN, greedy_search, register_word_rules
from scst import (CiderD, HumanCaptions, caption_log_probs, end_mask, human_caption_loss, mean_of_others,
                  sample_captions, scst_loss, scst_step)
from vocabulary import Vocabulary

import metrics as scorer
from conftest import assert_same_training_state

WORDS = ["a", "red", "blue", "circle", "square", "and", "the", "small", "don't", "big", "to", "left", "of"]
REFERENCES = [  # raw captions, as annotation files hold them: case, punctuation, words outside the vocabulary
    ["A red circle.", "a small red circle to the left of a square", "A red, red circle and a circle!"],
    ["a blue square", "The blue square is big.", "a a a blue blue square square"],
    ["Don't look: a big red square and a small blue circle", "a red square and a blue circle"],
    ["a circle", "A zebra near a circle.", "a circle to the left of the circle"],
    ["the small blue circle", "small blue circle", "a small circle that is blue", "blue blue blue"],
]


def vocabulary():
    return Vocabulary(WORDS)


def scorer_cider(references, candidates):
    """Per-image CIDEr-D from the repository's own pure-Python scorer: document frequencies of `references`
    (all images), each image's candidate (tokenized text) against its references."""
    refs = {i: [scorer.ptb_tokenize(r) for r in image_refs] for i, image_refs in enumerate(references)}
    cands = {i: scorer.ptb_tokenize(c) for i, c in enumerate(candidates)}
    ref_tuple = tuple(tuple(refs[i]) for i in range(len(references)))
    idf, log_images, ref_norms = scorer._cider_references(ref_tuple)
    scores = []
    for i in range(len(references)):
        cand = scorer._caption(cands[i])
        weights, norms = scorer._tfidf(cand, idf, log_images)
        similarity = sum(scorer._cider_similarity(cand, weights, norms, scorer._caption(r), n, idf)
                         for r, n in zip(refs[i], ref_norms[i]))
        scores.append(scorer.CIDER_SCALE * similarity / (scorer.MAX_N * len(refs[i])))
    corpus = scorer.score_tokenized(refs, cands, metrics=["CIDEr"])["CIDEr"]
    assert sum(scores) / len(scores) == pytest.approx(corpus, rel=1e-12)  # the helper is the scorer's own sum
    return scores


def as_tokens(captions, vocab, length):
    """Lists of words -> (C, length) ids: the words, <end>, then <end> padding (cut at `length`, no <end>)."""
    out = torch.full((len(captions), length), vocab.end_id, dtype=torch.long)
    for i, words in enumerate(captions):
        ids = [vocab(w) for w in words][:length]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


END_WORD = "endword"  # the end token written out as a word, for the scorer's side


@pytest.mark.parametrize("end_token", [False, True])
def test_cider_reward_equals_the_scorer_on_the_same_captions_and_document_frequencies(end_token):
    """With end_token the reward is the scorer's CIDEr-D once an explicit end word is appended to every
    reference and to every caption that ended (not to one cut at the length cap)."""
    vocab = vocabulary()
    cider = CiderD(REFERENCES, vocab, end_token=end_token)
    ended = lambda text: f"{text} {END_WORD}".strip() if end_token else text
    references = [[ended(r) for r in image_refs] for image_refs in REFERENCES]
    rng = random.Random(0)
    handmade = [
        ["a", "red", "circle"],
        [],  # empty: <end> first
        ["a", "a", "a", "a", "blue", "blue", "square", "square"],  # repeated n-grams: clipped
        ["don't", "a", "big", "red", "square"],  # one vocabulary word, two PTB tokens
        ["<unk>", "circle", "circle", "circle", "circle", "circle", "circle", "circle", "circle", "circle"],
    ]
    samples = 4
    captions = []  # samples captions per image, image-major, as sample_captions orders them
    for i in range(len(REFERENCES)):
        captions.append(handmade[i])
        captions += [[rng.choice(WORDS[:8]) for _ in range(rng.randint(0, 9))] for _ in range(samples - 1)]
    length = 9  # the last handmade caption never reaches <end>: it is cut at 9 words, as sampling cuts it
    tokens = as_tokens(captions, vocab, length)
    tokens[5, 3:] = torch.tensor([vocab.end_id, vocab("red"), vocab("circle"), vocab.end_id, vocab("a"),
                                  vocab("a")])  # words after <end> are not the caption's
    images = torch.arange(len(REFERENCES)).repeat_interleave(samples)
    rewards = cider.rewards(tokens, images, vocab.end_id)
    assert rewards.dtype == torch.float64 and rewards.shape == (len(captions),)
    for s in range(samples):
        rows = [tokens[i * samples + s] for i in range(len(REFERENCES))]
        texts = [ended(vocab.decode(row)) if (row == vocab.end_id).any() else vocab.decode(row) for row in rows]
        expected = scorer_cider(references, texts)
        assert rewards[s::samples].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert rewards[samples] == 0.0  # the empty caption (the end token alone is in every reference: idf 0)
    assert rewards[0] > 1.0 and (rewards > 0).sum() > len(captions) // 2  # a test that scores something


def test_the_end_token_costs_a_caption_that_stops_where_no_reference_stops():
    """"a small red circle to the left of a" <end>: its last bigram "a <end>" is in no reference, while
    "... of a square <end>" ends as a reference does. The end token lowers the first far more."""
    vocab = vocabulary()
    words = "a small red circle to the left of a square".split()
    tokens = as_tokens([words, words[:-1]], vocab, 12)  # both end (<end> after the last word)
    images = torch.tensor([0, 0])
    plain = CiderD(REFERENCES, vocab).rewards(tokens, images, vocab.end_id)
    ended = CiderD(REFERENCES, vocab, end_token=True).rewards(tokens, images, vocab.end_id)
    whole, fragment = (ended / plain).tolist()
    assert fragment < 0.95 * whole and whole > 0.99


def test_cider_reward_is_the_same_after_a_round_trip_through_plain_data(tmp_path):
    vocab = vocabulary()
    cider = CiderD(REFERENCES, vocab, end_token=True)
    torch.save(cider.to_dict(), tmp_path / "cider.pt")
    again = CiderD.from_dict(torch.load(tmp_path / "cider.pt", weights_only=True))
    tokens = as_tokens([["a", "red", "circle"], ["small", "blue", "circle"]], vocab, 5)
    images = torch.tensor([0, 4])
    assert torch.equal(cider.rewards(tokens, images, vocab.end_id), again.rewards(tokens, images, vocab.end_id))


def test_end_mask_keeps_the_words_and_the_first_end():
    tokens = torch.tensor([[5, 6, 1, 1, 7], [1, 4, 4, 4, 4], [3, 3, 3, 3, 3]])
    assert end_mask(tokens, 1).tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert end_mask(tokens, 1, inclusive=False).tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


DECODERS = ("lstm", "attention")
POSITIONS = 6  # annotation vectors per image for the attention decoder: its features are (B, L, E)


def tiny_decoder(vocab_size=12, seed=0, kind="lstm"):
    torch.manual_seed(seed)
    if kind == "attention":
        return AttentionDecoder(embed_size=8, hidden_size=16, vocab_size=vocab_size, attention_size=8, feature_size=8)
    return DecoderRNN(embed_size=8, hidden_size=16, vocab_size=vocab_size, image_every_step=True)


def tiny_features(batch, kind="lstm"):
    """What encoder.embed gives each decoder: (B, E), or annotation vectors (B, L, E) for attention."""
    return torch.randn(batch, POSITIONS, 8) if kind == "attention" else torch.randn(batch, 8)


@pytest.mark.parametrize("kind", DECODERS)
def test_samples_stop_at_end_and_are_padded_with_end(kind):
    decoder = tiny_decoder(kind=kind)
    torch.manual_seed(1)
    tokens = sample_captions(decoder, tiny_features(6, kind), samples=3, max_len=15)
    assert tokens.shape == (18, 15)
    ended = tokens == decoder.end_id
    first = torch.where(ended.any(1), ended.float().argmax(1), 15)
    for row, f in zip(tokens, first.tolist()):
        assert (row[f:] == decoder.end_id).all() and (row[:f] != decoder.end_id).all()
    assert len({tuple(r.tolist()) for r in tokens}) > 9  # samples, not one caption repeated


@pytest.mark.parametrize("rules", [False, True])
@pytest.mark.parametrize("kind", DECODERS)
def test_teacher_forced_log_probs_are_those_of_decoding(kind, rules):
    """The log-probabilities recomputed teacher-forced are the ones the decoder's own step-wise decoding had:
    greedy_search's score of its caption, <end> included, equals the masked sum. With word rules (a banned word
    made the likeliest, <end> forbidden after words 3 to 6) both sides renormalise over the allowed words."""
    decoder = tiny_decoder(kind=kind).eval()
    if rules:
        register_word_rules(decoder, banned_ids=[2], no_end_after=[3, 4, 5, 6])
        with torch.no_grad():
            decoder.fc.bias[2] += 5.0
    features = tiny_features(5, kind)
    ids, score = greedy_search(decoder, features, max_len=6)
    tokens = torch.full((5, 6), decoder.end_id, dtype=torch.long)
    for i, c in enumerate(ids):
        tokens[i, : len(c)] = torch.tensor(c)
    logp, mask = caption_log_probs(decoder, features, tokens, decoder.start_id, decoder.end_id)
    assert torch.allclose(torch.where(mask, logp, 0.0).sum(1), score, atol=1e-5)


def test_padding_after_end_gets_no_gradient():
    decoder = tiny_decoder()
    captured = {}

    def keep_grad(module, inputs, output):
        output.retain_grad()
        captured["scores"] = output

    decoder.fc.register_forward_hook(keep_grad)
    end = decoder.end_id
    tokens = torch.tensor([[4, 5, end, end, end], [6, end, end, end, end], [7, 8, 9, 10, 11]])
    logp, mask = caption_log_probs(decoder, torch.randn(3, 8), tokens, decoder.start_id, end)
    scst_loss(logp, mask, torch.tensor([1.0, -2.0, 0.5])).backward()
    grad = captured["scores"].grad[:, 1:].abs().sum(-1)  # (C, T): scores[:, 1 + t] predicts tokens[:, t]
    assert (grad[~mask] == 0).all() and (grad[mask] > 0).all()
    assert mask.sum().item() == 3 + 2 + 5


def test_mean_of_others_baseline():
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    assert mean_of_others(rewards, 3).tolist() == [4.0, 3.5, 1.5, 1.5, 1.5, 0.0]


class PreferToken:
    """A fixed reward in place of CIDEr-D: 1 for a caption that says `token`, 0 otherwise."""

    def __init__(self, token):
        self.token = token

    def rewards(self, tokens, images, end_id):
        return (end_mask(tokens, end_id, inclusive=False) & (tokens == self.token)).any(1).double()


@pytest.mark.parametrize("kind, baseline", [("lstm", "mean"), ("lstm", "greedy"), ("attention", "mean")])
def test_self_critical_steps_raise_the_probability_of_a_rewarded_token(kind, baseline):
    decoder = tiny_decoder(kind=kind)
    encoder = torch.nn.Module()
    encoder.embed = torch.nn.Linear(4, 8)
    inputs = torch.randn(8, POSITIONS, 4) if kind == "attention" else torch.randn(8, 4)
    token = 7

    def first_word_probability():
        with torch.no_grad():
            logits, _ = decoder.start(encoder.embed(inputs))
            return logits.softmax(-1)[:, token].mean().item()

    params = list(decoder.parameters()) + list(encoder.embed.parameters())
    optimizer = torch.optim.Adam(params, lr=0.05)
    before = first_word_probability()
    torch.manual_seed(0)
    for _ in range(10):
        stats = scst_step(encoder, decoder, optimizer, inputs, torch.arange(8), PreferToken(token), samples=4,
                          baseline=baseline, max_len=5)
    after = first_word_probability()
    assert before < 0.15 and after > 2 * before
    assert 0 <= stats["reward"] <= 1 and stats["step_s"] >= stats["reward_s"] > 0


class TableDecoder(torch.nn.Module):
    """Scores from a learnable table, the same for every image and caption: scores[:, t] = table[t]."""

    def __init__(self, length, vocab_size):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(length, vocab_size))

    def forward(self, features, captions):
        return self.table[: captions.size(1)].expand(captions.size(0), -1, -1)  # (H, L, V)


def test_human_caption_loss_and_its_gradient_by_hand():
    S, E = 1, 2  # <start>, <end>
    captions = torch.tensor([[S, 4, 5, E, E], [S, 6, E, E, E]])  # 3 + 2 targets; the <end>s after are padding
    decoder = TableDecoder(5, 8)
    loss = human_caption_loss(decoder, torch.zeros(2, 3), captions, torch.tensor([4, 3]))
    loss.backward()
    p = decoder.table.detach().softmax(-1)  # (5, V)
    targets = [(1, 4), (2, 5), (3, E), (1, 6), (2, E)]  # (position of the score that predicts it, word)
    assert loss.item() == pytest.approx(-sum(p[t, w].log().item() for t, w in targets) / 5, rel=1e-6)
    grad = torch.zeros(5, 8)  # d(-log softmax(x)[w])/dx = softmax(x) - onehot(w), over the 5 targets
    for t, w in targets:
        grad[t] += (p[t] - torch.nn.functional.one_hot(torch.tensor(w), 8)) / 5
    assert torch.allclose(decoder.table.grad, grad, atol=1e-6)  # rows 0 and 4 predict nothing real: zero


def test_human_captions_of_a_batch_are_its_images_usable_captions():
    tokens = torch.arange(5)[:, None] * 10 + torch.arange(6)  # (5, 6): caption i's row is i*10 .. i*10+5
    human = HumanCaptions(tokens, torch.tensor([3, 4, 5, 6, 2]), caption_image=[0, 1, 0, 2, 1], usable=[0, 1, 2, 4])
    captions, lengths, owner = human.batch([1, 0])  # image 1: captions 1 and 4; image 0: 0 and 2 (3 unusable)
    assert captions[:, 0].tolist() == [10, 40, 0, 20] and captions.shape == (4, 5)  # cut after the longest
    assert lengths.tolist() == [4, 2, 3, 5] and owner.tolist() == [0, 0, 1, 1]


def test_the_mixed_objective_adds_the_weighted_cross_entropy_and_its_gradient():
    """The same samples (same seed) with weight 0 and 0.5: the loss and every gradient differ by exactly
    0.5 x the human captions' cross-entropy and its gradient, computed on their own beforehand."""
    E = 2
    captions = torch.tensor([[1, 4, 5, E], [1, 6, E, E], [1, 7, 8, E]])
    human = (captions, torch.tensor([4, 3, 4]), torch.tensor([0, 0, 1]))  # image 0 has two captions, 1 one
    inputs = torch.randn(2, 8)
    encoder = torch.nn.Module()
    encoder.embed = torch.nn.Identity()
    decoder = tiny_decoder().eval()
    xe = human_caption_loss(decoder, inputs[human[2]], captions, human[1])
    xe_grads = torch.autograd.grad(xe, list(decoder.parameters()))
    results = []
    for weight in (0.0, 0.5):
        copy = tiny_decoder().eval()  # the same seed: the same weights
        optimizer = torch.optim.SGD(copy.parameters(), lr=0.0)  # the gradients stay, the weights do not move
        torch.manual_seed(3)
        stats = scst_step(encoder, copy, optimizer, inputs, torch.arange(2), PreferToken(7), samples=3,
                          max_len=6, xe_weight=weight, human=human)
        results.append((stats, [p.grad.clone() for p in copy.parameters()]))
    (plain, plain_grads), (mixed, mixed_grads) = results
    assert mixed["xe"] == pytest.approx(xe.item(), rel=1e-6) and plain["xe"] == 0.0
    assert mixed["loss"] - plain["loss"] == pytest.approx(0.5 * xe.item(), rel=1e-5)
    assert mixed["reward"] == plain["reward"]  # the same samples
    for g_mixed, g_plain, g_xe in zip(mixed_grads, plain_grads, xe_grads):
        assert torch.allclose(g_mixed - g_plain, 0.5 * g_xe, atol=1e-6)


def test_bad_baseline_settings_are_named():
    decoder, encoder = tiny_decoder(), torch.nn.Module()
    encoder.embed = torch.nn.Identity()
    optimizer = torch.optim.Adam(decoder.parameters())
    with pytest.raises(ValueError, match="scst_baseline"):
        scst_step(encoder, decoder, optimizer, torch.randn(2, 8), torch.arange(2), None, baseline="max")
    with pytest.raises(ValueError, match="scst_samples >= 2"):
        scst_step(encoder, decoder, optimizer, torch.randn(2, 8), torch.arange(2), None, samples=1)


def test_a_negative_mixed_objective_weight_is_refused_by_name():
    from train import TrainConfig, check_settings

    with pytest.raises(ValueError, match=r"--scst-xe-weight must be 0 or more, got -0.1"):
        check_settings(TrainConfig(scst_epochs=1, scst_xe_weight=-0.1))
    check_settings(TrainConfig(scst_epochs=1, scst_xe_weight=0.1, scst_end_token=True))


# ---------------------------------------------------------------------------------------------------------
# In a training run: train.py's --scst-epochs and --init-from
# ---------------------------------------------------------------------------------------------------------
def scst_config(tiny_shapes, out_dir, **overrides):
    from conftest import tiny_train_config

    settings = dict(epochs=1, scst_epochs=2, save_every=1, scst_samples=3, scst_lr=1e-3, batch_size=48)
    return tiny_train_config(tiny_shapes, out_dir, **{**settings, **overrides})


def test_scst_epochs_follow_the_cross_entropy_ones_and_log_their_phase(tiny_shapes, tmp_path):
    from train import read_metrics, train

    run_dir = train(scst_config(tiny_shapes, tmp_path))
    rows = read_metrics(run_dir)
    assert [r["phase"] for r in rows] == ["xe", "scst", "scst"] and [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows[1:]:
        assert 0 < r["reward"] < 10 and 0 < r["baseline"] < 10 and 0 < r["reward_share"] < 1
        assert r["images_per_s"] > 0 and "CIDEr" in r and "train_ppl" not in r
    # 64 training images, 48 // 3 = 16 images per step: 4 self-critical steps per epoch
    assert rows[2]["step"] - rows[1]["step"] == 4 and rows[1]["step"] - rows[0]["step"] == 4
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == 1e-3  # the self-critical phase's own optimiser


def test_resume_in_the_middle_of_scst_ends_with_the_same_weights(tiny_shapes, tmp_path):
    from train import make_config, read_metrics, train

    full_dir = train(scst_config(tiny_shapes, tmp_path / "a"))
    half_dir = train(scst_config(tiny_shapes, tmp_path / "b", scst_epochs=1))
    resumed_dir = train(make_config(resume=str(half_dir), scst_epochs=2))
    assert_same_training_state(full_dir, resumed_dir, epoch=3)
    assert [r["reward"] for r in read_metrics(resumed_dir)[1:]] == [r["reward"] for r in read_metrics(full_dir)[1:]]


def test_resume_takes_the_self_critical_knobs_given_and_keeps_the_saved_ones(tiny_shapes, tmp_path):
    from train import make_config, read_metrics, train

    run_dir = train(scst_config(tiny_shapes, tmp_path, scst_epochs=0, scst_max_len=12))
    # the cross-entropy phase is over: the self-critical one starts with the learning rate given now
    train(make_config(resume=str(run_dir), scst_epochs=1, scst_lr=3e-4))
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["optimizer"]["param_groups"][0]["lr"] == 3e-4
    assert last["config"]["scst_samples"] == 3 and last["config"]["scst_max_len"] == 12  # kept from the run
    # the end token and the mixed objective may be switched on for the self-critical phase of a run
    train(make_config(resume=str(run_dir), scst_epochs=2, scst_end_token=True, scst_xe_weight=0.1))
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["config"]["scst_end_token"] is True and last["config"]["scst_xe_weight"] == 0.1
    rows = read_metrics(run_dir)
    assert "xe" not in rows[1] and 0 < rows[2]["xe"] < 20  # logged where the mixed objective ran


def test_init_from_loads_the_weights_but_not_the_optimiser_or_epoch(tiny_shapes, tmp_path):
    from train import read_metrics, train

    source = train(scst_config(tiny_shapes, tmp_path / "a", epochs=2, scst_epochs=0))
    before = torch.load(source / "last.pt", weights_only=True)
    # lr 0: the weights stay those of the checkpoint; hidden_size is the checkpoint's whatever the flag says
    run_dir = train(scst_config(tiny_shapes, tmp_path / "b", init_from=str(source / "last.pt"), epochs=1,
                                scst_epochs=0, lr=0.0, hidden_size=32))
    after = torch.load(run_dir / "last.pt", weights_only=True)
    assert after["config"]["hidden_size"] == before["config"]["hidden_size"] == 128
    for part in ("encoder", "decoder"):
        for name, tensor in before[part].items():
            assert torch.equal(tensor, after[part][name]), f"{part}.{name} was not loaded"
    steps = read_metrics(run_dir)[0]["step"]
    assert after["epoch"] == 1 and len(read_metrics(run_dir)) == 1 and after["step"] == steps == before["step"] // 2
    adam_steps = {int(s["step"]) for s in after["optimizer"]["state"].values()}
    assert adam_steps == {steps}  # a new optimiser: it counts this run's steps only
    assert after["vocab"] == before["vocab"]
    # and it starts where the checkpoint ended, not from scratch: same validation scores as the checkpoint's
    assert read_metrics(run_dir)[0]["CIDEr"] == pytest.approx(before["metrics"]["CIDEr"], abs=1e-12)


def test_torchrun_two_cpu_processes_share_the_reward_and_the_steps(tiny_shapes, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from model import load_checkpoint
    from train import read_metrics

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
           str(REPO_ROOT / "train.py"), "--data-root", str(tiny_shapes), "--image-size", "64", "--epochs", "1",
           "--scst-epochs", "1", "--scst-samples", "2", "--batch-size", "16", "--hidden-size", "32",
           "--embed-size", "16", "--vocab-threshold", "1", "--num-workers", "0", "--out-dir", str(tmp_path),
           "--run-name", "ddp", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _, _, _, ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    rows = read_metrics(tmp_path / "ddp")
    assert [r["phase"] for r in rows] == ["xe", "scst"] and ckpt["epoch"] == 2
    # 64 images, 32 per process, 16 // 2 = 8 images per step: 4 steps on each process, taken together
    assert rows[1]["step"] - rows[0]["step"] == 4 and rows[1]["reward"] > 0


def test_the_training_figures_take_self_critical_rows():
    import matplotlib

    matplotlib.use("Agg")
    from visualize import scst_curves, training_curves

    xe = [{"epoch": e, "phase": "xe", "train_loss": 2.0 / e, "train_ppl": 7.0 / e, "val_loss": 1.5, "val_ppl": 4.5,
           "CIDEr": 0.5 * e} for e in (1, 2)]
    sc = [{"epoch": e, "phase": "scst", "train_loss": -0.01, "reward": 1.0 + e, "baseline": 0.9 + e,
           "val_loss": 1.6, "val_ppl": 4.9, "CIDEr": 2.0 + e} for e in (3, 4)]
    curves = training_curves(xe + sc)
    train_line = curves.axes[0].lines[0]
    assert list(train_line.get_xdata()) == [1, 2]  # the self-critical loss is not a cross-entropy
    assert list(curves.axes[0].lines[1].get_xdata()) == [1, 2, 3, 4]  # validation loss of every epoch
    fig = scst_curves(xe + sc)
    reward, cider = fig.axes
    assert list(reward.lines[0].get_ydata()) == [4.0, 5.0] and list(reward.lines[1].get_ydata()) == [3.9, 4.9]
    assert [list(line.get_xdata()) for line in cider.lines] == [[1, 2], [3, 4]]


def test_scst_epochs_train_the_attention_decoder_and_init_from_rebuilds_it(tiny_shapes, tmp_path):
    from train import read_metrics, train

    attention = dict(grid=1, head_hidden=0, backbone_blocks=14, local_hidden=32, decoder="attention",
                     attention_size=16, hidden_size=32)
    run_dir = train(scst_config(tiny_shapes, tmp_path / "a", scst_epochs=1, **attention))
    rows = read_metrics(run_dir)
    assert [r["phase"] for r in rows] == ["xe", "scst"] and rows[1]["reward"] > 0
    before = torch.load(run_dir / "last.pt", weights_only=True)
    # the flags say the seed's decoder; the checkpoint's model_args say attention, and win
    again = train(scst_config(tiny_shapes, tmp_path / "b", init_from=str(run_dir / "last.pt"), epochs=0,
                              scst_epochs=1))
    after = torch.load(again / "last.pt", weights_only=True)
    assert after["model_args"]["decoder"] == "attention" and after["epoch"] == 1
    assert [r["phase"] for r in read_metrics(again)] == ["scst"]
    assert any(not torch.equal(t, after["decoder"][k]) for k, t in before["decoder"].items())  # it trained


@pytest.mark.parametrize("kind", DECODERS)
def test_padding_columns_change_neither_the_loss_nor_its_gradient(kind):
    """scst_step cuts the sampled tokens after the longest caption's <end>: the columns it drops are <end>
    padding in every row, so the loss and every gradient are those of the uncut tokens."""
    end = 1
    padded = torch.tensor([[4, 5, end, end, end, end], [6, end, end, end, end, end], [7, 8, 9, end, end, end]])
    tokens = padded[:, : int(end_mask(padded, end).sum(1).max())]  # as scst_step cuts them
    assert tokens.shape == (3, 4)
    features, advantage = tiny_features(3, kind), torch.tensor([1.0, -2.0, 0.5])
    grads = []
    for t in (tokens, padded):
        decoder = tiny_decoder(kind=kind).eval()
        logp, mask = caption_log_probs(decoder, features, t, decoder.start_id, end)
        loss = scst_loss(logp, mask, advantage)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in decoder.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0], abs=1e-7)
    assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(grads[0][1], grads[1][1]))
