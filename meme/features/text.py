r"""Caption text: a tokenizer, the vocabulary, FastText word vectors and the sentence embeddings of the CCA.

Everything follows the MMVAE code's CUB text pipeline (``datasets.CUBSentences`` and ``report/helper.py``),
without its runtime NLTK download:

* **Tokenizer** (:func:`tokenize`): a regular-expression version of NLTK's Treebank ``word_tokenize``
  for one caption: punctuation becomes its own token (``"beak,"`` -> ``beak ,``), clitics split off
  (``"bird's"`` -> ``bird 's``, ``"don't"`` -> ``do n't``), hyphenated words and decimals stay whole.
  Case is kept, as in the MMVAE code.
* **Vocabulary** (:class:`Vocab`): built on the training captions; ``<exc>`` = 0 (any excluded word),
  ``<pad>`` = 1, ``<eos>`` = 2, then every word seen **more than** ``min_occ`` (3) times, in order of
  first occurrence. A caption becomes ``max_len`` (32) ids: at most 31 words, ``<eos>``, then ``<pad>``.
* **FastText** (:func:`fit_fasttext`): gensim, 300-d, window 3, min count 3, 10 epochs, fitted on the
  training captions; a small ``bucket`` (20,000 hashed n-gram rows instead of gensim's 2,000,000) keeps
  it at a few hundred MB. Special rows as in the MMVAE code: ``<exc>`` = -1, ``<pad>`` = 0, ``<eos>`` = +1.
* **Sentence embedding** (:class:`SentenceEmbedder`), for a caption ``w_1..w_n`` cut after its first
  ``<eos>`` (n counts the ``<eos>``):

  .. math::

      e = \frac1n \sum_{i=1}^n \frac{a}{a + p(w_i)}\, v(w_i), \qquad
      p(w) = \frac{\#w}{\sum_{w'} \#w'},\quad a = 10^{-3}

  where the counts ``#w`` come from the training captions (``<exc>`` gets the total count of the
  excluded words; ``<pad>``, ``<eos>`` weigh 0), and then the first principal component ``u`` of the
  (centred) training embeddings is removed: :math:`e \leftarrow e - u u^\top e`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from meme.errors import MemeError
from meme.progress import bar as progress_bar

log = logging.getLogger(__name__)

EXC, PAD, EOS = "<exc>", "<pad>", "<eos>"
SPECIALS = (EXC, PAD, EOS)
EXC_ID, PAD_ID, EOS_ID = 0, 1, 2

# Treebank-style rules, applied in order (a subset of NLTK's TreebankWordTokenizer that covers captions)
_RULES = [
    (re.compile(r'^"'), " `` "),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r'([ (\[{<])"'), r"\1 `` "),
    (re.compile(r"(?<!`)`(?!`)"), " ` "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.\.\."), " ... "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r'([^.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),   # the final period
    (re.compile(r"([^.\s])\.(\s+)"), r"\1 . \2"),                    # a sentence-internal period (a new sentence)
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[\]\[\(\)\{\}<>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
    (re.compile(r"(?i)\b(can)(not)\b"), r" \1 \2 "),
    (re.compile(r"^'"), r" ' "),
]


def tokenize(text: str) -> list[str]:
    """Words and punctuation of one caption (Treebank conventions; no downloads, no lower-casing)."""
    text = " " + text.strip() + " "
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text.split()


def tokenize_all(texts, progress: bool = False) -> list[list[str]]:
    return [tokenize(t) for t in progress_bar(texts, desc="tokenize", unit="caption", progress=progress, fine=True,
                                              leave=False)]


# -------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class Vocab:
    """Id <-> word, built on the training captions. ``counts[i]`` is word i's count in them (``<exc>``: all
    excluded words; ``<pad>``, ``<eos>``: 0)."""
    words: tuple[str, ...]
    counts: tuple[int, ...]
    min_occ: int = 3
    max_len: int = 32
    index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if tuple(self.words[:3]) != SPECIALS:
            raise MemeError(f"a vocabulary starts with {', '.join(SPECIALS)}; got {list(self.words[:3])}")
        if len(self.counts) != len(self.words):
            raise MemeError(f"vocabulary has {len(self.words)} words but {len(self.counts)} counts")
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})

    def __len__(self) -> int:
        return len(self.words)

    @property
    def pad_index(self) -> int:
        return PAD_ID

    @classmethod
    def build(cls, token_lists, min_occ: int = 3, max_len: int = 32) -> "Vocab":
        """Words seen more than ``min_occ`` times, in order of first occurrence (dicts keep insertion order)."""
        counts = Counter()
        for toks in token_lists:
            counts.update(toks)
        words, kept, excluded = list(SPECIALS), [0, 0, 0], 0
        for w, c in counts.items():
            if c > min_occ and w not in SPECIALS:
                words.append(w)
                kept.append(c)
            else:
                excluded += c
        kept[EXC_ID] = excluded
        return cls(tuple(words), tuple(kept), min_occ, max_len)

    def encode(self, token_lists) -> np.ndarray:
        """(N, max_len) int64: up to ``max_len - 1`` word ids (``<exc>`` for unknown words), ``<eos>``, ``<pad>``s."""
        out = np.full((len(token_lists), self.max_len), PAD_ID, dtype=np.int64)
        get = self.index.get
        for r, toks in enumerate(token_lists):
            ids = [get(w, EXC_ID) for w in toks[:self.max_len - 1]]
            ids.append(EOS_ID)
            out[r, :len(ids)] = ids
        return out

    def decode(self, ids, keep_eos: bool = False) -> str:
        """One caption's words, up to its first ``<eos>``; ``<pad>`` dropped."""
        words = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                if keep_eos:
                    words.append(EOS)
                break
            if i != PAD_ID:
                words.append(self.words[i] if 0 <= i < len(self.words) else EXC)
        return " ".join(words)

    # --------------------------------------------------------- persistence
    def to_json(self) -> dict:
        """MMVAE-compatible keys (``w2i``, ``i2w`` with string ids) plus counts and settings."""
        return {"w2i": dict(self.index), "i2w": {str(i): w for i, w in enumerate(self.words)},
                "counts": list(self.counts), "min_occ": self.min_occ, "max_len": self.max_len}

    @property
    def sha256(self) -> str:
        blob = json.dumps({"words": list(self.words), "min_occ": self.min_occ, "max_len": self.max_len},
                          ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def save(self, path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "Vocab":
        path = Path(path)
        if not path.is_file():
            raise MemeError(f"no vocabulary at {path}; build it with `meme features captions`")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            words = tuple(d["i2w"][str(i)] for i in range(len(d["i2w"])))
            counts = tuple(int(c) for c in d.get("counts", [0] * len(words)))
            return cls(words, counts, int(d.get("min_occ", 3)), int(d.get("max_len", 32)))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MemeError(f"vocabulary {path} is corrupt ({type(e).__name__}: {e}); rebuild it with `meme features captions`") from None


# ----------------------------------------------------------------- FastText
@dataclass(frozen=True)
class FastTextSettings:
    dim: int = 300
    window: int = 3
    min_count: int = 3
    epochs: int = 10
    bucket: int = 20_000
    seed: int = 0
    workers: int = 1            # 1 makes the vectors reproducible for a seed (with PYTHONHASHSEED fixed)


def fit_fasttext(token_lists, s: FastTextSettings = FastTextSettings(), progress: bool = False):
    """A gensim FastText model fitted on ``token_lists``, one epoch at a time (the learning rate decays
    linearly over all epochs, exactly as one ``train(epochs=...)`` call does)."""
    from gensim.models import FastText
    from tqdm.auto import tqdm

    if not token_lists:
        raise MemeError("FastText needs at least one training caption")
    model = FastText(vector_size=s.dim, window=s.window, min_count=s.min_count, bucket=s.bucket, seed=s.seed,
                     workers=s.workers)
    model.build_vocab(corpus_iterable=token_lists)
    if len(model.wv) == 0:
        raise MemeError(f"no word occurs {s.min_count} times in the training captions; FastText has nothing to fit")
    a0, a1 = model.alpha, model.min_alpha
    for e in tqdm(range(s.epochs), desc="fasttext", unit="epoch", disable=not progress, leave=False):
        start, end = a0 - (a0 - a1) * e / s.epochs, a0 - (a0 - a1) * (e + 1) / s.epochs
        model.train(corpus_iterable=token_lists, total_examples=len(token_lists), epochs=1,
                    start_alpha=start, end_alpha=end)
    return model


def word_vectors(model, vocab: Vocab) -> np.ndarray:
    """(V, dim) float32: the FastText vector of every vocabulary word; <exc> = -1, <pad> = 0, <eos> = +1."""
    dim = model.wv.vector_size
    out = np.empty((len(vocab), dim), dtype=np.float32)
    out[EXC_ID], out[PAD_ID], out[EOS_ID] = -1.0, 0.0, 1.0
    if len(vocab) > 3:
        out[3:] = np.stack([model.wv[w] for w in vocab.words[3:]])
    return out


def sif_weights(vocab: Vocab, a: float = 1e-3) -> np.ndarray:
    """(V,) float32: a / (a + p(w)) with p from the vocabulary's training counts (<pad>, <eos>: 0)."""
    counts = np.asarray(vocab.counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        raise MemeError("the vocabulary has no word counts; rebuild it from training captions")
    w = a / (a + counts / total)
    w[PAD_ID] = w[EOS_ID] = 0.0
    return w.astype(np.float32)


@dataclass
class SentenceEmbedder:
    """Caption token ids -> sentence embeddings (the module docstring's formula). Callable on (N, T) ids."""
    vectors: Tensor              # (V, d)
    weights: Tensor              # (V,)
    pc: Tensor                   # (d,) unit vector; zeros = no removal

    def weighted_average(self, tokens: Tensor, chunk: int = 65_536) -> Tensor:
        tokens = torch.as_tensor(tokens).long().to(self.vectors.device)
        out = []
        for part in tokens.split(chunk):
            is_eos = part == EOS_ID
            # positions up to and including the first <eos> (everything if there is none)
            keep = (is_eos.long().cumsum(1) - is_eos.long()) == 0
            n = keep.sum(1, keepdim=True).clamp_min(1).to(self.vectors.dtype)
            w = self.weights[part] * keep
            out.append(F.embedding_bag(part, self.vectors, per_sample_weights=w, mode="sum") / n)
        return torch.cat(out) if out else torch.empty(0, self.vectors.shape[1])

    def __call__(self, tokens: Tensor) -> Tensor:
        e = self.weighted_average(tokens)
        return e - (e @ self.pc).unsqueeze(1) * self.pc

    def to(self, device) -> "SentenceEmbedder":
        return SentenceEmbedder(self.vectors.to(device), self.weights.to(device), self.pc.to(device))


def first_principal_component(embeddings: Tensor) -> Tensor:
    """The unit first right-singular vector of the centred rows (its sign is irrelevant: u u^T is used)."""
    x = torch.as_tensor(embeddings, dtype=torch.float64)
    x = x - x.mean(0)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[0].float()


def fit_sentence_embedder(train_tokens, vectors: np.ndarray, weights: np.ndarray) -> SentenceEmbedder:
    """The embedder with its principal component fitted on the training captions ``train_tokens``."""
    plain = SentenceEmbedder(torch.from_numpy(vectors), torch.from_numpy(weights), torch.zeros(vectors.shape[1]))
    pc = first_principal_component(plain.weighted_average(torch.as_tensor(train_tokens)))
    return SentenceEmbedder(plain.vectors, plain.weights, pc)
