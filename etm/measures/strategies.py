"""Strategies: spectral relevance analysis (SpRAy; Lapuschkin et al., 2019) of a dataset's salience maps.

Per image and run the plan's clean native map is downsampled to ``grid`` x ``grid`` cells (area average,
``torch.nn.functional.adaptive_avg_pool2d`` in float64 on the CPU, per map, so its bits do not depend on the
batch) and normalised (``normalise``: ``sum`` -> the cells sum to one, ``l2`` -> unit Euclidean norm). Empty
maps (no positive salience) are left out and counted.

Pooling over runs: every (image, run) pair whose map is not empty is one point, filed under the class *that
run* predicted. A family's runs are thereby clustered together, so a strategy that some runs use and others
do not shows up as a cluster whose share differs between runs (``share_per_run``); a family of one run is
plain SpRAy on one model. Each candidate family is clustered on its own (its clusters are its strategies).

Summary, per predicted class (``summarize``, deterministic with the job's seed, and run on the concatenated
columns, so a sharded job gives the same clusters as an unsharded one):

1. affinity: the symmetrised k-nearest-neighbour connectivity graph of the maps
   (``sklearn.neighbors.kneighbors_graph``, Euclidean, ``n_neighbors``; ``A = (G + G^T) / 2``);
2. eigengap: the smallest ``max_clusters + 1`` eigenvalues of its normalised Laplacian
   (``scipy.sparse.csgraph.laplacian``; ``scipy.linalg.eigh`` when small, else ``scipy.sparse.linalg.eigsh``
   on ``I - L``, largest eigenvalues, from a seeded start vector); the number of clusters is
   ``argmax_k (l_{k+1} - l_k)`` over ``k = 1..max_clusters``, so one cluster when the first gap is the largest;
3. the spectral embedding from the same eigenvectors (divided by the square root of the degree, signs fixed:
   what ``sklearn.manifold.spectral_embedding`` computes), then k-means on its first k coordinates
   (``sklearn.cluster.KMeans``, ``n_init=10``, the seed), as ``sklearn.cluster.SpectralClustering`` does;
4. per cluster (largest first): size, share of the class's points, share per run, the mean map, its peak
   cell, the representatives (the members whose maps are closest to the cluster's mean map, Euclidean);
   and for a picture the first two non-trivial spectral coordinates of (at most ``embedding_points``,
   evenly spaced) points.

A class with fewer points than ``minimum_points`` (more than ``n_neighbors`` and ``max_clusters + 2``) is
reported without clusters, with a message; a job with fewer images than that is refused (BadInput).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.csgraph
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

from etm.errors import BadInput
from etm.measures.base import BatchContext, Columns, Measure, MeasureResult
from etm.params import Param

DENSE_EIGEN_MAX = 2000  # points up to which the Laplacian's spectrum is computed densely (exact, fast enough)
POOLING = (
    "every (image, run) pair with a non-empty map is one point, filed under the class that run predicted; "
    "the runs of a family are clustered together and each cluster reports its share per run"
)


def downsample(native: torch.Tensor, grid: int, normalise: str) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N, h, w] -> (float32 [N, grid, grid] normalised maps, NaN where empty; bool [N] empty)."""
    x = native.detach().to("cpu", torch.float64).clamp_min(0.0)
    small = F.adaptive_avg_pool2d(x.unsqueeze(1), grid).squeeze(1).numpy()
    flat = small.reshape(len(small), -1)
    norm = flat.sum(axis=1) if normalise == "sum" else np.sqrt((flat * flat).sum(axis=1))
    empty = ~(norm > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (small / np.where(empty, 1.0, norm)[:, None, None]).astype(np.float32)
    out[empty] = np.nan
    return out, empty


def minimum_points(n_neighbors: int, max_clusters: int) -> int:
    """The fewest maps of one class that a k-NN graph with ``n_neighbors`` and the eigengap need."""
    return max(n_neighbors + 1, max_clusters + 2)


def laplacian_spectrum(affinity: scipy.sparse.csr_matrix, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` smallest eigenvalues of the normalised Laplacian ``L`` of ``affinity`` (ascending, float64) and
    the spectral embedding they give: the eigenvectors divided by the square root of each point's degree, each
    with its largest entry positive (what ``sklearn.manifold.spectral_embedding`` returns), [n, m]."""
    lap, dd = scipy.sparse.csgraph.laplacian(affinity.astype(np.float64), normed=True, return_diag=True)
    n = lap.shape[0]
    if n <= DENSE_EIGEN_MAX:
        vals, vecs = scipy.linalg.eigh(lap.toarray(), subset_by_index=[0, m - 1])
    else:
        # The largest eigenvalues of I - L (Lanczos, no factorisation; 100x faster than shift-invert on L at
        # 10,000 maps), from a seeded start vector: the same inputs give the same bits.
        v0 = np.random.default_rng(seed).uniform(-1.0, 1.0, n)
        upper, vecs = scipy.sparse.linalg.eigsh(scipy.sparse.identity(n, format="csr") - lap, k=m, which="LA",
                                                v0=v0, tol=1e-10)
        vals = 1.0 - upper
    order = np.argsort(vals, kind="stable")
    vals, vecs = np.clip(np.asarray(vals, dtype=np.float64)[order], 0.0, None), vecs[:, order]
    emb = vecs / dd[:, None]
    signs = np.sign(emb[np.argmax(np.abs(emb), axis=0), np.arange(m)])
    return vals, emb * np.where(signs == 0, 1.0, signs)


def eigengap_clusters(eigenvalues: np.ndarray, max_clusters: int) -> tuple[int, np.ndarray]:
    """(number of clusters, gaps ``l_{k+1} - l_k`` for k = 1..max_clusters) by the eigengap rule."""
    gaps = np.diff(eigenvalues[: max_clusters + 1])
    return int(np.argmax(gaps)) + 1, gaps


def spray(maps: np.ndarray, n_neighbors: int, max_clusters: int, seed: int) -> dict[str, Any]:
    """SpRAy on maps [P, d] (P >= ``minimum_points``): labels (0 = largest cluster), eigenvalues, gaps, the
    2-D spectral coordinates. Deterministic given the maps and the seed."""
    from sklearn.cluster import KMeans
    from sklearn.neighbors import kneighbors_graph

    x = np.asarray(maps, dtype=np.float64)
    g = kneighbors_graph(x, n_neighbors=n_neighbors, mode="connectivity", include_self=False)
    affinity = (0.5 * (g + g.T)).tocsr()
    eigenvalues, emb = laplacian_spectrum(affinity, max_clusters + 1, seed)
    k, gaps = eigengap_clusters(eigenvalues, max_clusters)
    components = int(scipy.sparse.csgraph.connected_components(affinity, directed=False)[0])
    if k == 1:
        labels = np.zeros(len(x), dtype=np.int64)
    else:
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(emb[:, :k])
        labels = km.labels_.astype(np.int64)
    # Canonical order: largest cluster first, ties by the first member; so labels do not depend on k-means'.
    ids = sorted(np.unique(labels), key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    relabel = np.empty(int(labels.max()) + 1, dtype=np.int64)
    relabel[ids] = np.arange(len(ids))
    return {"labels": relabel[labels], "eigenvalues": eigenvalues, "gaps": gaps, "n_clusters": k, "xy": emb[:, 1:3],
            "components": components}


def _r(x: float, nd: int = 6) -> float:
    return float(round(float(x), nd))


class StrategiesMeasure(Measure):
    """SpRAy strategy discovery per predicted class (opt-in: clustering costs more than a standard measure).

    Params: ``grid`` (cells per side of the downsampled map, 8), ``normalise`` (``sum`` or ``l2``),
    ``n_neighbors`` (k of the k-NN graph, 10), ``max_clusters`` (upper bound of the eigengap rule, 8),
    ``representatives`` (images shown per cluster, 3), ``embedding_points`` (points of the 2-D picture, 400),
    ``max_members`` (members listed per cluster, in canonical order, 2000).

    Columns: ``maps`` [N, K, grid, grid] float32 (normalised, NaN when empty); ``empty``, ``predicted``
    [N, K]; ``key`` [N] str (the image keys, for the representatives).
    """

    name = "strategies"
    title = "Strategies (spectral relevance analysis)"
    about = (
        "Clusters of similar salience maps per predicted class (SpRAy): each cluster is one way the model decides. "
        "A small cluster whose mean map sits off the face may be a shortcut (a 'Clever Hans' strategy)."
    )
    variants = {"strategies.clusters": ("extra", None)}
    notes = {"strategies.clusters": "number of clusters (strategies), summed over the predicted classes"}
    opt_in = True
    param_types = {
        "grid": Param(8, int, lo=1, hi=64),
        "normalise": Param("sum", str, choices=("sum", "l2")),
        "n_neighbors": Param(10, int, lo=2, hi=200),
        "max_clusters": Param(8, int, lo=2, hi=32),
        "representatives": Param(3, int, lo=1, hi=10),
        "embedding_points": Param(400, int, lo=0, hi=5000),
        "max_members": Param(2000, int, lo=0, hi=100_000),
    }

    def default_params(self) -> dict[str, Any]:
        return {k: p.default for k, p in self.param_types.items()}

    @property
    def minimum(self) -> int:
        return minimum_points(int(self.params["n_neighbors"]), int(self.params["max_clusters"]))

    def check_images(self, n_images: int) -> None:
        """BadInput when a job of ``n_images`` images cannot be clustered at all."""
        if n_images < self.minimum:
            raise BadInput(
                f"strategies needs at least {self.minimum} images (more than n_neighbors="
                f"{self.params['n_neighbors']} and max_clusters+2={int(self.params['max_clusters']) + 2}); the job has "
                f"{n_images}: add images, or lower measure_params.strategies.n_neighbors / max_clusters"
            )

    def per_image(self, ctx: BatchContext) -> Columns:
        grid, norm = int(self.params["grid"]), str(self.params["normalise"])
        maps, empty, pred = [], [], []
        for res in ctx.clean:
            m, e = downsample(res.native, grid, norm)
            maps.append(m)
            empty.append(e)
            pred.append(res.predicted.detach().cpu().numpy().astype(np.int64))
        return {
            "maps": np.stack(maps, axis=1),
            "empty": np.stack(empty, axis=1),
            "predicted": np.stack(pred, axis=1),
            "key": np.array(ctx.keys, dtype=str),
        }

    def summarize(self, cols: Columns, oos_cols: Columns | None, rng_seed: int) -> list[MeasureResult]:
        p = self.params
        params = {k: p[k] for k in self.param_types} | {"pooling": "image x run points, per predicted class"}
        maps = np.asarray(cols.get("maps", np.zeros((0, 1, 1, 1), np.float32)))
        n, k_runs = maps.shape[:2]
        self.check_images(n)
        empty = np.asarray(cols["empty"], dtype=bool)
        pred = np.asarray(cols["predicted"], dtype=np.int64)
        keys = [str(s) for s in cols["key"]]
        img_idx, run_idx = np.nonzero(~empty)  # row-major: canonical image order, then run
        classes: dict[str, Any] = {}
        total_clusters, clustered = 0, 0
        for c in np.unique(pred[img_idx, run_idx]) if len(img_idx) else []:
            sel = pred[img_idx, run_idx] == c
            ii, rr = img_idx[sel], run_idx[sel]
            classes[str(int(c))] = self._class(maps, keys, ii, rr, k_runs, rng_seed)
            total_clusters += classes[str(int(c))].get("n_clusters", 0)
            clustered += len(ii) if "clusters" in classes[str(int(c))] else 0
        details: dict[str, Any] = {
            "pooling": POOLING,
            "grid": [int(maps.shape[2]), int(maps.shape[3])] if n else None,
            "n_runs": int(k_runs),
            "minimum_points": self.minimum,
            "classes": classes,
            "note": "class keys are model class indices (predicted); clusters largest first",
        }
        if not clustered:
            details["message"] = (
                f"no predicted class has {self.minimum} non-empty maps; nothing was clustered"
                if len(img_idx)
                else "every map is empty; nothing to cluster"
            )
            return [self.unavailable("strategies.clusters", params, details, n_empty=int(empty.sum()))]
        summary = {"value": float(total_clusters), "ci": None, "n": clustered, "n_empty": int(empty.sum())}
        return [self.result("strategies.clusters", summary, params, details)]

    def _class(
        self, maps: np.ndarray, keys: list[str], ii: np.ndarray, rr: np.ndarray, k_runs: int, seed: int
    ) -> dict[str, Any]:
        p = self.params
        n_pts = len(ii)
        runs_total = np.bincount(rr, minlength=k_runs)
        out: dict[str, Any] = {
            "n_points": n_pts,
            "n_images": int(len(np.unique(ii))),
            "points_per_run": runs_total.tolist(),
        }
        if n_pts < self.minimum:
            out["message"] = (
                f"{n_pts} maps predicted this class; clustering needs at least {self.minimum} "
                f"(more than n_neighbors={p['n_neighbors']}): not clustered"
            )
            return out
        x = maps[ii, rr].reshape(n_pts, -1).astype(np.float64)
        got = spray(x, int(p["n_neighbors"]), int(p["max_clusters"]), seed)
        labels = got["labels"]
        clusters = []
        for j in range(got["n_clusters"]):
            member = labels == j
            mean = x[member].mean(axis=0)
            dist = np.sqrt(((x[member] - mean) ** 2).sum(axis=1))
            order = np.argsort(dist, kind="stable")[: int(p["representatives"])]
            mi, mr = ii[member], rr[member]
            per_run = np.bincount(mr, minlength=k_runs)
            listed = int(p["max_members"])
            grid = mean.reshape(maps.shape[2], maps.shape[3])
            peak = np.unravel_index(int(np.argmax(grid)), grid.shape)
            clusters.append(
                {
                    "cluster": j,
                    "size": int(member.sum()),
                    "share": _r(member.sum() / n_pts),
                    "share_per_run": [_r(a / b) if b else None for a, b in zip(per_run, runs_total, strict=True)],
                    "mean_map": [[_r(v) for v in row] for row in grid],
                    "peak": [int(peak[0]), int(peak[1])],
                    "representatives": [
                        {"key": keys[int(mi[o])], "run": int(mr[o]), "distance": _r(dist[o])} for o in order
                    ],
                    "members": {"key": [keys[int(i)] for i in mi[:listed]], "run": [int(r) for r in mr[:listed]]},
                    "members_truncated": bool(len(mi) > listed),
                }
            )
        cap = int(p["embedding_points"])
        show = np.unique(np.linspace(0, n_pts - 1, min(cap, n_pts)).round().astype(int)) if cap else np.array([], int)
        xy = got["xy"][show]
        out.update(
            n_clusters=int(got["n_clusters"]),
            graph_components=got["components"],
            # the largest gap at the bound: more strategies may exist than max_clusters lets the rule say
            at_max_clusters=bool(got["n_clusters"] == int(p["max_clusters"])),
            eigenvalues=[_r(v, 8) for v in got["eigenvalues"]],
            eigengaps=[_r(v, 8) for v in got["gaps"]],
            clusters=clusters,
            embedding={
                "method": "first two non-trivial spectral coordinates",
                "x": [_r(v) for v in xy[:, 0]],
                "y": [_r(v) for v in xy[:, 1]],
                "cluster": [int(v) for v in labels[show]],
                "key": [keys[int(ii[s])] for s in show],
                "run": [int(rr[s]) for s in show],
            },
            labels_note="members are (image, run) points; representatives are the closest to the cluster's mean map",
        )
        return out
