"""Offline text corpora, tokenised and packed to a context size, with a held-out split.

    from workbench.corpora import list_corpora, load_corpus, pack_corpus, split_documents
    corpus = load_corpus("default", max_docs=1000)        # or "pydocs", a .txt/.jsonl path, "hf:..."
    packed = pack_corpus(corpus, tokenizer, context_size=128, split="train", max_tokens=100_000)
    packed.tokens                                         # [n_ctx, 128] with packed.doc / packed.pos

Importing this package imports torch but not transformers.
"""

from workbench.corpora.corpus import Corpus
from workbench.corpora.packing import PackedCorpus, pack_corpus, split_documents
from workbench.corpora.sources import list_corpora, load_corpus

__all__ = ["Corpus", "PackedCorpus", "list_corpora", "load_corpus", "pack_corpus", "split_documents"]
