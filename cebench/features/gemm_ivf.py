"""IVF search as matrix products over the caller's own vectors: `FeatureIndex(kind="ivf-gemm")`.

An inverted-file index whose build writes no copy of the database. The lists are chosen by a FAISS
coarse quantizer (PCA projection + k-means centroids, `FeatureIndex._coarse_pca_quantizer`); a list
is a run of the database ids sorted by their list, over the caller's array (float32 or float16, not
copied). Search groups the (query, list) probes by list and, per visited list, gathers that list's
vectors once into a reused buffer and scores all the queries that visit it with one matrix product,
then keeps the top k of each query over its `nprobe` lists.

Why: at 1M x 256 with 1,000 queries, FAISS's IndexIVFFlat spends most of its build writing the 1 GB
of vectors into its lists (page faults and copies on these 2-core VMs) and scans each (query, list)
pair on its own; here the build is the assignment alone and the search reads each visited list once
per query batch, so a larger nprobe costs matrix-product flops, not memory traffic. For the same
quantizer and nprobe the neighbours are those of faiss's IndexIVFFlat (tested), up to ties.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

QUERY_BLOCK = 2048  # queries of one list scored per matrix product ([block, list size] float32 scores)
GATHER_BLOCK = 1024  # list vectors gathered at a time (1 MB float32): the block is scored while in cache
ASSIGN_CHUNK = 32768  # rows projected and assigned at a time: the [chunk, coarse_dim] projection stays in cache
TOPK_GROUP = 64  # `row_topk`: columns per group


def _split_projection(quantizer):
    """(A [d_out, dim], b [d_out], inner faiss index over the projection) when `quantizer` is an
    IndexPreTransform(LinearTransform, index) such as FeatureIndex's PCA quantizer, else None.
    `assign` projects with one float32 matrix product per chunk instead of through faiss's transform:
    the whole 1M x 256 build (24-d) went from 0.40-0.43 s to 0.33-0.37 s (results/performance-notes.md),
    with the same lists as faiss's own quantizer (tested)."""
    import faiss  # the quantizer is a faiss index: faiss is installed

    pre = faiss.downcast_index(quantizer)
    if not isinstance(pre, faiss.IndexPreTransform) or pre.chain.size() != 1:
        return None
    lt = faiss.downcast_VectorTransform(pre.chain.at(0))
    if not isinstance(lt, faiss.LinearTransform):
        return None
    a = torch.from_numpy(faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in).copy())
    b = torch.from_numpy(faiss.vector_to_array(lt.b).copy()) if lt.have_bias else torch.zeros(lt.d_out)
    return a, b, faiss.downcast_index(pre.index)


def _torch_view(x: np.ndarray) -> torch.Tensor:
    """A tensor sharing memory with x (read only here; torch warns about non-writable arrays)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(x)


def row_topk(scores: torch.Tensor, k: int, group: int = TOPK_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(scores [m, n], k, dim=1) (values descending, column indices) in two steps: the k groups of
    `group` columns with the highest maxima, then the top k of those k * group columns. Every top-k entry lies
    in one of them (each group holding one has its maximum among the top k: at most k groups), so the result
    is topk's up to the order of equal values; 3x faster on [200, 32768] (one thread: 4 vs 12 ms)."""
    m, n = scores.shape
    ng = n // group
    if ng <= 2 * k:  # too few groups to gain anything
        top = torch.topk(scores, k, dim=1)
        return top.values, top.indices
    best_groups = torch.topk(scores[:, :ng * group].reshape(m, ng, group).amax(2), k, dim=1).indices  # [m, k]
    cols = (best_groups[:, :, None] * group + torch.arange(group)).reshape(m, k * group)
    if n > ng * group:  # the columns after the last whole group are candidates too
        cols = torch.cat([cols, torch.arange(ng * group, n).expand(m, -1)], 1)
    top = torch.topk(torch.gather(scores, 1, cols), k, dim=1)
    return top.values, torch.gather(cols, 1, top.indices)


def in_threads(fn, parts: list, workers: int | None = None) -> list:
    """[fn(part) for part in parts], run in `workers` Python threads (default: torch's thread count), each
    running torch and faiss on one thread of its own (both release the GIL). The work here is many small
    operations; with two OpenMP threads inside each of them every operation waits at a barrier for both
    cores -- a scheduler time slice whenever another process holds one (this project's shared 2-core
    machines: a 1M ivf-gemm search took 9-17 s that way, 0.5 s in two one-thread streams, same results), and
    torch and faiss bring two OpenMP runtimes whose idle threads spin against each other."""
    workers = max(1, min(workers or torch.get_num_threads(), len(parts)))
    if workers == 1:
        return [fn(part) for part in parts]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers, initializer=_one_thread) as pool:
            return list(pool.map(fn, parts))
    finally:
        torch.set_num_threads(old)


def _one_thread() -> None:
    import faiss  # the quantizers are faiss indexes: faiss is installed where this runs

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)  # OpenMP's thread count is per calling thread: this worker only


class GemmIVF:
    """quantizer: a trained faiss index with `nlist` entries that maps a [N, dim] float32 batch to its
    lists (`assign`/`search`); metric "ip" (scores: inner products, highest first) or "l2" (squared
    distances, lowest first, as faiss returns them)."""

    def __init__(self, quantizer, nlist: int, dim: int, metric: str = "ip", nprobe: int = 1):
        self.quantizer, self.nlist, self.dim, self.metric = quantizer, int(nlist), int(dim), metric
        self.nprobe = int(nprobe)
        self.x: torch.Tensor | None = None      # [N, dim] float32/float16: the caller's memory when it can be
        self.ids = torch.zeros(0, dtype=torch.long)        # [N] database ids sorted by list
        self.offsets = torch.zeros(self.nlist + 1, dtype=torch.long)  # list l = ids[offsets[l]:offsets[l+1]]
        self.sq_norms: torch.Tensor | None = None          # [N] |x|^2 (l2 only)
        self._projection = _split_projection(quantizer)   # (A, b, inner) or None: assign through faiss

    @property
    def ntotal(self) -> int:
        return 0 if self.x is None else int(self.x.shape[0])

    def assign(self, x: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
        """The list of every row of x [N, dim] -> int64 [N] (float16 converted a chunk at a time). With a
        linear projection in front of the quantizer, a chunk is projected by one matrix product into a
        reused [chunk, d_out] buffer and assigned by the inner index while it is still in cache."""
        out = np.empty(x.shape[0], np.int64)
        starts = list(range(0, x.shape[0], chunk))

        def run(mine: list[int]) -> None:  # these chunks, in this thread (`in_threads`)
            proj = None
            for s in mine:
                if self._projection is None:
                    part = np.ascontiguousarray(x[s:s + chunk], dtype=np.float32)
                    out[s:s + chunk] = self.quantizer.assign(part, 1)[:, 0]
                    continue
                a, b, inner = self._projection
                proj = torch.empty(min(chunk, x.shape[0]), a.shape[0]) if proj is None else proj  # [chunk, d_out]
                part = _torch_view(np.ascontiguousarray(x[s:s + chunk], dtype=np.float32))
                p = proj[:part.shape[0]]
                torch.addmm(b, part, a.T, out=p)                 # x A^T + b: the PCA projection
                out[s:s + chunk] = inner.assign(p.numpy(), 1)[:, 0]

        workers = max(1, min(torch.get_num_threads(), len(starts)))
        in_threads(run, [starts[i::workers] for i in range(workers)], workers)
        return out

    def add(self, x: np.ndarray) -> None:
        """Add [N, dim] float32 or float16 vectors; the first add keeps a view of x (no copy when x is
        C-contiguous), a later add concatenates (one copy)."""
        if x.dtype not in (np.float32, np.float16):
            x = x.astype(np.float32)
        x = np.ascontiguousarray(x)
        lists = self.assign(x)
        new = _torch_view(x)
        if self.x is None:
            prev_lists = np.zeros(0, np.int64)
            self.x = new
        else:  # the earlier vectors' lists, from the sorted layout
            counts = (self.offsets[1:] - self.offsets[:-1]).numpy()
            prev_lists = np.empty(self.ntotal, np.int64)
            prev_lists[self.ids.numpy()] = np.repeat(np.arange(self.nlist), counts)
            self.x = torch.cat([self.x, new.to(self.x.dtype)])
        all_lists = torch.from_numpy(np.concatenate([prev_lists, lists]))
        # ids grouped by list, ascending within a list; numpy's stable sort of int16 keys is a radix sort
        # (~0.01 s at 1M, half of torch's argsort)
        self.ids = (torch.from_numpy(np.argsort(all_lists.numpy().astype(np.int16), kind="stable"))
                    if self.nlist <= np.iinfo(np.int16).max else torch.argsort(all_lists, stable=True))
        counts = torch.bincount(all_lists, minlength=self.nlist)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
        if self.metric == "l2":
            self.sq_norms = torch.cat([self.sq_norms if self.sq_norms is not None else torch.zeros(0),
                                       new.float().pow(2).sum(1)])

    def list_sizes(self) -> np.ndarray:
        """Vectors per list, int64 [nlist]."""
        return (self.offsets[1:] - self.offsets[:-1]).numpy()

    def lists_of(self, ids: np.ndarray) -> np.ndarray:
        """The list that holds each database id of `ids` (any shape) -> int64, same shape: from the sorted
        layout, i.e. the lists the search visits (not an assignment computed again)."""
        where = torch.empty_like(self.ids)
        where[self.ids] = torch.arange(len(self.ids))            # id -> its position in the sorted layout
        pos = where[torch.from_numpy(np.asarray(ids, np.int64).reshape(-1))]
        return (torch.searchsorted(self.offsets, pos, right=True) - 1).numpy().reshape(np.shape(ids))

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of q [M, dim] float32 over each query's `nprobe` nearest lists -> (scores [M, k] float32,
        ids [M, k] int64), padded with -inf/inf and -1 where the visited lists hold fewer than k."""
        M, P = q.shape[0], max(1, min(self.nprobe, self.nlist))
        _, probe = self.quantizer.search(q, P)                      # [M, P] list ids (-1: none)
        qt = torch.from_numpy(q)
        pl = torch.from_numpy(probe.reshape(-1))                   # [M*P] list of each probe
        pq = torch.arange(M).repeat_interleave(P)                  # [M*P] its query
        order = torch.argsort(pl, stable=True)                     # probes grouped by list
        pl_sorted = pl[order]
        starts = torch.searchsorted(pl_sorted, torch.arange(self.nlist + 1))  # probe runs per list
        # per probe, in probe (list) order: its top k ("higher is nearer"); unsorted once at the end
        best_sorted = torch.full((M * P, k), -torch.inf)
        best_ids_sorted = torch.full((M * P, k), -1, dtype=torch.long)
        sizes = self.offsets[1:] - self.offsets[:-1]
        nonempty = torch.nonzero((starts[1:] > starts[:-1]) & (sizes > 0)).flatten()
        cost = sizes[nonempty] * (starts[1:] - starts[:-1])[nonempty]        # vectors x queries per list
        nonempty = nonempty[torch.argsort(cost, descending=True)].tolist()   # costliest first
        starts_l, offsets_l = starts.tolist(), self.offsets.tolist()  # python ints: no tensor.item() per list
        q_sorted = qt[pq[order]]                                   # [M*P, dim] queries in probe order

        def scan(lists: list[int]) -> None:  # score the probes of these lists into best_sorted (disjoint rows)
            blk = GATHER_BLOCK
            buf = torch.empty(blk, self.dim, dtype=self.x.dtype)    # one block of a list's vectors
            buf32 = torch.empty(buf.shape) if self.x.dtype != torch.float32 else buf
            for li in lists:
                a, b = starts_l[li], starts_l[li + 1]
                lo, hi = offsets_l[li], offsets_l[li + 1]
                n = hi - lo
                rows = self.ids[lo:hi]                             # [n] database ids of the list
                kk = min(k, n)
                for s in range(a, b, QUERY_BLOCK):
                    e = min(b, s + QUERY_BLOCK)
                    scores_t = torch.empty(n, e - s)               # [n, m]: row blocks are contiguous
                    for c in range(0, n, blk):                     # gather a block (stays in cache), score it
                        c1 = min(n, c + blk)
                        torch.index_select(self.x, 0, rows[c:c1], out=buf[:c1 - c])
                        xb = buf[:c1 - c] if buf32 is buf else buf32[:c1 - c].copy_(buf[:c1 - c])
                        torch.mm(xb, q_sorted[s:e].T, out=scores_t[c:c1])
                    scores = scores_t.T                            # [m, n]
                    if self.metric == "l2":                        # -|q-x|^2 + |q|^2 = 2 q.x - |x|^2
                        scores = 2 * scores - self.sq_norms[rows][None]
                    top = torch.topk(scores, kk, dim=1)
                    best_sorted[s:e, :kk] = top.values
                    best_ids_sorted[s:e, :kk] = rows[top.indices]

        workers = max(1, min(torch.get_num_threads(), len(nonempty)))  # the lists in one-thread streams
        in_threads(scan, [nonempty[i::workers] for i in range(workers)], workers)
        best = torch.empty_like(best_sorted)
        best_ids = torch.empty_like(best_ids_sorted)
        best[order], best_ids[order] = best_sorted, best_ids_sorted
        top = torch.topk(best.view(M, P * k), k, dim=1)            # merge the nprobe lists of each query
        ids = torch.gather(best_ids.view(M, P * k), 1, top.indices)
        scores = top.values
        if self.metric == "l2":
            scores = qt.pow(2).sum(1, keepdim=True) - scores
            scores = torch.where(ids >= 0, scores.clamp(min=0), torch.inf)
        return scores.numpy().astype(np.float32), ids.numpy()

    # persistence: plain arrays (np.savez, loaded with allow_pickle=False) -------------------------
    def state(self, serialized_quantizer: np.ndarray) -> dict:
        return {"format": np.array("cebench-ivf-gemm-1"), "quantizer": serialized_quantizer,
                "x": self.x.numpy(), "ids": self.ids.numpy(), "offsets": self.offsets.numpy(),
                "meta": np.array([self.nlist, self.dim, self.nprobe], np.int64), "metric": np.array(self.metric)}

    @classmethod
    def from_state(cls, st, quantizer) -> "GemmIVF":
        nlist, dim, nprobe = (int(v) for v in st["meta"])
        obj = cls(quantizer, nlist, dim, str(st["metric"]), nprobe)
        obj.x = torch.from_numpy(np.ascontiguousarray(st["x"]))
        obj.ids = torch.from_numpy(st["ids"]).long()
        obj.offsets = torch.from_numpy(st["offsets"]).long()
        if len(obj.ids) != obj.ntotal or len(obj.offsets) != nlist + 1 or int(obj.offsets[-1]) != obj.ntotal:
            raise ValueError("inconsistent ivf-gemm arrays")
        if obj.metric == "l2":
            obj.sq_norms = obj.x.float().pow(2).sum(1)
        return obj


__all__ = ["GemmIVF"]
