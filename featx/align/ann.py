"""Approximate k-NN for very many rows (opt-in, ``featx align --knn_index hnsw``): faiss's HNSW
graph over the prepared (L2-normalised) rows, searched by inner product, and its recall@k against
the exact neighbours of a sample of rows, so that what the approximation costs is always reported.

Exact neighbours (:func:`featx.align.metrics.knn_blocked`) stay the default: scores from an
approximate graph differ from the reference's, by an amount the recall bounds (a mutual_knn
overlap can only lose what a missed neighbour held)."""

from __future__ import annotations

import torch

KNN_INDEXES = ("exact", "hnsw")
HNSW_M = 32  # graph degree (faiss's usual 32)
HNSW_EF_CONSTRUCTION = 80
RECALL_ROWS = 1000  # rows whose exact neighbours are computed to measure recall (k·N work each)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ValueError("--knn_index hnsw needs faiss: pip install faiss-cpu (or drop --knn_index for exact "
                         "neighbours)") from None
    return faiss


def hnsw_knn(x: torch.Tensor, topk: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Approximate k-NN of one ``[N, D]`` layer (self excluded): (indices ``[N, k]`` int64 by
    decreasing similarity, similarities ``[N, k]``, recall@k on :data:`RECALL_ROWS` sampled rows)."""
    from featx.align.metrics import nearest_neighbors

    faiss = _faiss()
    n, d = x.shape
    data = x.detach().float().cpu().contiguous().numpy()
    index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.hnsw.efSearch = max(64, 4 * (topk + 1))
    index.add(data)
    sims, found = (torch.from_numpy(a) for a in index.search(data, topk + 1))
    drop = (found == torch.arange(n)[:, None]) | (found < 0)  # self, or no neighbour found
    order = drop.to(torch.int8).argsort(dim=1, stable=True)[:, :topk]  # the others first, in search order
    idx, vals = found.gather(1, order), sims.gather(1, order)
    if (idx < 0).any():
        raise ValueError(f"hnsw found fewer than {topk} neighbours for some rows; use exact neighbours "
                         "(drop --knn_index)")
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:RECALL_ROWS]
    hat = x[rows] @ x.T
    hat[torch.arange(rows.numel()), rows.to(x.device)] = float("-inf")
    exact = nearest_neighbors(hat, topk).cpu()
    hits = (idx[rows][:, :, None] == exact[:, None, :]).any(dim=-1).sum()
    return idx.to(x.device), vals.to(x.device), float(hits) / (rows.numel() * topk)
