"""Deletion and insertion tests of heatmaps, on the alignment objective and on class logits.

A heatmap claims that some pixels carry what the model uses. The deletion
test removes the top x % pixels of each image by its heatmap (in steps of x),
runs the perturbed images through the network again, and records at each step

* **alignment** -- the held-out row 2OI of the perturbed image: the
  correlation, over the other images ``j`` (left intact), of the model's
  similarity ``sim(e_t^{(x)}, e_j)`` with the human ``H[t, j]``;
* **logits** -- the logit of the class the network predicts for the intact
  image (or a given class).

The insertion test starts from the image with every pixel removed and reveals
the top x %. The normalised area under each image's curve (its mean height)
summarises it: after deletion a lower area means the heatmap found the
pixels that carry the score, after insertion a higher one. Two heatmap
sources are compared by a paired test over images of their areas.

Pixels are removed by ROAD's noisy linear imputation by default (see
:mod:`sklearn_ais._removal`), so that the curve measures the information the
pixels carry rather than the network's reaction to holes.
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.utils import check_random_state
from tqdm import tqdm

from ._device import resolve_device
from ._geometry import to_original
from ._parallel import parallel_map
from ._heatmaps import AISHeatmapper
from ._removal import REMOVALS, center_bias_maps, check_mask, random_maps, removal_order, remove_pixels
from ._similarity import COMPARISONS, SIMILARITIES, batched_correlation, correlation, upper_triangle
from ._stats import paired_test
from ._sklearn_compat import is_count
from ._targets import Y_KINDS, check_similarity_target, target_is_constant
from ._validation import as_feature_mask, check_image_cv
from .attention import METHODS as ATTENTION_METHODS
from .attention import attention_maps
from .backbones._capture import capture, device_lease
from .backbones._preprocess import as_image_source, same_size_groups

__all__ = ["CONTROLS", "DeletionCurves", "deletion_curves", "deletion_test"]

CONTROLS = ("inverted", "random", "center_bias")
OBJECTIVES = ("alignment", "logits")
MODES = ("deletion", "insertion")
PAIRED_TESTS = ("wilcoxon", "paired_t", "permutation")
DEFAULT_FRACTIONS = tuple(np.round(np.linspace(0, 1, 11), 10))


def _resolve(transformer):
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(transformer, "backbone_")
    return transformer.backbone_, transformer.head_, transformer.runtime_device()


def _check_fractions(fractions):
    f = np.asarray(fractions, dtype=np.float64)
    if f.ndim != 1 or len(f) < 2 or not np.isfinite(f).all() or (f < 0).any() or (f > 1).any() \
            or np.any(np.diff(f) <= 0):
        raise ValueError(f"fractions must be at least 2 increasing values in [0, 1], got {fractions!r}")
    return f


def _as_uint8(x):
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _check_heatmaps(heatmaps, shapes):
    """``{name: list of (H_i, W_i) float arrays}`` from a dict, an array or a list of maps."""
    if not isinstance(heatmaps, dict):
        heatmaps = {"heatmap": heatmaps}
    if not heatmaps:
        raise ValueError("heatmaps is empty: pass {name: maps of shape (n_images, H, W)}")
    out = {}
    for name, maps in heatmaps.items():
        items = list(maps) if isinstance(maps, (list, tuple)) else list(np.asarray(maps))
        if len(items) != len(shapes):
            raise ValueError(f"heatmaps[{name!r}] has {len(items)} maps for {len(shapes)} images")
        checked = []
        for i, (m, shape) in enumerate(zip(items, shapes)):
            m = np.asarray(m, dtype=np.float64)
            if m.shape != shape:
                raise ValueError(f"heatmaps[{name!r}][{i}] has shape {m.shape}, but image {i} is {shape} "
                                 "(draw heatmaps on the original images, e.g. AISHeatmapper(output='original'))")
            if not np.isfinite(m).all():
                raise ValueError(f"heatmaps[{name!r}][{i}] contains NaN or inf")
            checked.append(m)
        out[str(name)] = checked
    return out


class DeletionCurves:
    """Curves of a deletion or insertion test (returned by :func:`deletion_curves`).

    Attributes
    ----------
    fractions : ndarray of shape (n_steps,)
        Fractions of the (visible) pixels removed, or revealed for insertion.
    mode : {"deletion", "insertion"}
    sources : list of str
        Names of the heatmap sources.
    images : ndarray of shape (n_tested,)
        Indices of the images that were perturbed.
    alignment : dict of str to ndarray of shape (n_tested, n_steps)
        Row 2OI of each perturbed image against the intact others.
    matrix_alignment : dict of str to ndarray of shape (n_steps,)
        2OI of the whole similarity matrix with every tested image perturbed
        at once (a summary; the per-image rows are the held-out quantity).
    logits : dict of str to ndarray of shape (n_tested, n_steps), or None
        Logit of each image's class (``None`` when not computed).
    target : ndarray of shape (n_tested,) or None
        The class of each image whose logit is followed.
    comparison : str
        Correlation of the rows (and of the matrix).
    """

    def __init__(self, fractions, mode, sources, images, alignment, matrix_alignment, logits, target, comparison):
        self.fractions = fractions
        self.mode = mode
        self.sources = list(sources)
        self.images = images
        self.alignment = alignment
        self.matrix_alignment = matrix_alignment
        self.logits = logits
        self.target = target
        self.comparison = comparison

    def __repr__(self):
        return (f"DeletionCurves(mode={self.mode!r}, sources={self.sources}, n_images={len(self.images)}, "
                f"n_steps={len(self.fractions)})")

    def _curves(self, objective):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        curves = self.alignment if objective == "alignment" else self.logits
        if curves is None:
            raise ValueError(f"the {objective} curves were not computed (objective= of deletion_curves)")
        return curves

    def auc(self, objective="alignment") -> pd.DataFrame:
        """Normalised area under each image's curve (its mean height over the fractions).

        Parameters
        ----------
        objective : {"alignment", "logits"}, default="alignment"

        Returns
        -------
        auc : DataFrame of shape (n_tested, n_sources)
            Indexed by image index; NaN where a row 2OI is undefined.
        """
        from ._removal import area_under_curve

        curves = self._curves(objective)
        return pd.DataFrame({s: area_under_curve(self.fractions, curves[s]) for s in self.sources},
                            index=pd.Index(self.images, name="image"))

    def mean_curves(self, objective="alignment") -> pd.DataFrame:
        """Mean curve of each source over images (rows: fractions).

        Parameters
        ----------
        objective : {"alignment", "logits"}, default="alignment"

        Returns
        -------
        curves : DataFrame of shape (n_steps, n_sources)
        """
        curves = self._curves(objective)
        return pd.DataFrame({s: np.nanmean(curves[s], axis=0) for s in self.sources},
                            index=pd.Index(self.fractions, name="fraction"))

    def compare(self, reference=None, objective="alignment", test="wilcoxon", n_permutations=10000,
                random_state=0) -> pd.DataFrame:
        """Paired tests over images of ``reference``'s area against every other source's.

        Parameters
        ----------
        reference : str, optional
            Default: the first source.
        objective : {"alignment", "logits"}, default="alignment"
        test : {"wilcoxon", "paired_t", "permutation"}, default="wilcoxon"
            Wilcoxon's signed-rank test, the paired t-test, or the sign-flip
            permutation test of the mean difference (exact for up to 16
            images, else ``n_permutations`` random flips); all two-sided.
        n_permutations : int, default=10000
        random_state : int, RandomState instance or None, default=0
            Draws the random sign flips.

        Returns
        -------
        table : DataFrame
            One row per source: ``auc`` (mean over images), ``sem``,
            ``difference`` (mean of ``auc_source - auc_reference`` over the
            images both define; after deletion a positive difference means
            the reference removes the score faster), ``statistic``,
            ``p_value``, ``n_images``. The reference's row has NaN tests.
        """
        if test not in PAIRED_TESTS:
            raise ValueError(f"test must be one of {PAIRED_TESTS}, got {test!r}")
        auc = self.auc(objective)
        reference = self.sources[0] if reference is None else reference
        if reference not in auc:
            raise ValueError(f"reference must be one of {self.sources}, got {reference!r}")
        rows = []
        for s in self.sources:
            a, r = auc[s].to_numpy(), auc[reference].to_numpy()
            ok = ~(np.isnan(a) | np.isnan(r))
            row = {"source": s, "auc": float(np.nanmean(a)),
                   "sem": float(np.nanstd(a, ddof=1) / np.sqrt(max((~np.isnan(a)).sum(), 1))),
                   "difference": float(np.mean(a[ok] - r[ok])) if ok.any() else np.nan,
                   "statistic": np.nan, "p_value": np.nan, "n_images": int(ok.sum())}
            if s != reference:
                row["statistic"], row["p_value"] = _paired(a[ok], r[ok], test, n_permutations, random_state)
            rows.append(row)
        return pd.DataFrame(rows).set_index("source")


def _paired(a, b, test, n_permutations, random_state):
    if test in ("wilcoxon", "paired_t"):
        res = paired_test(a, b, comparison="auc", test=test)
        return res["statistic"], res["p_value"]
    d = a - b
    if len(d) < 2 or not np.any(d != 0):
        return np.nan, np.nan
    observed = abs(d.mean())
    if len(d) <= 16:
        signs = 1 - 2 * ((np.arange(2 ** len(d))[:, None] >> np.arange(len(d))) & 1)
        null = np.abs((signs * d).mean(axis=1))
        return float(d.mean()), float(np.mean(null >= observed - 1e-12))
    rng = check_random_state(random_state)
    signs = rng.choice([-1.0, 1.0], size=(n_permutations, len(d)))
    null = np.abs((signs * d).mean(axis=1))
    return float(d.mean()), float((1 + np.sum(null >= observed - 1e-12)) / (1 + n_permutations))


class _Extractor:
    """Embeddings (and logits) of batches of uint8 images through a fitted transformer's network."""

    def __init__(self, transformer, keep, want_logits, device):
        self.backbone, self.head, default = _resolve(transformer)
        self.device = default if device is None else resolve_device(device)
        self.keep = None if keep is None else torch.as_tensor(as_feature_mask(keep, transformer.n_maps_, "keep"))
        self.want_logits = want_logits

    def __call__(self, images):
        bb = self.backbone
        pixels, geometry = bb.preprocessing.batch([Image.fromarray(im) for im in images])
        emb = [None] * len(images)
        logits = [None] * len(images)
        for idx, x in same_size_groups(pixels):
            x = torch.from_numpy(x).to(self.device)
            with torch.inference_mode():
                if self.want_logits:
                    out, maps = capture(bb.model, bb.layer, lambda: bb.model(x), stop=False, clone=True)
                    if not isinstance(out, torch.Tensor) or out.ndim != 2:
                        raise ValueError("objective='logits' needs a network that returns logits (n_images, n_classes)")
                    out = out.double().cpu().numpy()
                else:
                    maps = bb.forward_maps(x)
                maps = maps.float().cpu()
                if self.keep is not None:
                    maps = maps * self.keep[None, :, None, None]
                e = self.head(maps).double().numpy()
            for j, i in enumerate(idx):
                emb[i] = e[j]
                if self.want_logits:
                    logits[i] = out[j]
        return np.stack(emb), (np.stack(logits) if self.want_logits else None), geometry, pixels


def _standardized(E, similarity):
    E = np.asarray(E, dtype=np.float64)
    if similarity == "pearson":
        E = E - E.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(E, axis=-1, keepdims=True)
    return np.divide(E, norm, out=np.zeros_like(E), where=norm > 0)


def _visible_region(geometry, input_sizes, shapes):
    """Pixels of each original image that the network input covers."""
    out = []
    for g, size, shape in zip(geometry, input_sizes, shapes):
        ones = np.ones((1, *size), dtype=np.float32)
        m = to_original(ones, g[None], tuple(size))[0] >= 0.5
        out.append(m if m.shape == shape else np.ones(shape, bool))
    return out


def deletion_curves(transformer, images, heatmaps, y=None, *, mode="deletion", fractions=DEFAULT_FRACTIONS,
                    removal="road", objective=("alignment", "logits"), images_tested=None, region="visible",
                    keep=None, similarity="pearson", comparison="spearman", y_kind="similarity", target=None,
                    noise=0.01, sigma=5.0, fill=0.5, random_state=0, batch_size=32, device=None, n_jobs=None,
                    verbose=0):
    """Deletion (or insertion) curves of heatmaps on the alignment objective and on class logits.

    For every heatmap source, every fraction ``x`` and every tested image
    ``t``: remove the top ``x`` of the pixels of ``t`` by its heatmap (ties
    in random order), run the perturbed image through the network, and
    record the row 2OI ``corr_j(sim(e_t^{(x)}, e_j), H[t, j])`` over the
    other images ``j`` (intact), and the logit of ``t``'s class. Insertion
    removes every pixel but the top ``x``. All perturbed images go through the
    network in batches of ``batch_size``, on the transformer's device (a GPU
    when there is one), under one progress bar; an image with nothing
    removed is not run again (its maps are the intact ones, bit for bit).

    Parameters
    ----------
    transformer : DNNFeatureMapTransformer
        Fitted; its network, layer, head, preprocessing and device are used.
    images : images
        Any input of the transformer's ``transform``; heatmaps and removal are
        on the original images.
    heatmaps : dict of str to array-like of shape (n_images, H, W), or one such array
        One map per image and source, at each original image's size (lists
        for images of different sizes); larger = more important.
    y : array-like of shape (n_images, n_images), optional
        Human similarity matrix (NaN = missing pair); required for the
        alignment objective.
    mode : {"deletion", "insertion"}, default="deletion"
    fractions : array-like of float, default=(0, 0.1, ..., 1)
        Increasing fractions of the pixels in ``region``.
    removal : {"road", "blur", "constant"}, default="road"
        See :mod:`sklearn_ais._removal`.
    objective : str or tuple of str, default=("alignment", "logits")
    images_tested : array-like of int, optional
        Images to perturb (default: all); the others stay intact.
    region : "visible", None or list of bool arrays, default="visible"
        Pixels that take part: ``"visible"``, those inside the network's
        crop (pixels it never sees are never removed, and ``x`` is a
        fraction of the visible ones); ``None``, every pixel.
    keep : array-like of bool of shape (n_maps,), array of int, or fitted selector, optional
        Maps of the embedding (a boolean mask, map indices or a selector's
        ``support_``; the others are set to 0); default all.
    similarity : {"pearson", "cosine"}, default="pearson"
    comparison : str, default="spearman"
    y_kind : {"similarity", "dissimilarity"}, default="similarity"
    target : None, int or array-like of int, optional
        Class of each image for the logits; default the intact image's top-1.
    noise, sigma, fill : float
        Parameters of the removal (ROAD's noise on the [0, 1] pixel scale,
        the blur's sigma in pixels, the constant's value).
    random_state : int, default=0
        Seeds tie-breaking and ROAD's noise (each image, step and source its
        own stream, whatever the batching).
    batch_size : int, default=32
    device : str, optional
        Default: the transformer's.
    n_jobs : int or None, default=None
        Parallel pixel removals (ROAD's sparse solves run on the CPU) through
        joblib, within each batch; the results do not depend on it.
    verbose : int, default=0
        A progress bar over all perturbed images when > 0.

    Returns
    -------
    curves : DeletionCurves
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if removal not in REMOVALS:
        raise ValueError(f"removal must be one of {REMOVALS}, got {removal!r}")
    objectives = (objective,) if isinstance(objective, str) else tuple(objective)
    if not objectives or any(o not in OBJECTIVES for o in objectives):
        raise ValueError(f"objective must be a subset of {OBJECTIVES}, got {objective!r}")
    if similarity not in SIMILARITIES or comparison not in COMPARISONS or y_kind not in Y_KINDS:
        raise ValueError(f"similarity, comparison, y_kind must be in {SIMILARITIES}, {COMPARISONS}, {Y_KINDS}")
    if not is_count(batch_size):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    f = _check_fractions(fractions)
    source = as_image_source(images)
    n = len(source)
    originals = [np.asarray(source[i]) for i in range(n)]
    shapes = [o.shape[:2] for o in originals]
    maps = _check_heatmaps(heatmaps, shapes)
    tested = np.arange(n) if images_tested is None else np.unique(np.asarray(images_tested))
    if not np.issubdtype(tested.dtype, np.integer) or len(tested) == 0 or tested.min() < 0 or tested.max() >= n:
        raise ValueError(f"images_tested must be indices in [0, {n}), got {images_tested!r}")
    want_alignment = "alignment" in objectives
    H = None
    if want_alignment:
        if y is None:
            raise ValueError("the alignment objective needs y, the human similarity matrix")
        H = check_similarity_target(y, n, y_kind)
    extractor = _Extractor(transformer, keep, "logits" in objectives, device)
    with device_lease(extractor.backbone.model, extractor.device):
        E0, L0, geometry, pixels = _batched(extractor, originals, batch_size)
        if region == "visible":
            regions = _visible_region(geometry, [p.shape[1:] for p in pixels], shapes)
        elif region is None:
            regions = [np.ones(s, bool) for s in shapes]
        else:
            if len(region) != n:
                raise ValueError(f"region must hold one boolean (H, W) mask per image, got {len(region)} for {n}")
            regions = [check_mask(r, s, f"region[{i}]") for i, (r, s) in enumerate(zip(region, shapes))]
        targets = None
        if L0 is not None:
            targets = L0.argmax(axis=1) if target is None else np.broadcast_to(np.asarray(target), (n,)).astype(int)
            if (targets < 0).any() or (targets >= L0.shape[1]).any():
                raise ValueError(f"target must be class indices in [0, {L0.shape[1]}), got {target!r}")
        seeds = np.random.SeedSequence(random_state if isinstance(random_state, numbers.Integral) else None)
        names = list(maps)
        jobs = []  # (source, step, image)
        for s_i, _ in enumerate(names):
            for k in range(len(f)):
                jobs.extend((s_i, k, int(t)) for t in tested)
        children = seeds.spawn(len(names) * len(tested) + len(jobs))
        orders = {}
        for s_i, name in enumerate(names):
            for j, t in enumerate(tested):
                orders[s_i, t] = removal_order(maps[name][t], regions[t], np.random.default_rng(
                    children[s_i * len(tested) + j]).integers(2**31))
        offset = len(names) * len(tested)
        E = np.empty((len(jobs), E0.shape[1]))
        L = np.empty((len(jobs), L0.shape[1])) if L0 is not None else None
        bar = tqdm(total=len(jobs), disable=not verbose, desc=f"{mode} ({len(names)} sources)", unit="image")
        pending = []

        def flush():
            if not pending:
                return
            images = parallel_map(_perturbed, [task for _, task in pending], n_jobs=n_jobs)
            e, lg, _, _ = extractor(images)
            rows = [j for j, _ in pending]
            E[rows] = e
            if L is not None:
                L[rows] = lg
            bar.update(len(pending))
            pending.clear()

        for j, (s_i, k, t) in enumerate(jobs):
            order = orders[s_i, t]
            n_top = int(np.floor(f[k] * len(order) + 0.5 + 1e-9))
            removed = np.zeros(shapes[t], dtype=bool)
            if mode == "deletion":
                removed.ravel()[order[:n_top]] = True
            else:
                removed.ravel()[order[n_top:]] = True
            if not removed.any():
                E[j] = E0[t]
                if L is not None:
                    L[j] = L0[t]
                bar.update(1)
                continue
            seed = np.random.default_rng(children[offset + j]).integers(2**31)
            pending.append((j, (originals[t], removed, removal, noise, sigma, fill, seed)))
            if len(pending) == batch_size:
                flush()
        flush()
        bar.close()

    shape = (len(names), len(f), len(tested))
    E = E.reshape(*shape, -1)
    alignment = matrix = logits = None
    if want_alignment:
        alignment, matrix = _alignment_curves(E, E0, H, tested, similarity, comparison)
        alignment = {name: alignment[s_i] for s_i, name in enumerate(names)}
        matrix = {name: matrix[s_i] for s_i, name in enumerate(names)}
    if L is not None:
        L = L.reshape(*shape, -1)
        logits = {name: L[s_i][:, np.arange(len(tested)), targets[tested]].T for s_i, name in enumerate(names)}
    return DeletionCurves(f, mode, names, tested, alignment, matrix, logits,
                          None if targets is None else targets[tested], comparison)


def _perturbed(image, removed, removal, noise, sigma, fill, seed):
    """One uint8 image with ``removed`` pixels removed (a module-level function: joblib sends it to workers)."""
    return _as_uint8(remove_pixels(image / 255.0, removed, removal, noise=noise, sigma=sigma, fill=fill,
                                   random_state=seed))


def _batched(extractor, images, batch_size):
    E, L, G, P = [], [], [], []
    for start in range(0, len(images), batch_size):
        e, lg, g, p = extractor(images[start:start + batch_size])
        E.append(e)
        L.append(lg)
        G.append(g)
        P.extend(list(p))
    return np.concatenate(E), (np.concatenate(L) if L[0] is not None else None), np.concatenate(G), P


def _alignment_curves(E, E0, H, tested, similarity, comparison):
    """Row 2OI (n_sources, n_tested, n_steps) and matrix 2OI (n_sources, n_steps)."""
    n_sources, n_steps, n_tested, _ = E.shape
    Z0 = _standardized(E0, similarity)
    Zp = _standardized(E, similarity)
    rows = np.full((n_sources, n_tested, n_steps), np.nan)
    n = len(E0)
    for j, t in enumerate(tested):
        others = np.flatnonzero(np.arange(n) != t)
        target = H[t, others]
        observed = ~np.isnan(target)
        if observed.sum() < 3 or target_is_constant(target[observed]):  # the one constant rule
            continue  # undefined row: NaN
        cand = Zp[:, :, j] @ Z0[others].T  # (n_sources, n_steps, n - 1)
        rows[:, j] = batched_correlation(cand.reshape(-1, len(others)), target, comparison).reshape(n_sources, n_steps)
    matrix = np.empty((n_sources, n_steps))
    h = upper_triangle(H)
    for s in range(n_sources):
        for k in range(n_steps):
            Z = Z0.copy()
            Z[tested] = Zp[s, k]
            matrix[s, k] = correlation(upper_triangle(Z @ Z.T), h, comparison)
    return rows, matrix


def _split_once(cv, n, random_state):
    cv = check_image_cv(cv, random_state)
    if getattr(cv, "splits_pairs", False):
        raise ValueError("deletion_test needs folds over images (each heatmap must not see its image's human row)")
    splits = list(cv.split(np.zeros((n, 1))))
    count = np.zeros(n, dtype=int)
    for _, test in splits:
        count[test] += 1
    if not (count == 1).all():
        raise ValueError("cv must put every image in exactly one test fold (e.g. KFold), for one heatmap per image")
    return splits


def deletion_test(transformer, images, y, *, methods=("ais",) + CONTROLS, heatmaps=None, cv=5, reference="ais",
                  heatmapper=None, test="wilcoxon", mode="deletion", objective=("alignment", "logits"),
                  attention_batch_size=16, random_state=0, verbose=0, **curve_params):
    """Held-out deletion (or insertion) test of AIS heatmaps against controls and other heatmap sources.

    AIS heatmaps are cross-fitted: for each fold of images, an
    :class:`~sklearn_ais.AISHeatmapper` is fitted on the training images'
    maps and human matrix, and draws the test images (weighted by the global
    AIS, as any image it was not fitted on), so that no heatmap has seen its
    own image's human row; the row 2OI of each perturbed image then uses only
    human pairs its heatmap never saw. Controls: ``"inverted"`` (``1 -`` the
    AIS map), ``"random"`` (smooth random maps,
    :func:`~sklearn_ais._removal.random_maps`; the same area at every step),
    ``"center_bias"`` (a centred Gaussian). ``"gradcam"``,
    ``"guided_backprop"``, ``"gradient"`` and ``"scorecam"`` are drawn by
    :func:`sklearn_ais.attention.attention_maps` (they use no human data).

    Parameters
    ----------
    transformer : DNNFeatureMapTransformer
        Fitted.
    images : images
    y : array-like of shape (n_images, n_images)
        Human similarity matrix.
    methods : sequence of str, default=("ais", "inverted", "random", "center_bias")
        Sources to test, from ``"ais"``, the controls and the attention methods.
    heatmaps : dict of str to array-like, optional
        More sources, precomputed on the original images.
    cv : int or splitter, default=5
        Folds over images for the AIS heatmaps (each image in one test fold).
    reference : str, default="ais"
        The source every other is tested against.
    heatmapper : AISHeatmapper, optional
        Its parameters are used (``output`` is set to ``"original"``).
    test : {"wilcoxon", "paired_t", "permutation"}, default="wilcoxon"
    mode : {"deletion", "insertion"}, default="deletion"
    objective : str or tuple of str, default=("alignment", "logits")
    attention_batch_size : int, default=16
    random_state : int, default=0
    verbose : int, default=0
    **curve_params
        Passed to :func:`deletion_curves` (``fractions``, ``removal``,
        ``keep``, ``similarity``, ``comparison``, ``batch_size``, ...).

    Returns
    -------
    curves : DeletionCurves
        Its ``compare(reference)`` gives the table.
    table : DataFrame
        ``curves.compare(reference, objective)`` for the first objective.
    """
    methods = tuple(methods)
    known = ("ais",) + CONTROLS + ATTENTION_METHODS
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {known} (or pass heatmaps=)")
    source = as_image_source(images)
    n = len(source)
    originals = [np.asarray(source[i]) for i in range(n)]
    shapes = [o.shape[:2] for o in originals]
    H = check_similarity_target(y, n, curve_params.pop("y_kind", "similarity"))  # a similarity from here on
    sources = {}
    needs_ais = any(m in ("ais", "inverted") for m in methods)
    if needs_ais:
        X = transformer.transform(originals)
        params = {} if heatmapper is None else heatmapper.get_params()
        params.update(output="original", y_kind="similarity")
        ais = [None] * n
        for train, test_idx in _split_once(cv, n, random_state):
            hm = AISHeatmapper(**params).fit(X[train], H[np.ix_(train, train)])
            drawn = hm.transform(X[test_idx])
            for i, m in zip(test_idx, drawn):
                ais[i] = np.asarray(m, dtype=np.float64)
    rng = check_random_state(random_state)
    for m in methods:
        if m == "ais":
            sources[m] = ais
        elif m == "inverted":
            sources[m] = [1.0 - a for a in ais]
        elif m == "random":
            sources[m] = [random_maps(1, s, random_state=rng)[0] for s in shapes]
        elif m == "center_bias":
            sources[m] = [center_bias_maps(1, s)[0] for s in shapes]
        else:
            drawn = attention_maps(transformer, originals, method=m, batch_size=attention_batch_size)
            sources[m] = [np.asarray(d, dtype=np.float64) for d in drawn]
    for name, maps in (heatmaps or {}).items():
        if name in sources:
            raise ValueError(f"heatmaps[{name!r}] has the name of a method; rename it")
        sources[name] = maps
    curves = deletion_curves(transformer, originals, sources, H, mode=mode, objective=objective,
                             random_state=random_state, verbose=verbose, **curve_params)
    first = objective if isinstance(objective, str) else tuple(objective)[0]
    ref = reference if reference in curves.sources else curves.sources[0]
    return curves, curves.compare(ref, first, test=test)
