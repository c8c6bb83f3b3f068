"""Tests of metrics.py: the pure-Python BLEU/ROUGE-L/CIDEr-D and PTB tokenizer against pycocoevalcap's Java path.

Reference numbers come from pycocoevalcap itself, run on real COCO captions (../shared/data/coco-mini); the
tests that need those files or Java skip cleanly without them.
"""
import importlib.util
import json
import math
import random
import shutil
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

import metrics
from metrics import MissingMetricWarning, format_scores, ptb_tokenize, score_captions, score_tokenized

REPO_ROOT = Path(__file__).resolve().parents[1]
HAVE_JAVA = shutil.which("java") is not None and importlib.util.find_spec("pycocoevalcap") is not None
requires_java = pytest.mark.skipif(not HAVE_JAVA, reason="needs Java on the PATH and pycocoevalcap")
SAME_TOKENS_TOL = 1e-6  # pure Python vs pycocoevalcap on identical tokens: only float summation order differs
RAW_TOL = 1e-3  # python backend (our tokenizer) vs java backend (Stanford's) from raw captions
# Share of the 25,014 captions of captions_val2017_all5000.json that ptb_tokenize tokenizes exactly like the
# Java PTBTokenizer. Measured: all of them (100%); the margin allows for a handful of future edge cases.
MIN_TOKENIZER_AGREEMENT = 0.999
LARGE_CHECK_IMAGES = 2500  # pycocoevalcap's own Cider needs ~1 s per 1000 images: half the 5000-image file
NON_METEOR = ("Bleu", "ROUGE_L", "CIDEr")
BLEU_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")


def leave_one_out(annotation_file):
    """For each image: its first human caption as the candidate, the others as references."""
    by_image = defaultdict(list)
    for a in json.loads(Path(annotation_file).read_text())["annotations"]:
        by_image[a["image_id"]].append(a["caption"])
    return {i: c[1:] for i, c in by_image.items()}, {i: c[0] for i, c in by_image.items()}


def pycocoevalcap_scores(gts, res):
    """pycocoevalcap's own Bleu, Rouge and Cider (pure Python, no Java) on already tokenized captions."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: list(r) for i, r in gts.items()}
    res = {i: [c] for i, c in res.items()}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = dict(zip(BLEU_KEYS, bleu))
    scores["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr"] = Cider().compute_score(gts, res)[0]
    return scores


def assert_scores_close(ours, theirs, tol):
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=tol), key


# ---------------------------------------------------------------------------------------------------------
# Fixtures: real COCO captions, and the Java path's results, computed once per module
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def val_captions(coco_mini):
    """Leave-one-out references and candidates for the 159 images of captions_val2017.json."""
    return leave_one_out(coco_mini / "annotations" / "captions_val2017.json")


@pytest.fixture(scope="module")
def val5000_captions(coco_mini):
    """Leave-one-out references and candidates for the 5000 images of captions_val2017_all5000.json."""
    path = coco_mini / "annotations" / "captions_val2017_all5000.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return leave_one_out(path)


@pytest.fixture(scope="module")
def java_val_scores(val_captions):
    """All metrics, METEOR included, from the java backend (one tokenizer run, one METEOR start)."""
    if not HAVE_JAVA:
        pytest.skip("needs Java on the PATH and pycocoevalcap")
    return score_captions(*val_captions, backend="java")


# ---------------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------------
PERFECT = {1: "a man riding a wave on top of a surfboard", 2: "two dogs play with a red ball in the park",
           3: "A plate of food, with broccoli and rice."}


@pytest.mark.parametrize("backend", ["python", pytest.param("java", marks=requires_java)])
def test_candidates_equal_to_their_only_reference_score_perfectly(backend):
    refs = {i: [c] for i, c in PERFECT.items()}
    scores = score_captions(refs, dict(PERFECT), metrics=("Bleu", "ROUGE_L"), backend=backend)
    for key in (*BLEU_KEYS, "ROUGE_L"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6), key


def test_same_tokens_match_pycocoevalcap_on_coco_val(val_captions):
    pytest.importorskip("pycocoevalcap")
    refs, cands = val_captions
    gts = {i: [ptb_tokenize(r) for r in rs] for i, rs in refs.items()}
    res = {i: ptb_tokenize(c) for i, c in cands.items()}
    assert_scores_close(score_tokenized(gts, res), pycocoevalcap_scores(gts, res), SAME_TOKENS_TOL)


def test_same_tokens_match_pycocoevalcap_on_thousands_of_images(val5000_captions):
    pytest.importorskip("pycocoevalcap")
    refs, cands = val5000_captions
    ids = sorted(cands)[:LARGE_CHECK_IMAGES]
    gts = {i: [ptb_tokenize(r) for r in refs[i]] for i in ids}
    res = {i: ptb_tokenize(cands[i]) for i in ids}
    ours = score_tokenized(gts, res)
    assert_scores_close(ours, pycocoevalcap_scores(gts, res), SAME_TOKENS_TOL)
    assert 0.5 < ours["CIDEr"] < 1.5 and 0.1 < ours["Bleu_4"] < 0.4  # human captions: the usual range


def test_same_tokens_match_pycocoevalcap_on_edge_cases():
    """Repeated n-grams (clipping), one-word and empty references, and the PTB's non-breaking space."""
    pytest.importorskip("pycocoevalcap")
    gts = {1: ["a a a a a", "a cat"], 2: ["dog", "a dog runs"], 3: ["22\u00a03/4 inch pipe", "a pipe"],
           4: ["", "a red bus on a street"], 5: ["the the the cat sat on the mat", "a cat on a mat"]}
    res = {1: "a a a a a a a", 2: "dog", 3: "a 22\u00a03/4 inch pipe", 4: "a bus", 5: "the cat the cat sat"}
    assert_scores_close(score_tokenized(gts, res), pycocoevalcap_scores(gts, res), SAME_TOKENS_TOL)


def test_lcs_matches_dynamic_programming():
    pytest.importorskip("pycocoevalcap")
    from pycocoevalcap.rouge.rouge import my_lcs

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(1, 14))]
        b = [rng.choice("abcde") for _ in range(rng.randint(1, 14))]
        assert metrics._lcs_length(a, b) == my_lcs(a, b)


@requires_java
def test_raw_captions_python_backend_close_to_java(val_captions, java_val_scores):
    python_scores = score_captions(*val_captions, metrics=NON_METEOR, backend="python")
    assert_scores_close(python_scores, {k: java_val_scores[k] for k in (*BLEU_KEYS, "ROUGE_L", "CIDEr")}, RAW_TOL)


@requires_java
def test_java_backend_reports_every_metric(java_val_scores):
    assert set(java_val_scores) == set(metrics.METRIC_KEYS)
    assert java_val_scores.missing == {}
    assert 0.1 < java_val_scores["METEOR"] < 0.5  # human vs human captions
    assert all(math.isfinite(v) for v in java_val_scores.values())


def test_metrics_argument_restricts_the_scorers():
    refs = {i: [c] for i, c in PERFECT.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no METEOR requested, so no warning about it
        scores = score_captions(refs, dict(PERFECT), metrics=("bleu", "CIDEr"), backend="python")
    assert set(scores) == {*BLEU_KEYS, "CIDEr"} and scores.missing == {}


@pytest.mark.parametrize("backend", ["python", pytest.param("java", marks=requires_java)])
def test_empty_candidates_score_zero(backend):
    refs = {1: ["a dog on a couch"], 2: ["a cat on a mat"], 3: ["a red bus"]}
    cands = {1: "", 2: "...", 3: "a red bus"}  # "..." is empty once punctuation is dropped
    scores = score_captions(refs, cands, metrics=NON_METEOR, backend=backend)
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["ROUGE_L"] == pytest.approx(1 / 3)  # only the third image scores, perfectly
    every_empty = score_captions(refs, {i: "" for i in refs}, metrics=NON_METEOR, backend=backend)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in every_empty.values())


# ---------------------------------------------------------------------------------------------------------
# METEOR without Java
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def no_java(monkeypatch):
    """Pretend that Java is not installed."""
    monkeypatch.setattr(metrics.shutil, "which", lambda name, *args, **kwargs: None)


def test_without_java_meteor_is_missing_with_its_reason(no_java):
    refs = {i: [c] for i, c in PERFECT.items()}
    with pytest.warns(MissingMetricWarning, match="METEOR"):
        scores = score_captions(refs, dict(PERFECT))  # backend="auto" falls back to python
    assert "METEOR" not in scores
    assert "Java" in scores.missing["METEOR"]
    assert set(scores) == {*BLEU_KEYS, "ROUGE_L", "CIDEr"}
    assert "METEOR n/a (needs Java" in format_scores(scores)
    assert json.loads(json.dumps(scores)) == dict(scores)  # still a plain dict for metrics.jsonl


def test_java_backend_without_java_says_what_to_do(no_java):
    with pytest.raises(RuntimeError, match="java"):
        score_captions({1: ["a dog"]}, {1: "a dog"}, backend="java")


def test_module_imports_without_java_or_side_effects(tmp_path):
    code = "import metrics; print(metrics.ptb_tokenize(\"A dog's ball.\"))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env={"PATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "a dog 's ball"


# ---------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("refs, cands, error, message", [
    ({1: ["a"], 2: ["b"]}, {1: "a", 3: "c"}, ValueError, r"same image ids.*\[3\].*\[2\]"),
    ({1: ["a"]}, {1: ["a"]}, TypeError, r"candidates\[1\] must be one caption string, got list"),
    ({1: "a dog"}, {1: "a dog"}, TypeError, r"references\[1\] must be a list"),
    ({1: []}, {1: "a"}, ValueError, r"references\[1\] is empty"),
    ({1: ["a", None]}, {1: "a"}, TypeError, r"strings only, found NoneType"),
    ({}, {}, ValueError, "no candidate captions"),
    ([("a",)], {1: "a"}, TypeError, "dicts keyed by image id"),
])
def test_bad_inputs_raise_clear_errors(refs, cands, error, message):
    with pytest.raises(error, match=message):
        score_captions(refs, cands, backend="python")


def test_unknown_metric_or_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown metric 'SPICE'"):
        score_captions({1: ["a"]}, {1: "a"}, metrics=("SPICE",), backend="python")
    with pytest.raises(ValueError, match="unknown backend"):
        score_captions({1: ["a"]}, {1: "a"}, backend="matlab")


# ---------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------
# (raw caption, what pycocoevalcap's Java PTBTokenizer + punctuation removal makes of it), checked against
# the Java tokenizer by test_tricky_cases_match_java when Java is present.
TRICKY = [
    ("A man's dog isn't there, and they'll go.", "a man 's dog is n't there and they 'll go"),
    ("Don't DON'T can't won't I'm we've you're I'd", "do n't do n't ca n't wo n't i 'm we 've you 're i 'd"),
    ("The dogs' toys and the boys' bikes", "the dogs toys and the boys bikes"),
    ("it's 5 o'clock, ma'am; hors d'oeuvres", "it 's 5 o'clock ma'am hors d'oeuvres"),
    ("y'all rock 'n' roll the '90s", "y' all rock 'n' roll the '90s"),
    ("He cannot, gonna wanna gotta", "he can not gon na wan na got ta"),
    ("A close-up of a double-decker bus -- or a 5-year-old's x-ray - maybe",
     "a close-up of a double-decker bus or a 5-year-old 's x-ray maybe"),
    ("St. Louis Ave. and Mt. Everest, Jan. 5, U.S.A. and the U.S. Army", "st. louis ave. and mt. everest jan. 5 "
     "u.s.a. and the u.s. army"),
    ("A T.V. on a table.", "a t.v. on a table"),
    ("A street sign.Another sign", "a street sign.another sign"),
    ('A "No Parking" sign and `quoted\' and \u201ccurly\u201d \u2018ones\u2019',
     "a no parking sign and quoted and curly ones"),
    ("It\u2019s a dog\u2019s life", "it 's a dog 's life"),
    ("red/white and/or a/b/c/d", "red/white and/or a/b/c / d"),
    ("It is 12:30 and 3.14 and 1,000 and 10.5% and $5 and #1",
     "it is 12:30 and 3.14 and 1,000 and 10.5 % and $ 5 and # 1"),
    ("22 3/4 St and 1/2 a pie and \u00bd cup", "22\u00a03/4 st and 1/2 a pie and 1/2 cup"),
    ("A (big) [red] {blue} bus", "a -lrb- big -rrb- -lsb- red -rsb- -lcb- blue -rcb- bus"),
    ("a <unk> on <UNK> <end>", "a <unk> on <unk> <end>"),
    ("Wow!!! Really?! ... what.... ok", "wow !!! really ?! what ok"),
    ("A dog \U0001F600 and a \u2665 & AT&T and R&B", "a dog and a \u2665 & at&t and r&b"),
    ("caf\u00e9 na\u00efve Z\u00fcrich", "caf\u00e9 na\u00efve z\u00fcrich"),
    ("a\u2013b a\u2014b", "a b a b"),
    ("Mr. Smith and Dr. Who vs. the Co. Ltd", "mr. smith and dr. who vs. the co. ltd"),
    ("email me@example.com or www.example.com #hashtag @name",
     "email me@example.com or www.example.com #hashtag @name"),
    ("", ""),
    ("  spaces \t and\nnew lines  ", "spaces and new lines"),
]


@pytest.mark.parametrize("raw, expected", TRICKY)
def test_ptb_tokenize_tricky_cases(raw, expected):
    assert ptb_tokenize(raw) == expected


@requires_java
def test_tricky_cases_match_java():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({k: [{"caption": " ".join(raw.split())}] for k, (raw, _) in enumerate(TRICKY)})
    assert [java[k][0] for k in range(len(TRICKY))] == [expected for _, expected in TRICKY]


@requires_java
def test_tokenizer_agrees_with_java_on_real_captions(val5000_captions):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs, cands = val5000_captions
    captions = {i: [{"caption": " ".join(c.split())} for c in [cands[i], *refs[i]]] for i in cands}
    java = PTBTokenizer().tokenize(captions)  # one run over all 25k captions, as pycocoevalcap does
    pairs = [(java[i][k], ptb_tokenize(c["caption"])) for i, cs in captions.items() for k, c in enumerate(cs)]
    same = sum(a == b for a, b in pairs) / len(pairs)
    assert len(pairs) > 25_000 and same >= MIN_TOKENIZER_AGREEMENT, f"{same:.4%} identical"


def test_caption_diagnostics_count_what_the_scores_hide():
    captions = {1: "a dog runs", 2: "a dog runs", 3: "a cat sits on a", 4: "a <unk> sits", 5: "a dog runs",
                6: "a black cat sits"}
    training = ["A dog runs.", "A black cat sits on the mat"]
    d = metrics.caption_diagnostics(captions, training, no_end_words=("on",), top=2)
    assert d["captions"] == 6 and d["distinct"] == 4
    assert d["copied_share"] == pytest.approx(3 / 6)  # "A dog runs." tokenizes to "a dog runs"
    assert d["words_used"] == len({"a", "dog", "runs", "cat", "sits", "on", "<unk>", "black"})
    assert d["mean_length"] == pytest.approx((3 * 3 + 5 + 3 + 4) / 6)
    # "a" never ends a training caption: caption 3 ends badly; "sits" ends none either (a word the training
    # captions use only inside a sentence), so captions 4 and 6 do too; "runs" ends one of one.
    assert d["with_unk"] == 1 and d["bad_endings"] == 3
    assert d["most_repeated"] == [["a dog runs", 3]]  # captions written once are not "repeated"
    no_data = metrics.caption_diagnostics(captions, no_end_words=("a",))
    assert no_data["copied_share"] is None and no_data["bad_endings"] == 1
    # training captions end on "dog runs" and "the mat": the cat and <unk> captions end on pairs none ends on
    assert d["broken_endings"] == 3 and no_data["broken_endings"] is None
    assert d["cut_at_max_len"] is None  # no max_len given
    lines = metrics.diagnostics_lines(d)
    assert lines[0].startswith("4 distinct captions of 6; 50.0% copy a training caption")
    assert lines[1].startswith("3 ending on two words that end no training caption")
    assert lines[2].split() == ["3", "x", "a", "dog", "runs"]


def test_broken_endings_take_token_lists_and_cut_captions_are_those_of_max_len_words():
    captions = {1: "a man rides a bike on a dirt", 2: "a man rides a bike on a dirt road", 3: "a dog",
                4: "dog", 5: "a dog runs through the grass"}
    training = [["a", "man", "on", "a", "dirt", "road"], ["a", "dog"], ["the", "grass"]]  # tokens, as cached
    d = metrics.caption_diagnostics(captions, training, max_len=9)
    assert d["broken_endings"] == 2  # "a dirt" ends none; "dog" alone is no training caption either
    # decoding stops after max_len positions, <end> included: 9 words never said <end>, 8 words did
    assert d["cut_at_max_len"] == 1 and metrics.caption_diagnostics(captions, max_len=10)["cut_at_max_len"] == 0
    assert "1 cut at max_len (no <end>)" in metrics.diagnostics_lines(d)[1]


@pytest.mark.parametrize("beam", [1, 3])
def test_decoding_fills_max_len_with_words_only_when_it_never_says_end(beam):
    """The rule cut_at_max_len relies on: a caption that ended has at most max_len - 1 words."""
    import torch

    from model import DecoderRNN, caption_batch
    from vocabulary import Vocabulary

    vocab = Vocabulary(["a", "dog", "runs"])
    torch.manual_seed(0)
    decoder = DecoderRNN(embed_size=8, hidden_size=16, vocab_size=len(vocab), end_id=vocab.end_id,
                         start_id=vocab.start_id).eval()
    encoder = torch.nn.Module()
    encoder.embed = torch.nn.Identity()
    lengths = {}
    for end_bias in (-1e4, 3.0):  # <end> never, or likely from the first step on
        with torch.no_grad():
            decoder.fc.bias[vocab.end_id] = end_bias
        texts = caption_batch(encoder, decoder, vocab, features=torch.randn(4, 8), beam=beam, max_len=5)
        lengths[end_bias] = [len(t.split()) for t in texts]
    assert lengths[-1e4] == [5] * 4 and max(lengths[3.0]) <= 4


def test_evaluation_tokenizes_the_training_captions_once_then_reads_the_token_cache(tmp_path, monkeypatch):
    import evaluate
    import vocabulary

    annotations = tmp_path / "root" / "annotations"
    annotations.mkdir(parents=True)
    texts = ["A dog runs.", "A man rides a bike on a dirt road", "Two dogs play"]
    (annotations / "captions_train2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "1.jpg"}],
         "annotations": [{"id": i, "image_id": 1, "caption": t} for i, t in enumerate(texts)]}))
    calls = []
    real = vocabulary.tokenize
    monkeypatch.setattr(vocabulary, "tokenize", lambda text: calls.append(text) or real(text))
    first = evaluate.training_captions(tmp_path / "root", tmp_path / "cache")
    assert first == [real(t) for t in texts] and len(calls) == 3
    cached = list((tmp_path / "cache").glob("tokens-captions_train2017-*.json"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob(".*tmp*"))  # renamed into place whole
    assert evaluate.training_captions(tmp_path / "root", tmp_path / "cache") == first and len(calls) == 3
    # an edited caption file has another sha256: its own cache, tokenized afresh
    texts[0] = "A cat sits."
    (annotations / "captions_train2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "1.jpg"}],
         "annotations": [{"id": i, "image_id": 1, "caption": t} for i, t in enumerate(texts)]}))
    assert evaluate.training_captions(tmp_path / "root", tmp_path / "cache")[0] == ["a", "cat", "sits"]
    assert evaluate.training_captions(tmp_path / "nothing", tmp_path / "cache") == ()


def test_bad_endings_follow_the_decoders_rule_a_word_ending_many_captions_may_end_one():
    """'man' ends 20 of the 1,020 training captions it is in (under 2%, but 20 of them): the decoder lets a caption
    end on it, so the diagnostics must not count that ending as bad; 'red' ends 1 of 100 and stays barred."""
    training = [["a", "man"]] * 20 + [["a", "man", "runs"]] * 1000 + [["a", "red"]] + [["a", "red", "car"]] * 99
    d = metrics.caption_diagnostics({1: "a tall man", 2: "a big red"}, training)
    assert d["bad_endings"] == 1
