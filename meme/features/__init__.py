"""CUB feature extraction and the Parquet feature store every CUB trial reads.

* ``meme.features.resnet``: ResNet-101 image features (2048-d), batched, resumable, GPU when present;
* ``meme.features.text``: tokenizer, vocabulary, FastText word vectors, sentence embeddings;
* ``meme.features.captions``: the caption side of the store (and stand-in image features);
* ``meme.features.store``: the Parquet tables, their metadata and validated, memory-mapped readers;
* ``meme.features.cli``: ``meme features images|captions|standin-images|info``.
"""
