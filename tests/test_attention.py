"""Tests of the attention decoder (Show, Attend and Tell, soft attention): its weights, what training does to
them, the doubly stochastic term, decoding through the shared searches, and checkpoints.

Tiny sizes, random weights, CPU only (one torch thread: conftest's session fixture).
"""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model
from model import AttentionDecoder, DecoderRNN, EncoderCNN, attention_penalty, beam_search, greedy_search
from vocabulary import Vocabulary

START, END = 0, 1
V, E, H, A = 12, 16, 24, 20  # vocabulary, embedding (= annotation) size, LSTM, attention
L = 6  # positions of the toy maps
MAX_LEN = 8


def random_decoder(seed=0, end_bias=0.0):
    """A random attention decoder; end_bias raises <end>'s score so that some captions end and some do not."""
    torch.manual_seed(seed)
    decoder = AttentionDecoder(E, H, V, A).eval()
    with torch.no_grad():
        decoder.fc.bias[END] += end_bias
    return decoder


def annotations(n, seed=1):
    return torch.randn(n, L, E, generator=torch.Generator().manual_seed(seed)) * 2  # (n, L, E)


@pytest.fixture(scope="module")
def random_case():
    """A random attention decoder and 12 images whose greedy captions both end and run to MAX_LEN."""
    decoder, feats = random_decoder(seed=4, end_bias=0.3), annotations(12, seed=4)
    lengths = [len(c) for c in greedy_search(decoder, feats, MAX_LEN)[0]]
    assert min(lengths) < MAX_LEN and max(lengths) == MAX_LEN  # both kinds, so both paths are tested
    return decoder, feats


def teacher_forced(decoder, feats, captions, max_len):
    """Per caption: (sum of log p of its words and its <end> if it ended, the weights (words, L) behind its
    words), from one teacher-forced forward pass."""
    logprobs, weights = [], []
    with torch.no_grad():
        for f, caption in zip(feats, captions):
            seq = [START] + list(caption) + ([END] if len(caption) < max_len else [])
            scores, alpha = decoder(f[None], torch.tensor([seq]), return_attention=True)  # (1, T, V), (1, T, L)
            logp = F.log_softmax(scores, dim=-1)[0]  # (T, V)
            logprobs.append(sum(logp[t, seq[t]].item() for t in range(1, len(seq))))
            weights.append(alpha[0, 1: len(caption) + 1])  # row t is behind seq[t]; row 0 is the initial state
    return torch.tensor(logprobs), weights


# ---------------------------------------------------------------------------------------------------
# The weights and the forward pass
# ---------------------------------------------------------------------------------------------------
def test_weights_sum_to_one_with_the_shape_of_the_scores():
    decoder = random_decoder()
    captions = torch.randint(2, V, (5, 7))
    scores, alpha = decoder(annotations(5), captions, return_attention=True)
    assert scores.shape == (5, 7, V)
    assert alpha.shape == (5, 7, L)
    assert (alpha >= 0).all()
    assert torch.allclose(alpha.sum(-1), torch.ones(5, 7), atol=1e-5)
    assert torch.allclose(alpha[:, 0], torch.full((5, L), 1 / L))  # the initial state reads the mean annotation
    assert alpha[:, 1:].std(-1).min() > 0  # the later steps are not uniform: they depend on the state
    assert torch.equal(decoder(annotations(5), captions), scores)  # the weights change nothing


def test_weights_follow_the_annotations():
    """Permuting the positions permutes the weights and leaves the scores unchanged: attention reads content,
    and the context is a weighted mean, so the order of the positions does not matter."""
    decoder = random_decoder()
    feats, captions = annotations(3), torch.randint(2, V, (3, 5))
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores, alpha = decoder(feats, captions, return_attention=True)
        scores2, alpha2 = decoder(feats[:, perm], captions, return_attention=True)
    assert torch.allclose(alpha2, alpha[:, :, perm], atol=1e-6)
    assert torch.allclose(scores2, scores, atol=1e-5)


def test_the_decoder_wants_annotation_vectors():
    with pytest.raises(ValueError, match=r"annotation vectors \(B, L, D\).*attention=True"):
        random_decoder()(torch.randn(2, E), torch.zeros(2, 3, dtype=torch.long))
    decoder = random_decoder()
    logits, state = decoder.start(annotations(2))
    with pytest.raises(ValueError, match="pass image= to step"):
        decoder.step(logits.argmax(1), state)


def marked_batch(n, generator):
    """The toy task: L random annotations, one of them marked (dimension 1 set to 3); the one word to say is
    the sign of the marked annotation's dimension 0. Returns (annotations (n, L, E), captions (n, 3), where)."""
    feats = torch.randn(n, L, E, generator=generator)
    feats[:, :, 1] = 0.0
    where = torch.randint(0, L, (n,), generator=generator)
    feats[torch.arange(n), where, 1] = 3.0
    word = 3 + (feats[torch.arange(n), where, 0] > 0).long()  # (n,): word 3 or 4
    captions = torch.stack([torch.full((n,), START), word, torch.full((n,), END)], dim=1)  # <start> word <end>
    return feats, captions, where


def test_training_moves_the_attention_to_the_position_that_holds_the_answer():
    torch.manual_seed(0)
    decoder = AttentionDecoder(8, 16, 5, 16, feature_size=E)
    test_feats, test_captions, test_where = marked_batch(256, torch.Generator().manual_seed(1))
    rows = torch.arange(256)

    def weight_on_the_answer():
        decoder.eval()
        with torch.no_grad():
            scores, alpha = decoder(test_feats, test_captions, return_attention=True)
        accuracy = (scores[:, 1].argmax(1) == test_captions[:, 1]).float().mean().item()
        return alpha[rows, 1, test_where].mean().item(), accuracy  # the weights behind the one word

    before, _ = weight_on_the_answer()
    opt = torch.optim.Adam(decoder.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    decoder.train()
    for _ in range(150):
        feats, captions, _ = marked_batch(64, generator)
        scores = decoder(feats, captions)  # (64, 3, 5)
        loss = F.cross_entropy(scores[:, 1:].reshape(-1, 5), captions[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, accuracy = weight_on_the_answer()
    assert before < 0.3  # about 1 / L before training
    assert after > 0.8 and accuracy > 0.9


# ---------------------------------------------------------------------------------------------------
# The doubly stochastic regularisation
# ---------------------------------------------------------------------------------------------------
def test_doubly_stochastic_term_by_hand():
    # Two captions, three positions; row 0 (the initial state's uniform weights) never counts.
    alpha = torch.tensor([[[1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]],
                          [[1 / 3, 1 / 3, 1 / 3], [0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]])  # (2, 4, 3)
    # Caption 1: sums over steps (1.5, 0.5, 1.0) -> 0.25 + 0.25 + 0 = 0.5.
    # Caption 2: sums (1.0, 0.8, 1.2) -> 0 + 0.04 + 0.04 = 0.08.  Mean over captions: 0.29.
    assert attention_penalty(alpha).item() == pytest.approx(0.29)
    # With caption 2 one step shorter (its last step is padding): sums (0.4, 0.6, 1.0) -> 0.36 + 0.16 = 0.52.
    real = torch.tensor([[True, True, True, True], [True, True, True, False]])
    assert attention_penalty(alpha, real).item() == pytest.approx((0.5 + 0.52) / 2)


def test_doubly_stochastic_term_has_a_gradient_towards_covering_every_position():
    decoder = random_decoder()
    feats = annotations(4).requires_grad_(True)
    _, alpha = decoder(feats, torch.randint(2, V, (4, L + 1)), return_attention=True)  # L steps: can cover all
    penalty = attention_penalty(alpha)
    penalty.backward()
    assert penalty.item() > 0 and feats.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
# Decoding: the searches of model.py serve this decoder too
# ---------------------------------------------------------------------------------------------------
def test_greedy_matches_the_teacher_forced_pass(random_case):
    decoder, feats = random_case
    captions, scores, weights = greedy_search(decoder, feats, MAX_LEN, return_attention=True)
    logprobs, forced = teacher_forced(decoder, feats, captions, MAX_LEN)
    assert torch.allclose(scores, logprobs, atol=1e-4)
    assert [w.shape for w in weights] == [(len(c), L) for c in captions]
    for w, f in zip(weights, forced):
        assert torch.allclose(w, f, atol=1e-5)
    assert greedy_search(decoder, feats, MAX_LEN)[0] == captions  # asking for the weights changes nothing


def test_beam_1_equals_greedy(random_case):
    decoder, feats = random_case
    g_caps, g_scores, g_weights = greedy_search(decoder, feats, MAX_LEN, return_attention=True)
    b_caps, b_scores, b_weights = beam_search(decoder, feats, beam_size=1, max_len=MAX_LEN, return_attention=True)
    assert b_caps == g_caps
    assert torch.allclose(b_scores, g_scores, atol=1e-5)
    for b, g in zip(b_weights, g_weights):
        assert torch.allclose(b, g, atol=1e-6)


@pytest.mark.parametrize("max_len", [3, MAX_LEN])
def test_beam_returns_the_winning_hypothesis_and_its_weights(random_case, max_len):
    decoder, feats = random_case
    g_caps, g_scores = greedy_search(decoder, feats, max_len)
    b_caps, b_scores, b_weights = beam_search(decoder, feats, beam_size=3, max_len=max_len, return_attention=True)
    assert (b_scores >= g_scores - 1e-5).all() and (b_scores > g_scores + 1e-3).any()  # it searched
    logprobs, forced = teacher_forced(decoder, feats, b_caps, max_len)
    assert torch.allclose(b_scores, logprobs, atol=1e-4)
    for w, f in zip(b_weights, forced):  # the weights of the winner, not of another beam
        assert w.shape == f.shape and torch.allclose(w, f, atol=1e-5)


def test_a_decoder_without_attention_says_so():
    torch.manual_seed(0)
    decoder = DecoderRNN(E, H, V).eval()
    with pytest.raises(ValueError, match="no attention.*--decoder attention"):
        greedy_search(decoder, torch.randn(2, E), MAX_LEN, return_attention=True)
    with pytest.raises(ValueError, match="no attention"):
        beam_search(decoder, torch.randn(2, E), 2, MAX_LEN, return_attention=True)


def test_reorder_state_moves_every_tensor_with_its_row():
    decoder = random_decoder()
    _, state = decoder.start(annotations(3))
    index = torch.tensor([2, 2, 0])
    moved = decoder.reorder_state(state, index)
    assert type(moved) is type(state)
    for before, after in zip(state, moved):
        assert torch.equal(after, before[index])


def test_word_out_false_leaves_the_previous_word_out_of_the_deep_output():
    """With word_out=False the scores after a step are a function of the new LSTM state and the context only:
    two words that lead to the same h and context give the same scores; with the default they do not."""
    for word_out in (True, False):
        torch.manual_seed(0)
        decoder = AttentionDecoder(E, H, V, A, word_out=word_out).eval()
        feats = annotations(2)
        _, state = decoder.start(feats)
        with torch.no_grad():
            decoder.cell.weight_ih[:, :E] = 0.0  # the LSTM ignores the word: h and context no longer depend on it
            scores_a, _ = decoder.step(torch.tensor([2, 2]), state, image=feats)
            scores_b, _ = decoder.step(torch.tensor([3, 3]), state, image=feats)
        if word_out:
            assert (scores_a - scores_b).abs().max() > 1e-3
        else:
            assert torch.allclose(scores_a, scores_b)


def test_attention_word_out_flag_reaches_the_checkpoint_and_the_model(tmp_path):
    import train
    cfg = train.parse_args(["--preset", "shapes-cpu", "--decoder", "attention", "--no-attention-word-out"])
    vocab = Vocabulary("a red circle".split())
    args = cfg.model_args(vocab)
    assert args["attention_word_out"] is False
    _, decoder = model.build_model(dict(args, pretrained=False))
    assert decoder.word_out is False
    # Checkpoints written before the option existed keep Xu et al.'s deep output, the word included.
    old = {k: v for k, v in args.items() if k != "attention_word_out"}
    assert model.build_model(dict(old, pretrained=False))[1].word_out is True


def test_decoder_dropout_is_the_attention_decoders_dropout_and_old_checkpoints_decode_the_same(tmp_path):
    """--preset flickr8k --decoder attention sets decoder_dropout 0.5, which the attention decoder ignored (it
    trained without dropout). It is now the dropout before the vocabulary layer; --dropout wins when set. A
    dropout layer holds no weights, so a checkpoint written before decodes exactly as it did."""
    import train
    cfg = train.parse_args(["--preset", "flickr8k", "--decoder", "attention", "--embed-size", str(E),
                            "--hidden-size", str(H), "--no-pretrained"])
    args = cfg.model_args(Vocabulary("a red circle".split()))
    torch.manual_seed(0)
    _, decoder = model.build_model(args)
    assert decoder.dropout.p == 0.5 == cfg.decoder_dropout
    assert model.build_model(dict(args, dropout=0.3))[1].dropout.p == 0.3
    feats, captions = annotations(3), torch.randint(2, 6, (3, 5))
    decoder.train()
    with torch.no_grad():
        assert not torch.equal(decoder(feats, captions), decoder(feats, captions))  # dropout at work
    # a decoder built as before (no dropout) with the same weights: identical in evaluation
    before = model.build_model(dict(args, decoder_dropout=0.0))[1]
    assert before.dropout.p == 0.0
    before.load_state_dict(decoder.state_dict())
    decoder.eval(), before.eval()
    with torch.no_grad():
        assert torch.equal(decoder(feats, captions), before(feats, captions))
    assert greedy_search(decoder, feats, MAX_LEN)[0] == greedy_search(before, feats, MAX_LEN)[0]


def test_settings_the_attention_decoder_cannot_use_are_named_at_start_up(capsys):
    import train
    cfg = train.make_config("flickr8k", decoder="attention")
    train.check_settings(cfg)  # runs, but says that image_every_step does nothing here
    assert "--image-every-step is ignored by --decoder attention" in capsys.readouterr().out
    train.check_settings(train.make_config("flickr8k", decoder="attention", image_every_step=False))
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="--dropout 0.3 and --decoder-dropout 0.5 both set the attention decoder"):
        train.check_settings(train.make_config("flickr8k", decoder="attention", dropout=0.3))
    with pytest.raises(ValueError, match="--decoder attention has one LSTM layer"):
        train.check_settings(train.make_config("flickr8k", decoder="attention", num_layers=2))


# ---------------------------------------------------------------------------------------------------
# The encoder and checkpoints
# ---------------------------------------------------------------------------------------------------
ARGS = dict(embed_size=E, hidden_size=H, vocab_size=V, backbone="mobilenet_v2", pretrained=False,
            backbone_blocks=14, decoder="attention", attention_size=A)


@pytest.mark.parametrize("local_hidden", [0, 8])
def test_attention_encoder_hands_over_one_annotation_per_position(local_hidden):
    torch.manual_seed(0)
    encoder, decoder = model.build_model(dict(ARGS, local_hidden=local_hidden, embed_norm=True))
    assert isinstance(decoder, AttentionDecoder) and encoder.local and encoder.attention
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = encoder.features(images)  # what the cache stores: (2, 96, 4, 4)
        annotated = encoder.embed(maps)
        assert maps.shape == (2, 96, 4, 4) and annotated.shape == (2, 16, E)
        assert torch.allclose(encoder(images), annotated)
        # Position (i, j) of the map is annotation i * w + j, and depends on that position only.
        changed = maps.clone()
        changed[:, :, 1, 2] += 1.0
        moved = (encoder.embed(changed) - annotated).abs().sum(-1)  # (2, 16)
    assert moved[:, 1 * 4 + 2].min() > 0 and moved.sum() == moved[:, 6].sum()


@pytest.mark.parametrize("changes, message", [
    (dict(grid=2), "attention encoder keeps every map position"),
    (dict(head_hidden=8), "attention encoder keeps every map position"),
    (dict(decoder="transformer"), "unknown decoder 'transformer'"),
    (dict(num_layers=2), "one LSTM layer"),
])
def test_bad_attention_options_say_what_is_wrong(changes, message):
    with pytest.raises(ValueError, match=message):
        model.build_model(dict(ARGS, **changes))


def test_checkpoint_round_trip_rebuilds_the_attention_decoder(tmp_path):
    torch.manual_seed(0)
    vocab = Vocabulary("a red blue green circle square triangle left right".split())  # 9 words + 3 specials
    args = dict(ARGS, vocab_size=len(vocab), local_hidden=8, feature_norm=True, dropout=0.5, **model.word_rules(vocab))
    encoder, decoder = model.build_model(args)
    torch.save({"format": model.CHECKPOINT_FORMAT, "model_args": args, "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(), "vocab": vocab.to_dict()}, tmp_path / "ckpt.pt")
    enc2, dec2, vocab2, _ = model.load_checkpoint(tmp_path / "ckpt.pt")
    assert isinstance(dec2, AttentionDecoder) and enc2.attention and not dec2.training
    assert dec2.attention.key.out_features == A
    images = torch.randn(2, 3, 64, 64)
    encoder.eval(), decoder.eval()
    with torch.no_grad():
        feats = encoder(images)
        assert torch.equal(enc2(images), feats)
    expected = greedy_search(decoder, feats, MAX_LEN, return_attention=True)
    got = beam_search(dec2, feats, 1, MAX_LEN, return_attention=True)
    assert got[0] == expected[0] and torch.allclose(got[1], expected[1], atol=1e-5)
    # Checkpoints written before the decoder had a name rebuild the seed's LSTM decoder.
    old_args = {k: v for k, v in args.items() if k not in ("decoder", "attention_size")}
    old_enc, old_dec = model.build_model(old_args)
    assert isinstance(old_dec, DecoderRNN) and not old_enc.attention


# ---------------------------------------------------------------------------------------------------
# Training on the tiny shapes set, and caption.py --attention
# ---------------------------------------------------------------------------------------------------
ATTENTION_EPOCHS = 40


@pytest.fixture(scope="module")
def attention_run(tiny_shapes, tmp_path_factory):
    """A run folder whose attention model has learned the tiny shapes training images (4x4 maps at 64 px)."""
    from conftest import tiny_train_config
    from train import train

    cfg = tiny_train_config(tiny_shapes, tmp_path_factory.mktemp("attention"), grid=1, head_hidden=0,
                            backbone_blocks=14, local_hidden=64, decoder="attention", attention_size=32,
                            attention_reg=0.0, epochs=ATTENTION_EPOCHS, save_every=ATTENTION_EPOCHS)
    return train(cfg)


def test_tiny_shapes_is_learned_with_attention(attention_run):
    from train import read_metrics

    rows = read_metrics(attention_run)
    assert len(rows) == ATTENTION_EPOCHS
    assert max(r["object_f1"] for r in rows) == 1.0  # first reached at epoch 33 of 40 when written
    encoder, decoder, vocab, ckpt = model.load_checkpoint(attention_run / "best.pt")
    assert isinstance(decoder, AttentionDecoder) and encoder.attention
    assert ckpt["model_args"]["decoder"] == "attention" and ckpt["metrics"]["object_f1"] == 1.0


def test_caption_batch_returns_each_words_weights_on_the_grid(attention_run):
    encoder, decoder, vocab, _ = model.load_checkpoint(attention_run / "best.pt")
    images = torch.randn(3, 3, 64, 64)
    captions, scores, attention = model.caption_batch(encoder, decoder, vocab, images=images, beam=2,
                                                      max_len=MAX_LEN, with_scores=True, with_attention=True)
    assert captions == model.caption_batch(encoder, decoder, vocab, images=images, beam=2, max_len=MAX_LEN)
    for text, (words, maps) in zip(captions, attention):
        assert " ".join(words) == text and maps.shape == (len(words), 4, 4)  # 64 px -> a 4x4 map
        assert torch.allclose(maps.sum((1, 2)), torch.ones(len(words)), atol=1e-5)


def test_caption_cli_writes_attention_figures(attention_run, tmp_path, capsys):
    import caption
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for name, colour in (("red.png", (200, 30, 30)), ("blue.jpg", (30, 30, 200))):
        Image.new("RGB", (80, 64), colour).save(folder / name)
    figures = tmp_path / "figures"
    code = caption.main(["--checkpoint", str(attention_run / "best.pt"), "--num-workers", "0", "--attention",
                         str(figures), str(folder)])
    out = capsys.readouterr().out
    assert code == 0
    assert [Path(line.split("\t")[0]).name for line in out.splitlines()] == ["blue.jpg", "red.png"]  # captions
    assert sorted(p.name for p in figures.iterdir()) == ["blue.png", "red.png"]
    for png in figures.iterdir():
        with Image.open(png) as image:
            image.verify()  # a complete PNG
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 150


def test_caption_cli_refuses_attention_for_a_checkpoint_without_it(tmp_path, capsys):
    import caption

    vocab = Vocabulary("a red circle".split())
    args = dict(embed_size=E, hidden_size=H, vocab_size=len(vocab), backbone="mobilenet_v2", pretrained=False,
                image_size=64)
    encoder, decoder = model.build_model(args)
    torch.save({"format": model.CHECKPOINT_FORMAT, "model_args": args, "encoder": encoder.state_dict(),
                "decoder": decoder.state_dict(), "vocab": vocab.to_dict()}, tmp_path / "lstm.pt")
    code = caption.main(["--checkpoint", str(tmp_path / "lstm.pt"), "--attention", str(tmp_path / "figs"),
                         str(Path(__file__).resolve().parents[1] / "images")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert "has no attention to draw (its decoder is 'lstm')" in captured.err
    assert len(captured.err.strip().splitlines()) == 1 and not (tmp_path / "figs").exists()


@pytest.mark.slow
def test_inference_notebook_draws_the_attention(attention_run, tmp_path, monkeypatch):
    import nbformat
    import papermill

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    executed = tmp_path / "3_Inference.ipynb"
    papermill.execute_notebook(str(repo / "3_Inference.ipynb"), str(executed), cwd=str(repo), kernel_name="python3",
                               progress_bar=False, parameters=dict(CHECKPOINT=str(attention_run / "best.pt"),
                                                                   N_IMAGES=2, N_ATTENTION=2, BEAM=2,
                                                                   OUTPUT_DIR=str(tmp_path / "out"),
                                                                   METRICS_BACKEND="python"))
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    photos = [p for p in (repo / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    # The test grid and the own-images grid, 2 test images' attention figures, one per sample photo, and
    # section 6's photo: a shapes model knows no photographs, so the bundled lstm model captions it, without attention.
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2 + 2 + len(photos) + 1
    own = [o for c in nb.cells if c.get("id") == "own-photo-code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in own) == 1
    assert "has no attention" not in "".join(o.get("text", "") for o in outputs)
