"""The vocabulary: a word <-> index mapping built from COCO-format caption files, saved as plain JSON.

    vocab = Vocabulary.build(["data/shapes/annotations/captions_train2017.json"], threshold=5)
    vocab("circle") -> 7, vocab("zebra") -> vocab(vocab.unk_word), len(vocab) -> 40
    vocab.encode("A red circle.") -> [0, 5, 6, 1]   # <start> a red circle <end>
    vocab.decode([5, 6, 1, 9]) -> "a red"             # stops at <end>, drops special tokens

The special tokens come first, in a fixed order, so `<start>` is 0 and `<end>` is 1 as in the Udacity CVND
project; code should still ask `vocab(vocab.start_word)` rather than hard-code ids.
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

    def __init__(self, words, threshold=1, sources=()):
        self.idx2word = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.word2idx = {w: i for i, w in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise ValueError("vocabulary words must be unique")
        self.threshold = threshold
        self.sources = list(sources)  # [{"name": ..., "sha256": ...}], what the words were counted from
        self.start_id, self.end_id, self.unk_id = (self.word2idx[w] for w in SPECIAL_TOKENS)

    # ---- building, saving, loading -------------------------------------------------------------
    @classmethod
    def build(cls, annotations_files, threshold=5):
        """Count the words of every caption in the given COCO caption files; keep the frequent ones."""
        files = _as_list(annotations_files)
        counts = Counter()
        for path in files:
            for caption in read_captions(path):
                counts.update(tokenize(caption))
        # Sort by frequency, then alphabetically, so the same captions always give the same ids.
        words = sorted((w for w, c in counts.items() if c >= threshold), key=lambda w: (-counts[w], w))
        return cls(words, threshold, describe_sources(files))

    def save(self, path):
        """Write the vocabulary as JSON, atomically: a crash never leaves a half-written file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def to_dict(self):
        return {"format": FORMAT, "threshold": self.threshold, "sources": self.sources, "idx2word": self.idx2word}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("idx2word"), list):
            raise ValueError(f"not a vocabulary saved by this project (expected format {FORMAT!r})")
        if tuple(d["idx2word"][: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        return cls(d["idx2word"], d.get("threshold", 1), d.get("sources", []))

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
        return self.threshold == threshold and [s.get("sha256") for s in self.sources] == want

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


def describe_sources(files):
    return [{"name": Path(f).name, "sha256": file_digest(f)} for f in files]


def load_or_build_vocab(annotations_files, threshold=5, vocab_file="vocab.json", vocab_from_file=None):
    """The vocabulary for these caption files and threshold, reusing `vocab_file` when it matches.

    vocab_from_file: None (default) loads the file if it matches and otherwise rebuilds and saves it (a
    file that is not a vocabulary at all is an error, not overwritten);
    True insists on the saved file (an error if it is missing or does not match); False always rebuilds.
    A vocabulary that does not match the requested files and threshold is never used silently.
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
    vocab = Vocabulary.build(annotations_files, threshold)
    vocab.save(vocab_file)
    return vocab


def _as_list(files):
    return [files] if isinstance(files, (str, Path)) else list(files)
