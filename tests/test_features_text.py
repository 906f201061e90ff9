"""Caption text: tokenizer, vocabulary (counts by hand), encoding, FastText, sentence embeddings."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from meme.errors import MemeError
from meme.features.text import (EOS_ID, EXC_ID, PAD_ID, FastTextSettings, Vocab,
                                first_principal_component, fit_fasttext, fit_sentence_embedder, sif_weights,
                                tokenize, word_vectors)

SHARED_DATA = Path(os.environ.get("MEME_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
REAL_TEST_CAPTIONS = SHARED_DATA / "cub" / "text_testclasses.txt"


@pytest.mark.parametrize("text, tokens", [
    ("this bird has a red beak, and long wings.", ["this", "bird", "has", "a", "red", "beak", ",", "and", "long", "wings", "."]),
    ("the bird's crown isn't black.", ["the", "bird", "'s", "crown", "is", "n't", "black", "."]),
    ('a "red" bird (small); black-and-white 2.5 inch tail!', ["a", "``", "red", "''", "bird", "(", "small", ")", ";",
                                                            "black-and-white", "2.5", "inch", "tail", "!"]),
    ("it cannot fly... really? this bird is red. it has a beak.",
     ["it", "can", "not", "fly", "...", "really", "?", "this", "bird", "is", "red", ".", "it", "has", "a", "beak", "."]),
    ("`a small bird with grey belly`.", ["`", "a", "small", "bird", "with", "grey", "belly", "`", "."]),
    ("A Red Bird & co:  done", ["A", "Red", "Bird", "&", "co", ":", "done"]),
])
def test_tokenizer_follows_treebank_conventions(text, tokens):
    assert tokenize(text) == tokens


def test_vocabulary_by_hand():
    # counts: a 5, b 4, c 3, d 6, e 1; "." 5. min_occ=3 keeps counts > 3: in first-occurrence order a, d, ., b
    captions = ["a b c d .", "d a b .", "a d d c e .", "b a d .", "a b d c ."]
    tokens = [tokenize(c) for c in captions]
    vocab = Vocab.build(tokens, min_occ=3, max_len=6)
    assert vocab.words == ("<exc>", "<pad>", "<eos>", "a", "b", "d", ".")
    assert vocab.counts == (3 + 1, 0, 0, 5, 4, 6, 5)   # <exc>: c (3) + e (1)
    assert len(vocab) == 7 and vocab.pad_index == PAD_ID == 1
    ids = vocab.encode([tokenize("a c d ."), tokenize("d d d d d d d d"), []])
    assert ids.tolist() == [[3, EXC_ID, 5, 6, EOS_ID, PAD_ID],        # unknown word -> <exc>
                            [5, 5, 5, 5, 5, EOS_ID],                   # truncated to max_len - 1 words + <eos>
                            [EOS_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert vocab.decode(ids[0]) == "a <exc> d ."
    assert vocab.decode([5, EOS_ID, 3, 3]) == "d"                       # stops at <eos>
    assert vocab.decode([3, PAD_ID, 4], keep_eos=False) == "a b"


def test_vocabulary_round_trip_and_hash(tmp_path):
    vocab = Vocab.build([["x", "y"]] * 4 + [["z"]], min_occ=3)
    path = vocab.save(tmp_path / "vocab.json")
    back = Vocab.load(path)
    assert back == vocab and back.sha256 == vocab.sha256
    import json

    d = json.loads(path.read_text())
    assert d["w2i"]["x"] == 3 and d["i2w"]["0"] == "<exc>"               # MMVAE-compatible keys
    assert Vocab.build([["x", "y"]] * 4, min_occ=2).sha256 != vocab.sha256
    path.write_text("{not json")
    with pytest.raises(MemeError, match="vocabulary .* is corrupt"):
        Vocab.load(path)
    with pytest.raises(MemeError, match="no vocabulary at"):
        Vocab.load(tmp_path / "absent.json")


def test_sif_weights_by_hand():
    vocab = Vocab(("<exc>", "<pad>", "<eos>", "a", "b"), (2, 0, 0, 5, 3))
    w = sif_weights(vocab, a=0.1)
    total = 10
    expected = [0.1 / (0.1 + 2 / total), 0, 0, 0.1 / (0.1 + 5 / total), 0.1 / (0.1 + 3 / total)]
    assert np.allclose(w, expected)


def literal_sentence_embedding(vectors, weights, u, sentences):
    """The MMVAE code's apply_weights + apply_pc, written out per sentence."""
    out = []
    for s in sentences:
        s = list(s)
        cut = s[:s.index(EOS_ID) + 1] if EOS_ID in s else s
        e = sum(vectors[i] * weights[i] for i in cut) / len(cut)
        out.append(e - u @ e)
    return np.stack(out)


def test_sentence_embedding_against_a_literal_loop():
    g = np.random.default_rng(0)
    V, d = 9, 5
    vectors = g.standard_normal((V, d)).astype(np.float32)
    weights = g.random(V).astype(np.float32)
    weights[PAD_ID] = weights[EOS_ID] = 0
    tokens = g.integers(3, V, (40, 8))
    for r, stop in enumerate(g.integers(0, 9, 40)):
        if stop < 8:
            tokens[r, stop] = EOS_ID
            tokens[r, stop + 1:] = PAD_ID
    tokens[0, 0], tokens[0, 1:] = EOS_ID, PAD_ID                           # an empty caption
    emb = fit_sentence_embedder(tokens[:30], vectors, weights)
    # the principal component: of the centred weighted averages of the training captions
    plain = literal_sentence_embedding(vectors, weights, np.zeros((d, d)), tokens[:30])
    v = np.linalg.svd(plain - plain.mean(0))[2][0]
    assert np.allclose(abs(emb.pc.numpy() @ v), 1.0, atol=1e-5)
    expected = literal_sentence_embedding(vectors, weights, np.outer(v, v), tokens)
    assert np.allclose(emb(torch.from_numpy(tokens)).numpy(), expected, atol=1e-5)
    # after removal, the training embeddings have no component along the principal direction
    assert np.allclose(expected[:30] @ v, 0, atol=1e-5)


def test_first_principal_component_of_a_line():
    t = torch.linspace(-1, 1, 21).unsqueeze(1)
    pts = t * torch.tensor([[3.0, 4.0]]) / 5 + torch.tensor([[10.0, -2.0]])
    pc = first_principal_component(pts)
    assert torch.allclose(pc.abs(), torch.tensor([0.6, 0.8]), atol=1e-6)


def test_fasttext_fit_small():
    sents = [["red", "bird", "small", "beak"], ["blue", "bird", "long", "wings"], ["red", "wings", "small"]] * 20
    s = FastTextSettings(dim=8, epochs=2, bucket=500, min_count=3)
    model = fit_fasttext(sents, s)
    vocab = Vocab.build(sents, min_occ=3)
    vecs = word_vectors(model, vocab)
    assert vecs.shape == (len(vocab), 8) and vecs.dtype == np.float32
    assert (vecs[EXC_ID] == -1).all() and (vecs[PAD_ID] == 0).all() and (vecs[EOS_ID] == 1).all()
    assert np.allclose(vecs[vocab.index["bird"]], model.wv["bird"])
    with pytest.raises(MemeError, match="no word occurs 3 times"):
        fit_fasttext([["a", "b"]], s)


@pytest.mark.skipif(not REAL_TEST_CAPTIONS.is_file(), reason="real CUB captions not available (../shared/data/cub)")
def test_real_captions_tokenize_and_vocabulary():
    lines = REAL_TEST_CAPTIONS.read_text().splitlines()
    assert len(lines) == 29_330
    tokens = [tokenize(line) for line in lines]
    vocab = Vocab.build(tokens, min_occ=3)
    # 996 entries on the 50 test classes, as with NLTK's tokenizer (the paper's 1,590 is on the 150 train/val classes)
    assert len(vocab) == 996
    assert {"beak", "wings", "red", ",", "."} <= set(vocab.words)
    assert sum(vocab.counts) == sum(len(t) for t in tokens)
    ids = vocab.encode(tokens)
    assert ids.shape == (29_330, 32) and (ids == EOS_ID).sum(1).max() == 1 and (ids == EOS_ID).any(1).all()
    assert vocab.decode(ids[0]) == " ".join(tokens[0])
