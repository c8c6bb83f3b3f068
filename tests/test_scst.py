"""Self-critical training (scst.py): the CIDEr-D reward against the repository's scorer, sampling, the loss."""
import random

import pytest
import torch

import scst
from model import DecoderRNN, greedy_search
from scst import CiderD, caption_log_probs, end_mask, mean_of_others, sample_captions, scst_loss, scst_step
from vocabulary import Vocabulary

try:  # the scorers' home after the layout change (issue 12)
    import metrics as scorer
except ImportError:
    import evaluate as scorer

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


def test_cider_reward_equals_the_scorer_on_the_same_captions_and_document_frequencies():
    vocab = vocabulary()
    cider = CiderD(REFERENCES, vocab)
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
        texts = [vocab.decode(tokens[i * samples + s]) for i in range(len(REFERENCES))]
        expected = scorer_cider(REFERENCES, texts)
        assert rewards[s::samples].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert rewards[samples] == 0.0  # the empty caption
    assert rewards[0] > 1.0 and (rewards > 0).sum() > len(captions) // 2  # a test that scores something


def test_cider_reward_is_the_same_after_a_round_trip_through_plain_data(tmp_path):
    vocab = vocabulary()
    cider = CiderD(REFERENCES, vocab)
    torch.save(cider.to_dict(), tmp_path / "cider.pt")
    again = CiderD.from_dict(torch.load(tmp_path / "cider.pt", weights_only=True))
    tokens = as_tokens([["a", "red", "circle"], ["small", "blue", "circle"]], vocab, 5)
    images = torch.tensor([0, 4])
    assert torch.equal(cider.rewards(tokens, images, vocab.end_id), again.rewards(tokens, images, vocab.end_id))


def test_end_mask_keeps_the_words_and_the_first_end():
    tokens = torch.tensor([[5, 6, 1, 1, 7], [1, 4, 4, 4, 4], [3, 3, 3, 3, 3]])
    assert end_mask(tokens, 1).tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert end_mask(tokens, 1, inclusive=False).tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]


def tiny_decoder(vocab_size=12, seed=0, image_every_step=True):
    torch.manual_seed(seed)
    return DecoderRNN(embed_size=8, hidden_size=16, vocab_size=vocab_size, image_every_step=image_every_step)


def test_samples_stop_at_end_and_are_padded_with_end():
    decoder = tiny_decoder()
    torch.manual_seed(1)
    tokens = sample_captions(decoder, torch.randn(6, 8), samples=3, max_len=15)
    assert tokens.shape == (18, 15)
    ended = tokens == decoder.end_id
    first = torch.where(ended.any(1), ended.float().argmax(1), 15)
    for row, f in zip(tokens, first.tolist()):
        assert (row[f:] == decoder.end_id).all() and (row[:f] != decoder.end_id).all()
    assert len({tuple(r.tolist()) for r in tokens}) > 9  # samples, not one caption repeated


def test_teacher_forced_log_probs_are_those_of_decoding():
    """The log-probabilities recomputed teacher-forced are the ones the decoder's own step-wise decoding had:
    greedy_search's score of its caption, <end> included, equals the masked sum."""
    decoder = tiny_decoder().eval()
    features = torch.randn(5, 8)
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


@pytest.mark.parametrize("baseline", scst.BASELINES)
def test_self_critical_steps_raise_the_probability_of_a_rewarded_token(baseline):
    decoder = tiny_decoder()
    encoder = torch.nn.Module()
    encoder.embed = torch.nn.Linear(4, 8)
    inputs = torch.randn(8, 4)
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


def test_bad_baseline_settings_are_named():
    decoder, encoder = tiny_decoder(), torch.nn.Module()
    encoder.embed = torch.nn.Identity()
    optimizer = torch.optim.Adam(decoder.parameters())
    with pytest.raises(ValueError, match="scst_baseline"):
        scst_step(encoder, decoder, optimizer, torch.randn(2, 8), torch.arange(2), None, baseline="max")
    with pytest.raises(ValueError, match="scst_samples >= 2"):
        scst_step(encoder, decoder, optimizer, torch.randn(2, 8), torch.arange(2), None, samples=1)
