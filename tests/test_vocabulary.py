"""Tests of vocabulary.py: thresholds, JSON round trip, <unk>, encode/decode, reuse and mismatch, no downloads."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import vocabulary as V
from vocabulary import Vocabulary, load_or_build_vocab

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECIALS = ["<start>", "<end>", "<unk>"]

CAPTIONS = ["A dog runs.", "a DOG, a red ball!", "A dog and... a red cat -- ?"]
# Their word counts after lower-casing and dropping punctuation-only tokens ("...", "--", "?").
COUNTS = {"a": 5, "dog": 3, "red": 2, "and": 1, "ball": 1, "cat": 1, "runs": 1}


def write_captions(path, captions):
    """A minimal COCO caption file: one image, the given captions."""
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 8, "height": 8}],
            "annotations": [{"id": i + 1, "image_id": 1, "caption": c} for i, c in enumerate(captions)]}
    Path(path).write_text(json.dumps(data))
    return Path(path)


@pytest.fixture
def caption_file(tmp_path):
    return write_captions(tmp_path / "captions_train2017.json", CAPTIONS)


def test_tokenize_lowercases_and_drops_punctuation():
    assert V.tokenize("A DOG, a red ball!") == ["a", "dog", "a", "red", "ball"]
    assert V.tokenize("-- ... ?!") == []


@pytest.mark.parametrize("threshold, words", [
    (1, ["a", "dog", "red", "and", "ball", "cat", "runs"]),  # by count, then alphabetically
    (2, ["a", "dog", "red"]),
    (3, ["a", "dog"]),
    (6, []),
])
def test_threshold_keeps_exactly_the_frequent_words(caption_file, threshold, words):
    assert sorted(w for w, c in COUNTS.items() if c >= threshold) == sorted(words)  # the table agrees
    vocab = Vocabulary.build([caption_file], threshold=threshold)
    assert vocab.idx2word == SPECIALS + words
    assert len(vocab) == 3 + len(words)
    assert (vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2)
    assert vocab.threshold == threshold


def test_json_round_trip(caption_file, tmp_path):
    vocab = Vocabulary.build([caption_file], threshold=1)
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text())["format"] == V.FORMAT  # plain JSON, not a pickle
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.word2idx == vocab.word2idx
    assert loaded.idx2word == vocab.idx2word
    assert (loaded.threshold, loaded.sources) == (vocab.threshold, vocab.sources)
    assert loaded.sources == [{"name": caption_file.name, "sha256": V.file_digest(caption_file)}]
    assert not list(path.parent.glob("*.tmp"))  # the atomic write left nothing behind


def test_unknown_words_map_to_unk(caption_file):
    vocab = Vocabulary.build([caption_file], threshold=2)
    assert vocab("zebra") == vocab.unk_id == vocab(vocab.unk_word)
    assert vocab("cat") == vocab.unk_id  # seen, but below the threshold
    assert vocab("dog") == 4


def test_encode_and_decode(caption_file):
    vocab = Vocabulary.build([caption_file], threshold=1)
    a, dog, runs = vocab("a"), vocab("dog"), vocab("runs")
    assert vocab.encode("A dog runs!") == [0, a, dog, runs, 1]
    assert vocab.encode("a zebra") == [0, a, vocab.unk_id, 1]
    assert vocab.encode("?!") == [0, 1]
    assert vocab.decode([0, a, dog, 1, runs, runs]) == "a dog"  # stops at <end>, drops <start>
    assert vocab.decode([a, 0, dog]) == "a dog"  # <start> is dropped wherever it is
    assert vocab.decode([a, vocab.unk_id, len(vocab) + 5]) == "a <unk> <unk>"  # out of range shows as <unk>
    assert vocab.decode(vocab.encode("a dog runs")) == "a dog runs"


def test_from_dict_refuses_foreign_data():
    with pytest.raises(ValueError, match="not a vocabulary"):
        Vocabulary.from_dict({"word2idx": {"a": 0}})
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary.from_dict({"format": V.FORMAT, "idx2word": ["a", "<start>", "<end>", "<unk>"]})
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"])


# ---- load_or_build_vocab: reuse only what matches ----------------------------------------------------
def test_reuses_a_matching_file(caption_file, tmp_path):
    vocab_file = tmp_path / "vocab.json"
    built = load_or_build_vocab([caption_file], 2, vocab_file)
    assert vocab_file.is_file()
    # Tamper with the saved words (keeping the sources): a reload must return the file's words, proving reuse.
    d = json.loads(vocab_file.read_text())
    d["idx2word"].append("zebra")
    vocab_file.write_text(json.dumps(d))
    again = load_or_build_vocab([caption_file], 2, vocab_file, vocab_from_file=True)
    assert again.idx2word == built.idx2word + ["zebra"]
    # vocab_from_file=False ignores the file and rebuilds it.
    rebuilt = load_or_build_vocab([caption_file], 2, vocab_file, vocab_from_file=False)
    assert rebuilt == built
    assert Vocabulary.load(vocab_file) == built


def test_mismatched_threshold_is_refused_or_rebuilt(caption_file, tmp_path):
    vocab_file = tmp_path / "vocab.json"
    load_or_build_vocab([caption_file], 1, vocab_file)
    with pytest.raises(ValueError, match=r"threshold 1 .*does not match threshold 3"):
        load_or_build_vocab([caption_file], 3, vocab_file, vocab_from_file=True)
    rebuilt = load_or_build_vocab([caption_file], 3, vocab_file, vocab_from_file=None)
    assert rebuilt.idx2word == SPECIALS + ["a", "dog"]
    saved = Vocabulary.load(vocab_file)
    assert saved.threshold == 3 and saved == rebuilt  # the file now holds the rebuilt vocabulary


def test_changed_caption_content_is_refused_or_rebuilt(tmp_path):
    # Same file name, same threshold, different captions: only the content digest can tell.
    caption_file = write_captions(tmp_path / "captions_train2017.json", CAPTIONS)
    vocab_file = tmp_path / "vocab.json"
    old = load_or_build_vocab([caption_file], 1, vocab_file)
    write_captions(caption_file, CAPTIONS + ["a zebra"])
    with pytest.raises(ValueError, match="does not match") as e:
        load_or_build_vocab([caption_file], 1, vocab_file, vocab_from_file=True)
    assert "vocab_from_file=False" in str(e.value)  # it says what to do
    new = load_or_build_vocab([caption_file], 1, vocab_file)
    assert new != old and new("zebra") != new.unk_id and old("zebra") == old.unk_id


def test_missing_file_with_vocab_from_file_true(caption_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_or_build_vocab([caption_file], 1, tmp_path / "nope.json", vocab_from_file=True)


@pytest.mark.parametrize("content", [
    b'{"format": "show-and-tell-vocabulary/1", "idx2w',  # a half-written file
    b"\x80\x04\x95\x1a\x00\x00\x00",  # binary, e.g. the Udacity project's pickled vocab.pkl given by mistake
])
def test_corrupt_vocab_file_gives_a_clear_error(caption_file, tmp_path, content):
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_bytes(content)
    with pytest.raises(ValueError, match=r"vocab\.json is not valid JSON.*delete it to rebuild it"):
        load_or_build_vocab([caption_file], 1, vocab_file)


def test_foreign_json_vocab_file_gives_a_clear_error(caption_file, tmp_path):
    vocab_file = tmp_path / "vocab.json"
    vocab_file.write_text(json.dumps({"word2idx": {"a": 0}}))
    with pytest.raises(ValueError, match=r"vocab\.json: not a vocabulary saved by this project"):
        load_or_build_vocab([caption_file], 1, vocab_file)


def test_bad_caption_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="caption file not found"):
        Vocabulary.build([tmp_path / "missing.json"], 1)
    (tmp_path / "bad.json").write_text("not json")
    with pytest.raises(ValueError, match="not a valid JSON caption file"):
        Vocabulary.build([tmp_path / "bad.json"], 1)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="no 'annotations' list"):
        Vocabulary.build([tmp_path / "list.json"], 1)


# ---- nothing touches the network at import time ---------------------------------------------------------
def test_imports_and_tokenizing_need_no_network_and_no_nltk_data(tmp_path):
    """Import the library with sockets and nltk.download disabled, and tokenize with no nltk data at all."""
    script = textwrap.dedent("""
        import socket
        def refuse(*a, **k):
            raise AssertionError("network access attempted")
        class NoNetwork(socket.socket):  # a class, so that modules subclassing socket.socket still import
            def __init__(self, *a, **k):
                refuse()
        socket.socket = NoNetwork
        socket.create_connection = refuse
        import nltk, nltk.data
        nltk.download = refuse
        nltk.data.path[:] = []  # no punkt or any other downloaded data can be found
        import vocabulary, data_loader, model
        assert vocabulary.tokenize("Hello there, a dog running!") == ["hello", "there", "a", "dog", "running"]
        print("ok")
    """)
    env = dict(os.environ, NLTK_DATA=str(tmp_path), PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"


# ---- real COCO captions (../shared/data/coco-mini), skipped when absent ------------------------------------
COCO_VAL_ALL = (Path(__file__).resolve().parents[2] / "shared" / "data" / "coco-mini" / "annotations"
                / "captions_val2017_all5000.json")


@pytest.mark.parametrize("threshold, size", [(3, 3243), (5, 2326)])
def test_vocabulary_of_the_official_val2017_captions(threshold, size):
    """Sizes measured with this tokenizer on COCO's complete captions_val2017.json (25,014 captions)."""
    if not COCO_VAL_ALL.is_file():
        pytest.skip(f"real COCO captions not found at {COCO_VAL_ALL}")
    vocab = Vocabulary.build([COCO_VAL_ALL], threshold=threshold)
    assert len(vocab) == size
    assert vocab.idx2word[3:6] == ["a", "on", "of"]  # the most frequent words come first
    assert vocab.encode("A man riding a wave on top of a surfboard.")[1:-1] == [
        vocab(w) for w in "a man riding a wave on top of a surfboard".split()]
    assert vocab.unk_id not in vocab.encode("A man riding a wave on top of a surfboard.")



# ---- the token cache (issue 13, item 9) ---------------------------------------------------------------
REAL_TOKENIZE = V.tokenize


@pytest.fixture
def counted_tokenize(monkeypatch):
    """vocabulary.tokenize, counted: the captions nltk really tokenized."""
    calls = []

    def counted(text):
        calls.append(text)
        return REAL_TOKENIZE(text)

    monkeypatch.setattr(V, "tokenize", counted)
    return calls


def test_tokens_are_cached_beside_the_vocabulary_and_reused(caption_file, tmp_path, counted_tokenize):
    cache = tmp_path / "cache"
    first = load_or_build_vocab([caption_file], 1, cache / "vocab.json")
    assert len(counted_tokenize) == len(CAPTIONS)
    (token_file,) = cache.glob("tokens-captions_train2017-*.json")
    assert V.file_digest(caption_file)[:16] in token_file.name and not list(cache.glob(".*tmp*"))
    counted_tokenize.clear()
    again = Vocabulary.build([caption_file], 1, cache)  # a later run or process: nltk is not run again
    tokens = V.caption_tokens(caption_file, CAPTIONS, cache)
    assert counted_tokenize == [] and again == first
    assert tokens == {c: REAL_TOKENIZE(c) for c in CAPTIONS}
    assert V.caption_tokens(caption_file, CAPTIONS, None) == tokens  # no cache folder: tokenized, same result


def test_an_edited_caption_file_or_a_new_tokenizer_gets_fresh_tokens(caption_file, tmp_path, counted_tokenize,
                                                                     monkeypatch):
    cache = tmp_path / "cache"
    V.caption_tokens(caption_file, CAPTIONS, cache)
    edited = CAPTIONS[:2] + ["A cat sleeps."]
    write_captions(caption_file, edited)  # same name, new content: a new sha256, a new cache file
    counted_tokenize.clear()
    tokens = V.caption_tokens(caption_file, edited, cache)
    assert counted_tokenize == edited and tokens["A cat sleeps."] == ["a", "cat", "sleeps"]
    assert len(list(cache.glob("tokens-*.json"))) == 2
    monkeypatch.setattr(V, "TOKENIZER_VERSION", V.TOKENIZER_VERSION + 1)  # tokenize() changed its rule
    counted_tokenize.clear()
    V.caption_tokens(caption_file, edited, cache)
    assert counted_tokenize == edited  # the old tokens were not trusted
    counted_tokenize.clear()
    V.caption_tokens(caption_file, edited, cache)
    assert counted_tokenize == []  # and the rebuilt cache is the new tokenizer's


@pytest.mark.parametrize("content", [b"", b'{"format": "show-and-tell-tokens/1", "tok', b"\x80\x81 not utf-8",
                                     b'{"format": "show-and-tell-tokens/1", "sha256": "%s", "tokenizer": 1, '
                                     b'"tokens": ["a list"]}'])
def test_a_broken_token_cache_is_rebuilt(caption_file, tmp_path, counted_tokenize, capsys, content):
    cache = tmp_path / "cache"
    V.caption_tokens(caption_file, CAPTIONS, cache)
    (token_file,) = cache.glob("tokens-*.json")
    token_file.write_bytes(content.replace(b"%s", V.file_digest(caption_file).encode()))  # a crash, a bad disk
    counted_tokenize.clear()
    tokens = V.caption_tokens(caption_file, CAPTIONS, cache)
    assert tokens == {c: REAL_TOKENIZE(c) for c in CAPTIONS} and counted_tokenize == CAPTIONS
    assert "is unreadable" in capsys.readouterr().out
    assert json.loads(token_file.read_text())["sha256"] == V.file_digest(caption_file)  # whole again


def test_the_dataset_reads_cached_tokens_and_encodes_as_before(tmp_path, counted_tokenize):
    from data_loader import CocoCaptionDataset

    ann = write_captions(tmp_path / "captions_val2017.json", CAPTIONS + [None, "", "?!"])
    vocab = Vocabulary.build([ann], 1)
    plain = CocoCaptionDataset(tmp_path, ann, vocab, check_images=False)
    cached = CocoCaptionDataset(tmp_path, ann, vocab, check_images=False, cache_dir=tmp_path / "cache")
    counted_tokenize.clear()
    again = CocoCaptionDataset(tmp_path, ann, vocab, check_images=False, cache_dir=tmp_path / "cache")
    assert counted_tokenize == []  # the second dataset ran no nltk
    for ds in (cached, again):
        assert (ds.tokens == plain.tokens).all() and (ds.lengths == plain.lengths).all()
        assert ds.ann_ids == plain.ann_ids == [1, 2, 3]  # the empty and punctuation-only captions skipped alike


def test_rare_endings_are_the_words_captions_almost_never_end_on(tmp_path):
    """Each word's share of caption endings among its occurrences: "red" ends 1 of 60 captions it is in (under
    2%), "grass" 30 of 30; "a" ends none. The list is saved, and a file saved without it is built again."""
    captions = ["a dog on the red grass"] * 29 + ["a cat on the red mat"] * 30 + ["the ball is red"] + \
               ["a dog on grass"]
    path = write_captions(tmp_path / "captions.json", captions)
    vocab = Vocabulary.build(path, threshold=1)
    assert set(vocab.rare_endings) == {"a", "dog", "on", "the", "red", "cat", "ball", "is"}
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").rare_endings == vocab.rare_endings
    old = {k: v for k, v in vocab.to_dict().items() if k != "rare_endings"}  # a file from before the count
    assert Vocabulary.from_dict(old).rare_endings is None and not Vocabulary.from_dict(old).matches(path, 1)
    assert vocab.matches(path, 1)


def test_a_word_that_ends_many_training_captions_may_end_one_even_at_a_small_share(tmp_path):
    """"man" ends 21 of the 1,231 captions it is in (1.7%), "red" 10 of 1,231: both under 2%, but 21 endings are
    enough to show that captions do end on "man". The rule, and a file counted under another rule, rebuilt."""
    assert V.RARE_ENDING_SHARE == 0.02 and V.RARE_ENDING_COUNT == 20
    captions = ["a man on red grass"] * 1200 + ["a red shirt on a man"] * 21 + ["a man in red"] * 10
    path = write_captions(tmp_path / "captions.json", captions)
    vocab = Vocabulary.build(path, threshold=1)
    assert set(vocab.rare_endings) == {"a", "on", "red", "shirt", "in"}  # not "man", nor "grass"
    assert vocab.matches(path, 1) and Vocabulary.from_dict(vocab.to_dict()).matches(path, 1)
    older = {**vocab.to_dict(), "rare_endings_rule": {"share": 0.02, "fewer_than": None}}
    assert not Vocabulary.from_dict(older).matches(path, 1)  # built again, with the same words and ids
