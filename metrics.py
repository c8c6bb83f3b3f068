"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D), as the COCO caption evaluation computes them.

    scores = score_captions(references, candidates)   # {image_id: ["ref", ...]}, {image_id: "caption"}
    scores["CIDEr"], scores.missing                    # e.g. {"METEOR": "needs Java ..."} without Java

Two backends give the same numbers (see tests/test_metrics.py):
- "java": pycocoevalcap's Stanford PTBTokenizer and its Bleu, Meteor, Rouge and Cider scorers, called
  directly, as papers report them. SPICE is left out: it downloads Stanford CoreNLP on first use.
- "python": no Java and no subprocesses. `ptb_tokenize` follows the PTBTokenizer closely, and BLEU,
  ROUGE-L and CIDEr-D are written out here from their definitions; METEOR has no pure-Python version,
  so it is reported as missing. Fast enough to run after every training epoch: the references' tokens and
  n-grams are cached between calls (`clear_caches()` frees them).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
import re
import shutil
import warnings
from collections import Counter
from functools import lru_cache
from typing import Hashable, Iterable, Mapping, NamedTuple, Sequence

from shapes_dataset import load_ground_truth, object_f1
from vocabulary import UNK, rare_endings, tokenize

# ---------------------------------------------------------------------------------------------------------
# Public names and constants
# ---------------------------------------------------------------------------------------------------------
SCORERS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")  # what `metrics=` may name
METRIC_KEYS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")  # what comes back
BACKENDS = ("auto", "java", "python")

MAX_N = 4  # BLEU-4 and CIDEr-D both use 1- to 4-grams
BLEU_SMALL = 1e-9  # pycocoevalcap adds these so that 0/0 n-gram precisions give 0, not an error
BLEU_TINY = 1e-15
ROUGE_BETA = 1.2  # weight of recall over precision in ROUGE-L's F-measure
CIDER_SIGMA = 6.0  # width of CIDEr-D's Gaussian penalty on the length difference
CIDER_SCALE = 10.0  # CIDEr-D is reported x10, so that scores look like CIDEr's

# pycocoevalcap drops these tokens after PTB tokenization. The bracket names are spelled in upper case but
# the tokenizer has already lower-cased them, so brackets survive as "-lrb-" etc.: kept here on purpose.
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                             ".", "?", "!", ",", ":", "-", "--", "...", ";"])
# Validation scores the same references after every epoch, so their tokens and n-gram counts are cached:
# about 4 kB per caption, enough for COCO's 5000-image val split (25k references) plus its candidates.
TOKENIZER_CACHE_SIZE = 1 << 17
NGRAM_CACHE_SIZE = 1 << 15


class Scores(dict):
    """Metric name -> value, plus `missing`: metric name -> why it was not computed."""

    def __init__(self, values: Mapping[str, float] = (), missing: Mapping[str, str] = ()):
        super().__init__(values)
        self.missing = dict(missing)


class MissingMetricWarning(UserWarning):
    """A requested metric could not be computed (e.g. METEOR without Java)."""


# ---------------------------------------------------------------------------------------------------------
# score_captions: validation, backend choice, dispatch
# ---------------------------------------------------------------------------------------------------------
def score_captions(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
                   metrics: Iterable[str] | None = None, backend: str = "auto") -> Scores:
    """Score one candidate caption per image against that image's reference captions.

    references: {image_id: ["a reference", ...]} (at least one each); candidates: {image_id: "a caption"},
    with exactly the same image ids (as pycocoevalcap requires; filter the references to score a subset).
    metrics: scorer names from SCORERS, e.g. ("Bleu", "CIDEr"); None means all. "Bleu" gives Bleu_1..4.
    backend: "java", "python", or "auto" (java when Java and pycocoevalcap are both found).
    Returns a Scores dict {"Bleu_1": .., "METEOR": .., "ROUGE_L": .., "CIDEr": ..} on pycocoevalcap's
    scale (CIDEr unscaled, about 0..10). A metric that cannot be computed (METEOR on the python backend)
    is left out, named with its reason in `.missing`, and a MissingMetricWarning is issued.
    """
    _validate(references, candidates)
    scorers = _requested_scorers(metrics)
    backend = _choose_backend(backend)
    if backend == "java":
        return Scores(_score_java(references, candidates, scorers))
    missing = {}
    if "METEOR" in scorers:
        missing["METEOR"] = meteor_missing_reason()
        warnings.warn(f"METEOR not computed: {missing['METEOR']}", MissingMetricWarning, stacklevel=2)
    refs = {i: [ptb_tokenize(r) for r in references[i]] for i in candidates}
    cands = {i: ptb_tokenize(c) for i, c in candidates.items()}
    return Scores(_score_python(refs, cands, [s for s in scorers if s != "METEOR"]), missing)


def score_tokenized(references: Mapping[Hashable, Sequence[str]], candidates: Mapping[Hashable, str],
                    metrics: Iterable[str] | None = None) -> Scores:
    """Pure-Python BLEU, ROUGE-L and CIDEr-D of captions that are already tokenized (tokens joined by spaces).

    Same inputs and outputs as score_captions; the text is used as given (split on spaces, as pycocoevalcap
    splits it), so this is the function to compare with pycocoevalcap's scorers token for token.
    """
    _validate(references, candidates)
    scorers = [s for s in _requested_scorers(metrics) if s != "METEOR"]
    return Scores(_score_python(references, candidates, scorers))


def format_scores(scores: Mapping[str, float], digits: int = 3) -> str:
    """One line such as 'Bleu_4 0.271 | METEOR n/a (needs Java ...) | CIDEr 0.843', in METRIC_KEYS order."""
    missing = getattr(scores, "missing", {})
    parts = [f"{k} {scores[k]:.{digits}f}" if k in scores else f"{k} n/a ({missing[k]})"
             for k in METRIC_KEYS if k in scores or k in missing]
    return " | ".join(parts)


def clear_caches() -> None:
    """Free the cached tokens and n-gram counts (about 4 kB per distinct caption, bounded by the cache sizes)."""
    for cached in (ptb_tokenize, _caption, _cider_references):
        cached.cache_clear()


def _validate(references: Mapping, candidates: Mapping) -> None:
    """Raise a ValueError/TypeError that names the offending image ids, before any scorer asserts."""
    if not isinstance(references, Mapping) or not isinstance(candidates, Mapping):
        raise TypeError("references and candidates must be dicts keyed by image id: "
                        "{id: ['ref', ...]} and {id: 'caption'}")
    if not candidates:
        raise ValueError("no candidate captions to score")
    missing_refs = [i for i in candidates if i not in references]
    missing_cands = [i for i in references if i not in candidates]
    if missing_refs or missing_cands:
        raise ValueError(
            "references and candidates must have the same image ids: "
            f"{len(missing_refs)} candidate ids have no references (e.g. {missing_refs[:5]}), "
            f"{len(missing_cands)} reference ids have no candidate (e.g. {missing_cands[:5]}). "
            "To score a subset, pass {i: references[i] for i in candidates}.")
    for i, caption in candidates.items():
        if not isinstance(caption, str):
            raise TypeError(f"candidates[{i!r}] must be one caption string, got {type(caption).__name__}")
    for i, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise TypeError(f"references[{i!r}] must be a list of caption strings, got {type(refs).__name__}")
        if len(refs) == 0:
            raise ValueError(f"references[{i!r}] is empty; every image needs at least one reference")
        bad = [type(r).__name__ for r in refs if not isinstance(r, str)]
        if bad:
            raise TypeError(f"references[{i!r}] must hold strings only, found {bad[0]}")


def _requested_scorers(metrics: Iterable[str] | None) -> list[str]:
    """Canonical scorer names, in SCORERS order; names are matched case-insensitively."""
    if metrics is None:
        return list(SCORERS)
    if isinstance(metrics, str):
        metrics = [metrics]
    by_lower = {s.lower(): s for s in SCORERS}
    wanted = set()
    for name in metrics:
        if name.lower() not in by_lower:
            raise ValueError(f"unknown metric {name!r}; choose from {SCORERS}")
        wanted.add(by_lower[name.lower()])
    return [s for s in SCORERS if s in wanted]


def _java_ready() -> bool:
    return shutil.which("java") is not None and importlib.util.find_spec("pycocoevalcap") is not None


def _choose_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "auto":
        return "java" if _java_ready() else "python"
    if backend == "java" and not _java_ready():
        raise RuntimeError("backend='java' needs `java` on the PATH (e.g. `apt-get install default-jre`) and "
                           "`pip install pycocoevalcap`; or use backend='python' (no METEOR)")
    return backend


def meteor_missing_reason() -> str:
    if shutil.which("java") is None:
        return "needs Java, which is not on the PATH"
    if importlib.util.find_spec("pycocoevalcap") is None:
        return "needs pycocoevalcap (pip install pycocoevalcap)"
    return "needs the java backend (no pure-Python METEOR)"


# ---------------------------------------------------------------------------------------------------------
# Java backend: pycocoevalcap, called directly
# ---------------------------------------------------------------------------------------------------------
def _score_java(references: Mapping, candidates: Mapping, scorers: Sequence[str]) -> dict[str, float]:
    """pycocoevalcap's tokenizer and scorers. No SPICE: it downloads Stanford CoreNLP on first use."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One tokenizer run (one JVM start) for both sides. The tokenizer pairs output lines with captions by
    # position, so every caption is put on one line first: a stray \r or \u2028 would shift all the rest.
    both = {("ref", i): [{"caption": _one_line(r)} for r in refs] for i, refs in references.items()}
    both.update({("cand", i): [{"caption": _one_line(c)}] for i, c in candidates.items()})
    tokenized = PTBTokenizer().tokenize(both)
    gts = {i: tokenized[("ref", i)] for i in candidates}
    res = {i: tokenized[("cand", i)] for i in candidates}

    scores = {}
    if "Bleu" in scorers:
        bleu, _ = Bleu(MAX_N).compute_score(gts, res, verbose=0)
        scores.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "METEOR" in scorers:
        meteor = Meteor()  # starts its own JVM; deleting it stops that process
        scores["METEOR"] = float(meteor.compute_score(gts, res)[0])
        del meteor
    if "ROUGE_L" in scorers:
        scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in scorers:
        scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return scores


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------------
# Python backend: BLEU, ROUGE-L, CIDEr-D on tokenized captions
# ---------------------------------------------------------------------------------------------------------
class _Caption(NamedTuple):
    """A tokenized caption, split the ways pycocoevalcap splits it."""
    length: int  # number of tokens, for BLEU's brevity penalty
    ngrams: tuple[Counter, ...]  # ngrams[k]: counts of the (k+1)-grams
    rouge_tokens: tuple[str, ...]


@lru_cache(maxsize=NGRAM_CACHE_SIZE)
def _caption(tokenized: str) -> _Caption:
    # BLEU and CIDEr split on any whitespace, ROUGE on " " only; they differ only for the non-breaking space
    # that the PTB tokenizer leaves inside fractions such as "22 3/4".
    tokens = tokenized.split()
    ngrams = tuple(Counter(zip(*(tokens[i:] for i in range(n)))) for n in range(1, MAX_N + 1))
    # "".split(" ") is [""], which pycocoevalcap counts as one token; no tokens makes an empty caption score 0.
    return _Caption(len(tokens), ngrams, tuple(tokenized.split(" ")) if tokenized else ())


def _score_python(references: Mapping, candidates: Mapping, scorers: Sequence[str]) -> dict[str, float]:
    ids = list(candidates)
    cands = [_caption(candidates[i]) for i in ids]
    refs = [[_caption(r) for r in references[i]] for i in ids]
    scores = {}
    if "Bleu" in scorers:
        scores.update({f"Bleu_{n + 1}": b for n, b in enumerate(_bleu(cands, refs))})
    if "ROUGE_L" in scorers:
        scores["ROUGE_L"] = sum(map(_rouge_l, cands, refs)) / len(ids)
    if "CIDEr" in scorers:
        scores["CIDEr"] = _cider_d(cands, refs, tuple(tuple(references[i]) for i in ids))
    return scores


def _bleu(cands: Sequence[_Caption], refs: Sequence[Sequence[_Caption]]) -> list[float]:
    """Corpus BLEU-1..4 with the reference length closest to each candidate (ties: the shorter one)."""
    correct, guess = [0] * MAX_N, [0] * MAX_N
    cand_len = ref_len = 0
    for cand, image_refs in zip(cands, refs):
        cand_len += cand.length
        ref_len += min((abs(r.length - cand.length), r.length) for r in image_refs)[1]
        for k in range(MAX_N):
            guess[k] += max(0, cand.length - k)
            correct[k] += _clipped_matches(cand.ngrams[k], [r.ngrams[k] for r in image_refs])
    scores, product = [], 1.0
    for k in range(MAX_N):
        product *= (correct[k] + BLEU_TINY) / (guess[k] + BLEU_SMALL)
        scores.append(product ** (1.0 / (k + 1)))  # geometric mean of the 1..k+1-gram precisions
    ratio = (cand_len + BLEU_TINY) / (ref_len + BLEU_SMALL)
    brevity = math.exp(1.0 - 1.0 / ratio) if ratio < 1 else 1.0
    return [s * brevity for s in scores]


def _clipped_matches(cand_counts: Mapping, ref_counts: Sequence[Mapping]) -> int:
    """Candidate n-grams found in the references, each counted at most as often as one reference has it."""
    most: dict = {}
    for counts in ref_counts:
        for g in cand_counts.keys() & counts.keys():  # set intersection in C: most n-grams never match
            most[g] = max(most.get(g, 0), counts[g])
    return sum(min(cand_counts[g], n) for g, n in most.items())


def _rouge_l(cand: _Caption, image_refs: Sequence[_Caption]) -> float:
    """ROUGE-L of one candidate: F-measure of the best LCS precision and best LCS recall over references."""
    if not cand.rouge_tokens:
        return 0.0
    lcs = [_lcs_length(cand.rouge_tokens, r.rouge_tokens) for r in image_refs]
    precision = max(lcs) / len(cand.rouge_tokens)
    recall = max((n / len(r.rouge_tokens) for n, r in zip(lcs, image_refs) if r.rouge_tokens), default=0.0)
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + ROUGE_BETA ** 2) * precision * recall / (recall + ROUGE_BETA ** 2 * precision)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence length, bit-parallel (Allison-Dix): one big-int step per token of b."""
    positions: dict[str, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    all_ones = (1 << len(a)) - 1
    row = all_ones  # zero bits mark positions of a that end a common subsequence
    for token in b:
        matches = row & positions.get(token, 0)
        row = ((row + matches) | (row - matches)) & all_ones
    return len(a) - row.bit_count()


def _cider_d(cands: Sequence[_Caption], refs: Sequence[Sequence[_Caption]],
             references: tuple[tuple[str, ...], ...]) -> float:
    """Corpus CIDEr-D, as pycocoevalcap's Cider computes it; `references` are the tokenized `refs`."""
    idf, log_images, ref_norms = _cider_references(references)
    total = 0.0
    for cand, image_refs, image_norms in zip(cands, refs, ref_norms):
        weights, norms = _tfidf(cand, idf, log_images)
        similarity = sum(_cider_similarity(cand, weights, norms, ref, ref_norm, idf)
                         for ref, ref_norm in zip(image_refs, image_norms))
        total += CIDER_SCALE * similarity / (MAX_N * len(image_refs))  # mean over n and references
    return total / len(cands)


@lru_cache(maxsize=1)
def _cider_references(references: tuple[tuple[str, ...], ...]):
    """idf of every reference n-gram, log(number of images), and the norms of the references' tf-idf vectors.

    Cached for one reference set: validation scores the same references after every epoch.
    """
    refs = [[_caption(r) for r in image_refs] for image_refs in references]
    doc_freq = Counter()  # in how many images' reference sets each n-gram occurs
    for image_refs in refs:
        doc_freq.update(set().union(*(counts for r in image_refs for counts in r.ngrams)))
    log_images = math.log(len(refs))
    idf = {g: log_images - math.log(df) for g, df in doc_freq.items()}  # n-grams in no reference: log_images
    return idf, log_images, [[_tfidf(r, idf, log_images)[1] for r in image_refs] for image_refs in refs]


def _tfidf(caption: _Caption, idf: Mapping, default_idf: float) -> tuple[list[dict], list[float]]:
    """Per n: the caption's tf-idf weights and their Euclidean norm."""
    weights = [{g: tf * idf.get(g, default_idf) for g, tf in caption.ngrams[k].items()} for k in range(MAX_N)]
    return weights, [math.sqrt(sum(w * w for w in vector.values())) for vector in weights]


def _cider_similarity(cand: _Caption, cand_weights: Sequence[dict], cand_norms: Sequence[float],
                      ref: _Caption, ref_norms: Sequence[float], idf: Mapping) -> float:
    """Sum over n of the clipped cosine similarity, times the Gaussian length penalty (the '-D' of CIDEr-D)."""
    # pycocoevalcap's "length" is the number of bigrams, max(words - 1, 0); reproduced as it is
    length_gap = max(cand.length - 1, 0) - max(ref.length - 1, 0)
    total = 0.0
    for weights, ref_counts, cand_norm, ref_norm in zip(cand_weights, ref.ngrams, cand_norms, ref_norms):
        dot = 0.0
        for g in weights.keys() & ref_counts.keys():
            ref_weight = ref_counts[g] * idf[g]
            dot += min(weights[g], ref_weight) * ref_weight  # clipped: no extra credit for repeating an n-gram
        total += dot / (cand_norm * ref_norm) if cand_norm and ref_norm else dot
    return total * math.exp(-length_gap ** 2 / (2 * CIDER_SIGMA ** 2))


# ---------------------------------------------------------------------------------------------------------
# ptb_tokenize: the Stanford PTBTokenizer (CoreNLP 3.4.1, as pycocoevalcap runs it) in pure Python
# ---------------------------------------------------------------------------------------------------------
# The Java tokenizer is a JFlex lexer: at each position every rule is tried, the longest match wins and ties
# go to the earlier rule; a rule may look ahead at text that it does not consume. Below, each rule is a
# regex whose group "t" is the token and whose whole match (token + look-ahead) is the length that competes.
# The rules cover what appears in captions; rare corners (phone numbers, swear-word masking, ...) are not
# reproduced. Character classes are case-sensitive and words are not, as in the Java lexer.
# Python's \w also accepts numerals such as "½" and "²", which the Java lexer does not read as letters.
_NUMERALS = "\u00B2\u00B3\u00B9\u00BC-\u00BE\u2070-\u209F\u2150-\u218F\u2460-\u24FF\u2776-\u2793"
_L = rf"[^\W\d_{_NUMERALS}]"  # a letter
_LD = rf"[^\W_{_NUMERALS}]"  # a letter or digit
_WORD = rf"{_L}{_LD}*(?:[.!?]{_L}{_LD}*)*"  # "dog", "t.v", "ground.a" (missing space after a period)
_APOS = r"(?:['\u0092\u2019]|&apos;)"
_APOS_ETC = rf"(?:{_APOS}|[`\u0091\u2018\u201B])"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"  # 's 'm 'd 're 've 'll
_SREDAUX = rf"(?i:n){_APOS_ETC}(?i:t)"  # n't
_NUM = r"(?:\d*(?:[.,]\d+)+|\d+(?:[.:,]\d+)*)"  # 3.14 1,000 12:30
_ACRO = r"[A-Za-z](?:\.[A-Za-z])*"  # a, u.s, a.k.a
# Abbreviations that keep their period ("St." stays "st."). Some initials are case-sensitive classes in the
# Java lexer ("Del." is an abbreviation, "del." is not). The first group also claims two characters of
# look-ahead, so "Co.w" is "co." + "w" while "St.w" is one word.
_ABBREV1 = (
    r"(?i:ed\.d|ph\.d|jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec|mon|tues?|wed|thu(?:rs)?|fri|ala|ariz"
    r"|calif|colo|conn|ct|dak|fla|ga|ind|kans?|ky|md|mich|minn|mo|mont|neb|nev|okla|penn|tenn|va|vt|wisc?"
    r"|wyo|inc|cos?|corp|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq|jr|sr|bros|esq|etc|al|seq"
    r"|bldg|blvd|rd)|A(?i:z|rk)|D(?i:el)|I(?i:ll)|L(?i:a)|M(?i:ass|iss)|O(?i:re)|P(?i:a)|T(?i:ex)|W(?i:ash)"
    r"|(?i:pp?t)[ye](?i:s)?")
_ABBREV2 = (
    r"(?i:a\.k\.a|mrs?|ms|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt"
    r"|capt|ste?|ave|pres|lieut|hon|brig|c(?:o)?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp"
    r"|mlle|mme|msgr|sfc|invt|elec|natl|dept|vs|alex|wm|jos|cie|cf|treas|ph)|(?i:m)[ft](?i:g)|" + _ACRO)
_ABBREV_BEFORE_NUMBER = r"(?i:ca|figs?|prop|nos?|art|pp|op)"  # "No. 5" keeps its period, "no." does not
# After a one-letter acronym ("vitamin A."), these capitalised words mean that the period ends a sentence.
_SENTENCE_STARTS = (r"A(?i:bout|ccording|dditionally|fter|n|s|t)?|B(?i:ut)|E(?i:arlier)"
                    r"|H(?i:e|er|ere|owever)|I(?i:f|n|t)|L(?i:ast)|M(?i:any|ore|r\.|s\.)|N(?i:ow)"
                    r"|O(?i:nce|ne|ther|ur)|S(?i:he|ince|o|ome|uch)|T(?i:hat|he|heir|hen|here|hese|hey|his)"
                    r"|W(?i:e|hen|hile|hat)|Y(?i:et|ou)")
_SGML_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
_SGML = (rf"<(?:[!?][A-Za-z\-][^>\r\n]*|{_SGML_NAME}(?:[ ]+{_SGML_NAME}"  # <unk>, <a href="x">, </b>
         rf"(?:[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|{_SGML_NAME}))?)*[ ]*/?|/{_SGML_NAME})[ ]*>")
_URL = (r"(?i:ftp|https?|mailto)://[^ \t\n\f\r\"<>|(){}\[\]]+[^ \t\n\f\r\"'<>|.!?(){},;:&\[\]\-]"
        r"|(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4}"
        r"|(?:[^ \t\n\f\r\"`'<>|.!?(){},\-_$]+\.)+(?i:com|net|org|edu))"
        r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},\-])?")
_EMAIL = (r"<?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"  # also "s@tate@s"
          r"[^ \t\n\f\r\"<>|(){}.\u00A0]+>?")


_THING_PIECE = rf"(?:[dDoOlL]{_APOS_ETC}{_LD})?{_LD}+"
_THING = rf"{_THING_PIECE}(?:[\-_\u058A\u2010\u2011]{_THING_PIECE})*"  # close-up, 5-year-old, o'clock
_APOWORDS = [  # words with an apostrophe inside: o'clock, ma'am, d'oeuvre, rock 'n' roll, '90s
    rf"{_APOS}(?i:n){_APOS}?", rf"[lLdDjJ]{_APOS}", rf"(?i:dunkin|somethin|ol){_APOS}",
    rf"{_APOS}(?i:em|cause|till?)", rf"[A-HJ-XZn]{_APOS_ETC}{_L}{{2}}{_L}*", rf"{_APOS}[2-9]0(?i:s)",
    rf"{_L}+[aeiouyAEIOUY]{_APOS_ETC}[aeiouA-Z]{_L}*", r"(?i:nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
    rf"O{_APOS_ETC}o"]
_QUOTE_CHARS = "`\u2018-\u201F\u0082\u0084\u0091-\u0094\u2039\u203A\u00AB\u00BB"
# Symbols that the lexer keeps as tokens of their own; any other unknown character is deleted.
_SYMBOLS = ("[+%&~^|\\\\\u00A5\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00BA\u00D7\u00F7"
            "\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0375\u0384\u0385\u0387\u03F6\u055A-\u055F\u05BE"
            "\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u060C\u0614\u061B\u061E\u066A\u066D\u06DE\u06E9"
            "\u06FD\u06FE\u0703-\u070D\u07F6-\u07F8\u0964\u0965\u0E3F\u0E4F\u1FBD\u2016\u2017\u2020-\u2023"
            "\u2030-\u2038\u203B\u203E-\u2042\u2044\u2070-\u209F\u20A4\u2100-\u214F\u2155-\u215E"
            "\u2190-\u21FF\u2200-\u2BFF\u3001\u3002\u3012\u30FB\uFFE0\uFFE1\uFFE5\uFFE6"
            "\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}
_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u00A4": "$", "\u0080": "$", "\u20A0": "$", "\u20AC": "$"}


def _latex_quotes(token: str, opening: bool) -> str:
    """Quotes as the PTB writes them: `` and '' for double quotes, ` and ' for single ones."""
    token = re.sub(r"\"|''|'`|`'|&quot;", "``" if opening else "''", token)
    token = re.sub(r"&apos;|'", "`" if opening else "'", token)
    token = re.sub("[\u0082\u008B\u0091\u2018\u201B\u2039]", "`", token)
    token = re.sub("[\u0092\u009B\u00B4\u2019\u203A]", "'", token)
    token = re.sub("[\u0084\u0093\u201C\u00AB]", "``", token)
    return re.sub("[\u0094\u201D\u00BB]", "''", token)


def _hyphens(token: str) -> str:
    return "--" if 3 <= len(token) <= 4 else token


def _smiley(token: str) -> str:
    return "".join(_BRACKETS.get(c, c) for c in token)


def _one_letter_acronym(token: str) -> str:
    return token[:-1] if len(token) == 2 else token  # "A." before "The": "A", and the period is a token


# Assimilations that the PTB splits: "cannot" -> "can not", "gonna" -> "gon na", ...
_ASSIMILATIONS = {"cannot": 3, "'twas": 3, "'tis": 2, "gonna": 2, "gotta": 2, "lemme": 2, "gimme": 2, "wanna": 2}
_QUOTE = rf"(?:[{_QUOTE_CHARS}]{{1,2}}|{_APOS})"  # two curly quotes before one: longest first
_NOT_LETTER = rf"(?!{_L})[\s\S]"  # one character of look-ahead; the "\n" that ends each line always provides one
# (pattern, how to rewrite the token) in the lexer's priority order. Group "t" is the token; anything
# matched after it is look-ahead, which counts for the longest match but is scanned again.
_RULE_TABLE = [
    (r"(?P<t>(?i:c\+\+|[cf]#))", None),  # programming languages
    *((rf"(?P<t>(?i:{re.escape(w[:-n])}))(?i:{re.escape(w[-n:])})", None) for w, n in _ASSIMILATIONS.items()),
    (rf"(?P<t>{_SGML})", lambda t: t.replace(" ", "\u00A0")),  # <unk>, <a href="x">
    (r"(?P<t>&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015])", lambda t: "--"),
    (r"(?P<t>&amp;)", lambda t: "&"),
    (rf"(?P<t>{_WORD}){_REDAUX}", None),  # it 's
    (rf"(?P<t>{_L}*[A-MO-Za-mo-z]){_SREDAUX}", None),  # do n't, ca n't
    (rf"(?P<t>{_WORD})", None),
    *((rf"(?P<t>{word})", lambda t: _latex_quotes(t, False)) for word in _APOWORDS),
    (rf"(?P<t>(?i:y){_APOS}){_L}", None),  # y' all
    (rf"(?P<t>{_URL})", None),
    (rf"(?P<t>{_EMAIL})", None),
    (rf"(?P<t>@[a-zA-Z_][a-zA-Z_0-9]*|#{_L}+)", None),  # @name, #hashtag
    (rf"(?P<t>{_REDAUX}|{_SREDAUX}){_NOT_LETTER}", lambda t: _latex_quotes(t, False)),
    (r"(?P<t>\d{1,2}[\-/]\d{1,2}[\-/]\d{2,4})", None),  # dates
    (rf"(?P<t>[\-+]?{_NUM})", None),
    (r"(?P<t>(?:\d{1,4}[\- \u00A0])?\d{1,4}(?:\\?/|\u2044)\d{1,4})", lambda t: t.replace(" ", "\u00A0")),  # 22 3/4
    (r"(?P<t>[\u00BC\u00BD\u00BE\u2153\u2154])", _FRACTIONS.get),
    (r"(?P<t>(?i:-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S&P-500|S&Ls|Cap'n|c'est))", None),
    (rf"(?P<t>{_LD}+(?:-{_L}+){{0,2}}(?:\\?/{_LD}+(?:-{_L}+){{0,2}}){{1,2}})", None),  # and/or, a/b/c
    (r"(?P<t>[A-Z]*\$|#)", None),
    (rf"(?P<t>[{''.join(_CURRENCY)}])", _CURRENCY.get),  # cent, pound, euro
    (rf"(?P<t>{_ACRO}\.)[ \n]+(?:{_SENTENCE_STARTS})[ \n?!]", _one_letter_acronym),  # "vitamin A. The"
    (rf"(?P<t>{_ABBREV_BEFORE_NUMBER}\.) ?\d", None),  # "No. 5"
    (rf"(?P<t>(?:{_ABBREV1})\.)[\s\S]{{2}}", None),  # Jan. Co. etc.
    (rf"(?P<t>(?:{_ABBREV2})\.)", None),  # St. Mr. U.S. a.m. (a single letter too: "letter a.")
    (r"(?P<t>'\d\d)[ \n]", None),  # 5'11
    (rf"(?P<t>{_WORD}\.)[,;:]", None),  # "dog.," keeps its period
    (r"(?P<t>\"|&quot;|[`'\u0091\u0092\u2018\u2019]')(?:[^\W_]|\$)", lambda t: _latex_quotes(t, True)),
    (r"(?P<t>\"|&quot;|[`'\u0091\u0092\u2018\u2019]')", lambda t: _latex_quotes(t, False)),
    (r"(?P<t><|&lt;)", lambda t: "<"),
    (r"(?P<t>>|&gt;)", lambda t: ">"),
    (r"(?P<t>[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]])[\W_]", _smiley),  # :) is ":-RRB-"
    (r"(?P<t>[()\[\]{}])", _BRACKETS.get),
    (r"(?P<t>-+)", _hyphens),
    (r"(?P<t>\.\.\.+|[\u0085\u2026]|\.[ \u00A0](?:\.[ \u00A0])+\.)", lambda t: "..."),
    (r"(?P<t>@+|#+|_+|\*+|[,;:]|[?!]+|[.\u00A1\u00BF\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA]|=|/)", None),
    (rf"(?P<t>{_LD}(?:{_LD}|[.,])*(?:-(?:[A-Za-z](?:\.[A-Za-z])+\.|{_LD}+))+)", None),  # 1.5-inch, u.s.-made
    (rf"(?P<t>{_THING})", lambda t: _latex_quotes(t, False)),
    (r"(?P<t>[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+)", lambda t: t.replace("&amp;", "&")),  # AT&T, R&B
    (rf"(?P<t>{_QUOTE}){_L}[^ \n]", lambda t: _latex_quotes(t, True)),
    (rf"(?P<t>{_QUOTE})[AaIiUu][ \n]", lambda t: _latex_quotes(t, True)),
    (rf"(?P<t>{_QUOTE})", lambda t: _latex_quotes(t, False)),
    (rf"(?P<t>{_REDAUX}|{_SREDAUX})", lambda t: _latex_quotes(t, False)),
    (r"(?P<t><<|>>)", None),
    (r"(?P<t>&nbsp;)", lambda t: None),
    (rf"(?P<t>{_SYMBOLS})", None),
]
_RULES = [(re.compile(pattern), rewrite) for pattern, rewrite in _RULE_TABLE]
# Most tokens are plain words before a space (or before a final period or comma): they skip the rule table,
# unless the word is one that some rule treats specially.
_PLAIN_WORD = re.compile(r"([A-Za-z]+)([.,]?)(?=[ \n])")
# words that some rule treats specially when a period follows
_ABBREVIATION = re.compile(rf"{_ABBREV1}|{_ABBREV2}|{_ABBREV_BEFORE_NUMBER}|[a-z]", re.IGNORECASE)
_SPACE = re.compile(r"[ \n]+")
# pycocoevalcap tokenizes all captions in one run, one per line, so the lexer reads each caption's end with
# the next caption as look-ahead. That only matters after a one-letter acronym ("a sign that reads K."),
# and two thirds of COCO captions start with a word such as "A" or "The" that splits the period off.
_NEXT_LINE = "\nA \n"


@lru_cache(maxsize=TOKENIZER_CACHE_SIZE)
def ptb_tokenize(text: str) -> str:
    """Tokenize one caption as pycocoevalcap does (Stanford PTBTokenizer, lower-cased, punctuation dropped).

    Returns the tokens joined by single spaces: "A man's bike." -> "a man 's bike".
    """
    tokens = (t.lower() for t in _ptb_tokens(" ".join(text.split())))
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION)


def _ptb_tokens(line: str) -> list[str]:
    """PTB tokens of one line of text, before lower-casing and dropping punctuation."""
    text, tokens, pos = line + _NEXT_LINE, [], 0
    while pos < len(line):
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
            continue
        plain = _PLAIN_WORD.match(text, pos)
        if plain and not _is_special(*plain.groups()):
            tokens.append(plain.group(1))
            pos = plain.end()  # a "." or "," after it would be dropped as punctuation anyway
            continue
        token, pos = _longest_match(text, pos)
        if token:
            tokens.append(token)
    return tokens


def _is_special(word: str, punctuation: str) -> bool:
    """Whether some rule other than a plain word applies: "cannot", or "St." and "K." keeping their period."""
    if word.lower() in _ASSIMILATIONS:
        return True
    return punctuation == "." and _ABBREVIATION.fullmatch(word) is not None


def _longest_match(text: str, pos: int) -> tuple[str | None, int]:
    """The token at `pos` by the lexer's rule (longest match, earliest rule on ties) and where to go on."""
    best, best_end, best_rewrite = None, pos, None
    for pattern, rewrite in _RULES:
        match = pattern.match(text, pos)
        if match and match.end() > best_end:
            best, best_end, best_rewrite = match, match.end(), rewrite
    if best is None:  # a character that no rule knows (emoji, rare symbols): the Java tokenizer deletes it
        return None, pos + 1
    token = best.group("t")
    return (best_rewrite(token) if best_rewrite else token), max(best.end("t"), pos + 1)


# ---------------------------------------------------------------------------------------------------------
# A split's captions: the metrics above, plus object F1 on the shapes data; tables of scores
# ---------------------------------------------------------------------------------------------------------
SPICE_NOTE = "not computed: pycocoevalcap's SPICE downloads Stanford CoreNLP (about 1 GB) on first use"
TABLE_KEYS = METRIC_KEYS + ("object_f1", "object_exact")  # object F1 and exact matches: shapes data only


def caption_metrics(dataset, candidates, data_root, split, metrics=("Bleu", "CIDEr"), backend="python"):
    """Scores of {image_id: caption} against the split's references; object F1 too on shapes data."""
    all_references = dataset.references()
    references = {i: all_references[i] for i in candidates}
    out = dict(score_captions(references, candidates, metrics=metrics, backend=backend))
    if (Path(data_root) / "shapes_meta.json").exists():
        truth = load_ground_truth(data_root, split)
        f1 = object_f1(candidates, {i: truth[i] for i in candidates})
        out.update(object_f1=f1["f1"], object_exact=f1["exact"])
    return out


def caption_diagnostics(captions: Mapping[Hashable, str], training_captions: Iterable[str | Sequence[str]] = (),
                        no_end_words: Iterable[str] = (), top: int = 5, max_len: int | None = None) -> dict:
    """What a score hides about {image_id: caption}: how many differ, how many copy a training caption word for
    word (training_captions: raw strings, tokenized here as the vocabulary tokenizes, or their token lists),
    how many words they use, their mean length in words, how many hold <unk>, how many end badly (on one of
    no_end_words, or on a word that rarely ends a training caption, by the decoder's rule, vocabulary.rare_endings:
    "on a red"), how many have broken endings (their last two words end no training caption: "on a dirt"), how many
    were cut at max_len (decoding stops after max_len positions, <end> included, so a caption of max_len words
    never said <end>; one that did has at most max_len - 1), and the `top` most repeated. copied_share and
    broken_endings are None without training captions, cut_at_max_len without max_len."""
    texts = list(captions.values())
    if not texts:
        raise ValueError("caption_diagnostics needs at least one caption")
    words = [t.split() for t in texts]
    counts = Counter(texts)
    training = [tokenize(c) if isinstance(c, str) else list(c) for c in training_captions]
    seen = {" ".join(t) for t in training}
    occurs, ends = Counter(w for t in training for w in t), Counter(t[-1] for t in training if t)
    no_end = set(no_end_words) | set(rare_endings(occurs, occurs, ends))
    last_two = {tuple(t[-2:]) for t in training if t}  # how training captions end: ("the", "street")
    return {"captions": len(texts), "distinct": len(counts),
            "copied_share": sum(t in seen for t in texts) / len(texts) if seen else None,
            "words_used": len({w for ws in words for w in ws}),
            "mean_length": sum(map(len, words)) / len(texts),
            "with_unk": sum(UNK in ws for ws in words),
            "bad_endings": sum(bool(ws) and ws[-1] in no_end for ws in words),
            "broken_endings": sum(bool(ws) and tuple(ws[-2:]) not in last_two for ws in words) if seen else None,
            "cut_at_max_len": sum(len(ws) >= max_len for ws in words) if max_len else None,
            "most_repeated": [[text, n] for text, n in counts.most_common(top) if n > 1]}


def diagnostics_lines(d: Mapping) -> list[str]:
    """caption_diagnostics as a few readable lines, for the command line."""
    copied = "n/a (no training captions)" if d["copied_share"] is None else f"{d['copied_share']:.1%}"
    lines = [f"{d['distinct']:,} distinct captions of {d['captions']:,}; {copied} copy a training caption; "
             f"{d['words_used']:,} words used; mean length {d['mean_length']:.1f} words; "
             f"{d['with_unk']} with {UNK}; {d['bad_endings']} ending on a word sentences do not end on "
             "(an article, a preposition, a word that rarely ends one)"]
    ends = [f"{d[key]} {what}" for key, what in (
        ("broken_endings", "ending on two words that end no training caption ('on a dirt')"),
        ("cut_at_max_len", "cut at max_len (no <end>)")) if d.get(key) is not None]
    if ends:
        lines.append("; ".join(ends))
    lines += [f"  {n:>4} x  {text}" for text, n in d["most_repeated"]]
    return lines


def scores_table(columns: Mapping[str, Mapping[str, float]], digits: int = 3) -> str:
    """A markdown table, one row per metric and one column per decoder: {"greedy": scores, "beam 3": ...}.

    Metrics that some column lacks show as n/a, and the reasons follow the table as a list.
    """
    keys = [k for k in TABLE_KEYS if any(k in s for s in columns.values())]
    lines = ["| metric | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for k in keys:
        cells = [f"{s[k]:.{digits}f}" if k in s else "n/a" for s in columns.values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    notes = {}
    for s in columns.values():
        notes.update(getattr(s, "missing", {}))
    if notes:
        lines.append("")
        lines.extend(f"- {k}: {why}" for k, why in notes.items())
    return "\n".join(lines)
