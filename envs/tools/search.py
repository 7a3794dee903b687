"""A ``search`` tool: BM25 retrieval over a local corpus of ``(title, text)`` documents.

Reused: the maintained BM25 library ``bm25s`` (its tokenizer with English stopwords, its
Lucene-variant BM25 scoring and top-k selection). What is ours: the title is indexed twice beside
the text (so a query naming an entity finds that entity's own page first, as title boosting does
in search engines), documents with a zero score are not returned, and results are rendered as
numbered ``[n] Title: text`` passages for the model.

    index = BM25Index([("Ostrava", "Ostrava is a city in ..."), ...])
    tool = search_tool(index, k=3)   # an envs.base.Tool named "search"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from envs.base import Tool, ToolError

MAX_QUERY_CHARS = 500


class BM25Index:
    """BM25 over ``docs`` (``(title, text)`` pairs); built once, read-only, thread-safe to query."""

    def __init__(self, docs: Sequence[tuple[str, str]], *, k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        if not docs:
            raise ValueError("BM25Index needs at least one document")
        self.docs = [(str(t), str(x)) for t, x in docs]
        corpus = [f"{t}\n{t}\n{x}" for t, x in self.docs]  # title twice: see the module docstring
        tokens = bm25s.tokenize(corpus, stopwords="en", show_progress=False)
        self._bm25s = bm25s
        self._retriever = bm25s.BM25(k1=k1, b=b)
        self._retriever.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.docs)

    def search(self, query: str, k: int = 3) -> list[tuple[int, float]]:
        """The ``k`` best ``(doc index, score)`` pairs with a positive score, best first."""
        words = self._bm25s.tokenize([query], stopwords="en", return_ids=False,
                                     show_progress=False)
        if not words[0]:
            return []
        k = max(1, min(k, len(self.docs)))
        ids, scores = self._retriever.retrieve(words, k=k, show_progress=False, n_threads=1)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def render(self, query: str, k: int = 3) -> str:
        """What the model reads: ``[1] Title: text`` lines, or a no-result note."""
        hits = self.search(query, k)
        if not hits:
            return "No results."
        return "\n".join(f"[{n}] {self.docs[i][0]}: {self.docs[i][1]}"
                         for n, (i, _) in enumerate(hits, 1))


def search_tool(index: BM25Index, *, k: int = 3) -> Tool:
    """The ``search`` tool over ``index``, returning the top ``k`` passages."""

    def search(query: str) -> str:
        """Search the encyclopedia and return the best matching passages.

        Args:
            query: Keywords, e.g. a name and the fact you need.
        """
        if not query.strip():
            raise ToolError("query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolError(f"query too long ({len(query)} chars, max {MAX_QUERY_CHARS})")
        return index.render(query, k)

    return Tool.from_function(search)


def describe(index: BM25Index) -> dict[str, Any]:
    """Size figures of an index (for docs and logs)."""
    words = sum(len(t.split()) + len(x.split()) for t, x in index.docs)
    return {"documents": len(index), "words": words}
