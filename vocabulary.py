"""The vocabulary: a word <-> index mapping built from COCO-format caption files, saved as plain JSON.

    vocab = Vocabulary.build(["data/shapes/annotations/captions_train2017.json"], threshold=5)
    vocab("circle") -> 7, vocab("zebra") -> vocab(vocab.unk_word), len(vocab) -> 40
    vocab.encode("A red circle.") -> [0, 5, 6, 1]   # <start> a red circle <end>
    vocab.decode([5, 6, 1, 9]) -> "a red"             # stops at <end>, drops special tokens

The special tokens come first, in a fixed order, so `<start>` is 0 and `<end>` is 1 as in the Udacity CVND
project; code should still ask `vocab(vocab.start_word)` rather than hard-code ids.

Tokenizing is slow (nltk: about 90 s for COCO's 591k training captions), so `caption_tokens` keeps every
caption file's tokens in a JSON file under the cache folder, beside the vocabulary, keyed by the caption file's
sha256: every later run, process and evaluation reads them instead.
"""
import hashlib
import json
import os
import re
from collections import Counter
from pathlib import Path

from nltk.tokenize import word_tokenize

START, END, UNK = "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (START, END, UNK)
FORMAT = "show-and-tell-vocabulary/1"
# A word that ends under RARE_ENDING_SHARE of the training captions it occurs in, and fewer than RARE_ENDING_COUNT
# of them, is one captions rarely end on: decoding never puts <end> after it (model.word_rules). On Flickr8k's
# training split that is 1,044 of its 2,536 words: 960 that never end a caption, "a", "of", and colours such as
# "red" (16 endings, 0.8% of its captions) and "black" (19). The count spares the few words people do end on that
# are too frequent for the share: "man" ends only 0.9% of its captions but 51 of them; so do woman, girl, blue,
# playing, boy and white (20 to 46 endings). Both rules score the same (docs/results.md, bench/word_rules.py).
RARE_ENDING_SHARE = 0.02
RARE_ENDING_COUNT = 20
RARE_ENDING_RULE = {"share": RARE_ENDING_SHARE, "fewer_than": RARE_ENDING_COUNT}  # saved beside the words counted
TOKENS_FORMAT = "show-and-tell-tokens/1"
TOKENIZER_VERSION = 1  # raise it whenever tokenize() changes: cached tokens of the old rule are then rebuilt
_HAS_WORD_CHAR = re.compile(r"\w")


def tokenize(text):
    """Lower-case and split a caption into words with nltk (no downloaded data needed).

    `preserve_line=True` skips the sentence splitter, which is the part of nltk that needs the punkt
    download. Tokens without a letter or digit (punctuation, emoji) are dropped: they carry no content
    and the caption metrics strip them anyway.
    """
    tokens = word_tokenize(str(text).lower(), preserve_line=True)
    # Without the sentence splitter a full stop inside a caption stays on its word ("bench. a dog").
    tokens = [t.rstrip(".") if len(t) > 1 else t for t in tokens]
    return [t for t in tokens if _HAS_WORD_CHAR.search(t)]


def file_digest(path):
    """sha256 of a file's bytes: identifies a caption file wherever it is stored."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_captions(annotations_file):
    """All caption strings of a COCO-format annotation file, with a clear error for a bad file."""
    path = Path(annotations_file)
    if not path.is_file():
        raise FileNotFoundError(f"caption file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a valid JSON caption file: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{path} has no 'annotations' list, so it is not a COCO caption file")
    # A caption that is not a string (null, a number) is skipped by the dataset; it must not add words either.
    return [a["caption"] for a in data["annotations"] if isinstance(a, dict) and isinstance(a.get("caption"), str)]


class Vocabulary:
    """Words seen at least `threshold` times in the training captions, plus the special tokens."""

    start_word, end_word, unk_word = START, END, UNK

    def __init__(self, words, threshold=1, sources=(), rare_endings=None, rare_endings_rule=None):
        self.idx2word = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.word2idx = {w: i for i, w in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise ValueError("vocabulary words must be unique")
        self.threshold = threshold
        self.sources = list(sources)  # [{"name": ..., "sha256": ...}], what the words were counted from
        # The words that rarely end a training caption (function rare_endings); None: not counted.
        self.rare_endings = None if rare_endings is None else [w for w in rare_endings if w in self.word2idx]
        self.rare_endings_rule = rare_endings_rule  # the rule that counted them, RARE_ENDING_RULE when built
        self.start_id, self.end_id, self.unk_id = (self.word2idx[w] for w in SPECIAL_TOKENS)

    # ---- building, saving, loading -------------------------------------------------------------
    @classmethod
    def build(cls, annotations_files, threshold=5, cache_dir=None):
        """Count the words of every caption in the given COCO caption files; keep the frequent ones.
        cache_dir: where caption_tokens keeps the files' tokens (None: tokenize, cache nothing)."""
        files = _as_list(annotations_files)
        counts, endings = Counter(), Counter()
        for path in files:
            captions = read_captions(path)
            tokens = caption_tokens(path, captions, cache_dir)
            for caption in captions:
                counts.update(tokens[caption])
                endings.update(tokens[caption][-1:])
        # Sort by frequency, then alphabetically, so the same captions always give the same ids.
        words = sorted((w for w, c in counts.items() if c >= threshold), key=lambda w: (-counts[w], w))
        return cls(words, threshold, describe_sources(files), rare_endings(words, counts, endings), RARE_ENDING_RULE)

    def save(self, path):
        """Write the vocabulary as JSON, atomically: a crash never leaves a half-written file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def to_dict(self):
        d = {"format": FORMAT, "threshold": self.threshold, "sources": self.sources, "idx2word": self.idx2word}
        if self.rare_endings is None:
            return d
        return {**d, "rare_endings": self.rare_endings, "rare_endings_rule": self.rare_endings_rule}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("idx2word"), list):
            raise ValueError(f"not a vocabulary saved by this project (expected format {FORMAT!r})")
        if tuple(d["idx2word"][: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        return cls(d["idx2word"], d.get("threshold", 1), d.get("sources", []), d.get("rare_endings"),
                   d.get("rare_endings_rule"))

    @classmethod
    def load(cls, path):
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:  # a half-written file, or a binary one (vocab.pkl)
            raise ValueError(f"vocabulary file {path} is not valid JSON ({e}); delete it to rebuild it") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def matches(self, annotations_files, threshold):
        """True when this vocabulary was built from exactly these files' contents with this threshold."""
        want = [s["sha256"] for s in describe_sources(_as_list(annotations_files))]
        # A file saved before endings were counted, or counted under another rule, is built again: the same
        # words and ids, and the endings of today's rule.
        return self.threshold == threshold and [s.get("sha256") for s in self.sources] == want and \
            self.rare_endings is not None and self.rare_endings_rule == RARE_ENDING_RULE

    # ---- using it ------------------------------------------------------------------------------
    def __call__(self, word):
        return self.word2idx.get(word, self.unk_id)

    def __len__(self):
        return len(self.idx2word)

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.idx2word == other.idx2word

    def encode(self, caption):
        """Caption text -> ids framed by <start> and <end>."""
        return [self.start_id] + [self(w) for w in tokenize(caption)] + [self.end_id]

    def decode(self, ids):
        """Ids -> a clean sentence: stops at <end>, drops <start>; unknown words show as <unk>."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i != self.start_id:
                words.append(self.idx2word[i] if 0 <= i < len(self) else UNK)
        return " ".join(words)

    def __repr__(self):
        return f"Vocabulary({len(self)} words, threshold={self.threshold})"


def rare_endings(words, counts, endings, share=RARE_ENDING_SHARE, fewer_than=RARE_ENDING_COUNT):
    """The words of `words` that rarely end a training caption: those that end under `share` of the captions
    they occur in (counts: occurrences, endings: captions ended, per word) and fewer than `fewer_than` of
    them (None: any number)."""
    return [w for w in words if endings[w] < share * counts[w] and (fewer_than is None or endings[w] < fewer_than)]


def describe_sources(files):
    return [{"name": Path(f).name, "sha256": file_digest(f)} for f in files]


def load_or_build_vocab(annotations_files, threshold=5, vocab_file="vocab.json", vocab_from_file=None,
                        cache_dir=None):
    """The vocabulary for these caption files and threshold, reusing `vocab_file` when it matches.

    vocab_from_file: None (default) loads the file if it matches and otherwise rebuilds and saves it (a
    file that is not a vocabulary at all is an error, not overwritten);
    True insists on the saved file (an error if it is missing or does not match); False always rebuilds.
    A vocabulary that does not match the requested files and threshold is never used silently.
    cache_dir: where a rebuild keeps the captions' tokens (caption_tokens); None: beside vocab_file.
    """
    vocab_file = Path(vocab_file)
    if vocab_from_file is not False and vocab_file.exists():
        vocab = Vocabulary.load(vocab_file)
        if vocab.matches(annotations_files, threshold):
            return vocab
        if vocab_from_file:
            raise ValueError(
                f"{vocab_file} was built with threshold {vocab.threshold} from {[s['name'] for s in vocab.sources]}, "
                f"which does not match threshold {threshold} and {[Path(f).name for f in _as_list(annotations_files)]}. "
                "Pass vocab_from_file=False (or None) to rebuild it, or point vocab_file elsewhere.")
    elif vocab_from_file:
        raise FileNotFoundError(f"vocab_from_file=True but {vocab_file} does not exist; pass vocab_from_file=None to build it")
    vocab = Vocabulary.build(annotations_files, threshold, cache_dir if cache_dir is not None else vocab_file.parent)
    vocab.save(vocab_file)
    return vocab


# ---------------------------------------------------------------------------------------------------
# The token cache: nltk runs once per caption file, not once per process
# ---------------------------------------------------------------------------------------------------
def token_cache_file(annotations_file, digest, cache_dir):
    """cache_dir/tokens-<caption file stem>-<first 16 hex digits of its sha256>.json"""
    return Path(cache_dir) / f"tokens-{Path(annotations_file).stem}-{digest[:16]}.json"


def caption_tokens(annotations_file, captions, cache_dir=None):
    """{caption text: tokenize(caption text)} for `captions`, the caption strings of `annotations_file`.

    With a cache_dir, the tokens of the file's captions are read from token_cache_file, which is keyed by the
    sha256 of the caption file's bytes and records TOKENIZER_VERSION: an edited caption file or a changed
    tokenizer gets a new or rebuilt cache, never stale tokens. A missing, unreadable or mismatching cache is
    (re)built and written atomically (a temporary file, then a rename), so concurrent processes and crashes
    never leave a half-written one. Without a cache_dir every caption is tokenized.
    """
    captions = list(dict.fromkeys(captions))  # distinct texts, in order
    if cache_dir is None:
        return {c: tokenize(c) for c in captions}
    digest = file_digest(annotations_file)
    path = token_cache_file(annotations_file, digest, cache_dir)
    table = read_token_cache(path, digest)
    missing = [c for c in captions if c not in table]
    if missing:
        table.update((c, tokenize(c)) for c in missing)
        write_token_cache(path, digest, table)
    return table


def read_token_cache(path, digest):
    """The {text: tokens} table of a token cache file, or {} when it is absent, unreadable or not for this
    caption file and tokenizer (said once, then rebuilt by the caller)."""
    if not path.exists():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if (d.get("format"), d.get("sha256"), d.get("tokenizer")) == (TOKENS_FORMAT, digest, TOKENIZER_VERSION):
            # Tokens never hold a space (nltk splits on whitespace), so one string per caption holds them.
            return {text: joined.split(" ") if joined else [] for text, joined in d["tokens"].items()}
        print(f"token cache {path} was written for another caption file or tokenizer; rebuilding it")
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError) as e:
        print(f"token cache {path} is unreadable ({type(e).__name__}); rebuilding it")
    return {}


def write_token_cache(path, digest, table):
    """Write a token cache atomically: a temporary file of this process, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    record = {"format": TOKENS_FORMAT, "sha256": digest, "tokenizer": TOKENIZER_VERSION,
              "tokens": {text: " ".join(tokens) for text, tokens in table.items()}}
    try:
        tmp.write_text(json.dumps(record, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a full disk, Ctrl-C: no half-written file stays behind
        tmp.unlink(missing_ok=True)
        raise


def _as_list(files):
    return [files] if isinstance(files, (str, Path)) else list(files)
