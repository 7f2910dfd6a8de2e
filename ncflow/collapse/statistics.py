"""Streaming neural-collapse statistics: features arrive batch by batch, memory does not grow with N.

`CollapseStatistics` is the one implementation of ncflow's collapse metrics (`ncflow.collapse.metrics` feeds it the
rows of an in-memory feature matrix; the library's monitor feeds it a model's batches). It keeps float64 sufficient
statistics — O(K·d) for the class means and the classifier, plus O(K²) for the classifier's pairwise spread when
K ≤ `PAIRWISE_FLATNESS_MAX_CLASSES` — and reads the same samples twice (or once, with `passes=1`):

- **pass 1** (`update`): per class the count n_c, the mean μ_c and M2_c = Σ_{i∈c} ‖h_i − μ_c‖², each chunk's class
  means and spreads merged into the running ones with Chan et al.'s pairwise update (so no E‖x‖² − ‖Ex‖² is ever
  formed).
- **pass 2** (`update` again, after `start_second_pass`): what needs the *final* class means — NC4 (the classifier's
  decision against the nearest class mean) and Papyan's NC1, Tr(Σ_W Σ_B⁺)/K, as (1/N) Σ_i ‖Pᵀ(h_i − μ_{y_i})‖²
  with P = U diag(1/s) from the SVD of the centred means (ncflow.collapse.metrics' docstring). NC4 is exact
  because it uses this evaluation's own means; a second forward pass over the data is its price.
- in the last pass: Σ‖h_i‖ (fn) and the classifier's terms — Σ‖h_i‖² Var_{p_i}(w) (flatness, Petzka's exact κ_Tr of
  the last layer), ‖W‖²_F Σ‖h_i‖² Σ_k p_ik(1 − p_ik) (`flatness_bound`, the closed-form upper bound Han et al.
  regularise), the correct predictions and the cross-entropy of the logits W h + b — from the same product of the
  features with W as NC4's.

With `passes=1`, `compute` leaves `nc4` and `nc1_pinv` out (no value from stale means is ever reported under their
names).

Why not keep the pooled within-class scatter (d×d) for Papyan's NC1 in pass 1? Its update costs B·d² per batch,
which for d = 512 and K = 10 is fifty times the rest of the pass; pass 2 does it in B·d·K.

Every row is shifted by the first sample seen before it is summed: constant features then have exactly zero spread
(their NC1 is nan, not noise), and a common offset cancels before summation. No host synchronisation happens per
batch: labels outside [0, K) and non-finite features are counted on the device and raised by `compute` (naming the
first bad batch), and the batch's own accumulators are all device tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ncflow.collapse.class_pairs import class_pair_terms, pair_angles

PAIRWISE_FLATNESS_MAX_CLASSES = 4096  # up to here flatness uses the K×K spread of W (128 MiB at the limit)
_ONE_HOT_MAX_CLASSES = 256  # up to here x_i − μ_{y_i} is a one-hot product (one pass over x); beyond, a gather
_ROW_ELEMENTS = 1 << 18  # rows of a batch are handled in chunks of about this many float64 per row buffer
_PINV_RCOND = 1e-15  # Σ_B⁺ keeps eigenvalues above this × the largest: np.linalg.pinv's default, as in Papyan's code


class NonFiniteFeaturesError(ValueError):
    """The features, weight or bias hold NaN or inf — a diverged model; a training loop catches this to record
    divergence."""


class CollapseStatistics:
    """Sufficient statistics of (features, labels) for every collapse metric, fed batch by batch.

    Usage: `update(h, y)` for every batch, then `start_second_pass()` and `update(h, y)` for the same samples
    again (any batching, any order), then `compute()`; with `passes=1`, `update` then `compute`. Without a
    classifier (`weight` None) the metrics of the features alone are computed (no nc3, nc4 or flatness).
    """

    def __init__(
        self,
        num_classes: int,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        minority_classes: Sequence[int] | None = None,
        passes: int = 2,
    ) -> None:
        if passes not in (1, 2):
            raise ValueError(f"passes: expected 1 or 2, got {passes!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes: need at least 2 classes, got {num_classes}")
        _check_classifier(weight, bias, num_classes)
        if minority_classes is not None and len(minority_classes) < 2:
            raise ValueError(f"minority_classes: need at least two classes, got {list(minority_classes)}")
        self.num_classes = num_classes
        self.passes = passes
        self.minority_classes = None if minority_classes is None else list(minority_classes)
        self._weight_input = weight
        self._bias_input = bias
        self.second_pass = False
        self._ready = False

    # ---- feeding ----------------------------------------------------------------------------------------------

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch: `features` B×d (any floating dtype, any device), `labels` B integers in [0, K)."""
        _check_batch(features, labels)
        if features.shape[0] == 0:
            return
        if not self._ready:
            self._allocate(features)
        if features.shape[1] != self.dim:
            raise ValueError(f"features: expected d={self.dim} columns, got {features.shape[1]}")
        labels = labels.to(device=self.device, dtype=torch.int64)
        self._note_bad_labels(labels)
        labels = labels.clamp(0, self.num_classes - 1)  # an out-of-range label is raised by compute()
        for rows in _row_chunks(features.shape[0], max(self.dim, 2 * self.num_classes)):
            shifted = features[rows].to(device=self.device, dtype=torch.float64, copy=True)  # overwritten below
            norms = torch.linalg.vector_norm(shifted, dim=1) if self._last_pass else None
            shifted -= self.shift
            if self.second_pass:
                self._second_pass_chunk(shifted, norms, labels[rows])
            else:
                self._first_pass_chunk(shifted, norms, labels[rows])
        self._batch_index += 1

    def start_second_pass(self) -> None:
        """Fix the class means; the next `update` calls are the second pass over the same samples."""
        if not self._ready:
            raise ValueError("start_second_pass: no samples were given in the first pass")
        if self.second_pass or self.passes == 1:
            raise ValueError("start_second_pass: the second pass has already started" if self.second_pass
                             else "start_second_pass: these statistics were made with passes=1")
        self._raise_bad_input()
        self._require_every_class()
        self.second_pass = True
        self._batch_index = torch.zeros((), dtype=torch.int64, device=self.device)
        self._final = _FinalMeans.of(self.counts, self.shifted_means)
        self._whitener = _between_class_whitener(self._final.centred)
        if self.weight is not None:
            self._projection, self._offset = self._decision_scores()
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._whitened_within, self._mismatches = zero.clone(), zero.clone()
        self._second_counts = torch.zeros_like(self.counts)

    # ---- results ----------------------------------------------------------------------------------------------

    def compute(self) -> dict[str, float]:
        """Every metric the passes so far allow, as floats (one host transfer); see ncflow.collapse.metrics.

        Raises:
            ValueError: a label outside [0, K), a class with no sample, or a second pass that saw other samples.
            NonFiniteFeaturesError: a batch with NaN or inf features (the message names the first such batch).
        """
        self._require_last_pass()
        final = self._final if self.second_pass else _FinalMeans.of(self.counts, self.shifted_means)
        values = self._feature_values(final)
        if self.weight is not None:
            values.update(self._classifier_values(final))
        if self.second_pass:
            if not torch.equal(self._second_counts, self.counts):
                raise ValueError("second pass: it saw different samples than the first (class counts differ)")
            values["nc1_pinv"] = self._whitened_within / self.total
            if self.weight is not None:
                values["nc4"] = self._mismatches / self.total
        if self.minority_classes is not None:
            values.update(_minority_collapse(self.weight, final.centred, self.minority_classes))
        no_spread = (final.centred * final.centred).sum() == 0
        nan = torch.full((), float("nan"), dtype=torch.float64, device=self.device)
        names = list(values)
        guarded = [torch.where(no_spread, nan, values[name]) if name in _UNDEFINED_WITHOUT_SPREAD else values[name]
                   for name in names]
        return dict(zip(names, torch.stack(guarded).tolist()))

    def predictions(self) -> dict[str, float]:
        """The classifier's `accuracy` and mean cross-entropy `loss` on the first pass's samples."""
        self._require_last_pass()
        if self.weight is None:
            raise ValueError("predictions: no classifier was given")
        values = torch.stack([self._correct, self._cross_entropy]) / self.total
        accuracy, loss = values.tolist()
        return {"accuracy": accuracy, "loss": loss}

    def class_nc1(self) -> list[float]:
        """Per-class NC1_c = V_c / Tr(Σ_B), V_c = M2_c / n_c, so that NC1 = Σ_c (n_c/N) NC1_c."""
        self._require_first_pass()
        centred = _FinalMeans.of(self.counts, self.shifted_means).centred
        between_trace = (centred * centred).sum() / self.num_classes
        return (self.within_by_class / self.counts / between_trace).tolist()

    def class_mean_angles(self) -> list[float]:
        """The K(K−1)/2 angles between the centred class means in degrees (pairs i < j; only for moderate K)."""
        self._require_first_pass()
        return pair_angles(_FinalMeans.of(self.counts, self.shifted_means).centred).tolist()

    @property
    def class_means(self) -> torch.Tensor:
        """μ_c (K×d, float64) from the samples seen in the first pass."""
        self._require_first_pass()
        return self.shifted_means + self.shift

    # ---- internals --------------------------------------------------------------------------------------------

    def _allocate(self, features: torch.Tensor) -> None:
        self.device, self.dim = features.device, features.shape[1]
        k, device = self.num_classes, self.device
        if self._weight_input is not None and self._weight_input.shape[1] != self.dim:
            raise ValueError(f"weight has {self._weight_input.shape[1]} columns but features have d={self.dim}")
        self.weight = None if self._weight_input is None else self._weight_input.detach().to(device, torch.float64)
        self.bias = None if self._bias_input is None else self._bias_input.detach().to(device, torch.float64)
        self.shift = features[0].detach().to(device=device, dtype=torch.float64)
        self.counts = torch.zeros(k, dtype=torch.float64, device=device)
        self.shifted_means = torch.zeros(k, self.dim, dtype=torch.float64, device=device)
        self.within_by_class = torch.zeros(k, dtype=torch.float64, device=device)
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.norm_sum, self._flatness, self._flatness_bound, self._correct, self._cross_entropy = (
            zero.clone() for _ in range(5))
        self._first_bad_label = torch.full((), -1, dtype=torch.int64, device=device)  # batch index, or -1
        self._bad_label_value = torch.zeros((), dtype=torch.int64, device=device)
        self._first_non_finite = torch.full((), -1, dtype=torch.int64, device=device)
        self._batch_index = torch.zeros((), dtype=torch.int64, device=device)  # counted on the device: no sync
        if self.weight is not None:
            self._logit_offset = self.weight @ self.shift + (self.bias if self.bias is not None else 0.0)
            if k <= PAIRWISE_FLATNESS_MAX_CLASSES:
                self._half_spread = 0.5 * torch.cdist(self.weight, self.weight,
                                                      compute_mode="donot_use_mm_for_euclid_dist").square()
            else:
                self._half_spread = None
                self._weight_sq_norms = (self.weight * self.weight).sum(1)
        self._ready = True

    def _note_bad_labels(self, labels: torch.Tensor) -> None:
        """Remember, on the device, the first batch with a label outside [0, K) and that label."""
        batch = self._batch_index
        out_of_range = (labels < 0) | (labels >= self.num_classes)
        first_bad = torch.where(out_of_range.any() & (self._first_bad_label < 0), batch, self._first_bad_label)
        offending = labels.gather(0, out_of_range.to(torch.int64).argmax().reshape(1))[0]
        self._bad_label_value = torch.where(first_bad != self._first_bad_label, offending, self._bad_label_value)
        self._first_bad_label = first_bad

    def _first_pass_chunk(self, x: torch.Tensor, norms: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Chan et al.'s merge of the chunk's per-class (count, mean, M2) into the running ones. `x` holds the
        chunk's rows minus the shift (it is overwritten), `norms` the rows' own norms when this is the last pass."""
        chunk_counts = self._class_counts(labels)
        chunk_means = torch.zeros_like(self.shifted_means).index_add_(0, labels, x) / chunk_counts.clamp_min(1.0)[:, None]
        if norms is not None:
            self._last_pass_terms(x, norms, labels)
        deviations = self._subtract_class_rows(x, labels, chunk_means)
        squared_deviations = torch.linalg.vector_norm(deviations, dim=1).square()
        unseen = ~torch.isfinite(squared_deviations.sum()) & (self._first_non_finite < 0)  # a NaN or inf feature
        self._first_non_finite = torch.where(unseen, self._batch_index, self._first_non_finite)
        chunk_m2 = torch.zeros_like(self.within_by_class).index_add_(0, labels, squared_deviations)
        total = self.counts + chunk_counts
        delta = chunk_means - self.shifted_means
        share = torch.where(chunk_counts > 0, chunk_counts / total.clamp_min(1.0), 0.0)
        self.shifted_means += delta * share[:, None]
        self.within_by_class += chunk_m2 + (delta * delta).sum(1) * self.counts * share
        self.counts = total

    def _second_pass_chunk(self, x: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> None:
        """NC4's mismatches and Papyan's NC1 against the final means; the last pass's terms. `x` is overwritten."""
        self._second_counts += self._class_counts(labels)
        self._last_pass_terms(x, norms, labels)
        deviations = self._subtract_class_rows(x, labels, self.shifted_means)
        self._whitened_within += (deviations @ self._whitener).square().sum()

    def _class_counts(self, labels: torch.Tensor) -> torch.Tensor:
        """Samples per class as float64 (an index_add: torch.bincount syncs with the host on CUDA)."""
        ones = torch.ones(len(labels), dtype=torch.float64, device=labels.device)
        return torch.zeros(self.num_classes, dtype=torch.float64, device=labels.device).index_add_(0, labels, ones)

    def _subtract_class_rows(self, x: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """x_i − rows_{y_i}, in place: a one-hot product for few classes (one pass over x), a gather for many."""
        if self.num_classes <= _ONE_HOT_MAX_CLASSES:
            membership = torch.zeros(len(labels), self.num_classes, dtype=torch.float64, device=x.device)
            membership.scatter_(1, labels[:, None], 1.0)  # (F.one_hot would check the labels' range: a host sync)
            return x.addmm_(membership, rows, alpha=-1.0)
        return x.sub_(rows.index_select(0, labels))

    @property
    def _last_pass(self) -> bool:
        return self.second_pass or self.passes == 1

    def _last_pass_terms(self, x: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> None:
        """fn's sum; with a classifier its terms from one product of the chunk with W (and, in a second pass, with
        the centred means for NC4)."""
        self.norm_sum += norms.sum()
        if self.weight is None:
            return
        if self.second_pass:
            scores = torch.addmm(self._offset, x, self._projection)
            logits, nearest = scores[:, :self.num_classes], scores[:, self.num_classes:]
            predicted = self._classifier_terms(logits, norms, labels)
            self._mismatches += (predicted != nearest.argmax(1)).sum()
        else:
            self._classifier_terms(torch.addmm(self._logit_offset, x, self.weight.T), norms, labels)

    def _classifier_terms(self, logits: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Add the chunk's flatness, correct predictions and cross-entropy; return its predicted classes."""
        predicted = logits.argmax(1)
        log_normaliser = torch.logsumexp(logits, dim=1, keepdim=True)
        probabilities = torch.exp(logits - log_normaliser)
        squared_norms = norms.square()
        self._flatness += (squared_norms * self._weight_variance(probabilities, predicted)).sum()
        self._flatness_bound += (squared_norms * (probabilities * (1.0 - probabilities)).sum(1)).sum()
        self._correct += (predicted == labels).sum()
        self._cross_entropy += (log_normaliser[:, 0] - logits.gather(1, labels[:, None])[:, 0]).sum()
        return predicted

    def _weight_variance(self, probabilities: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Var_{p_i}(w) = Σ_j p_ij ‖w_j‖² − ‖Σ_j p_ij w_j‖², p_i = softmax(logits_i), in a form that stays accurate
        when p_i is nearly one-hot.

        Up to PAIRWISE_FLATNESS_MAX_CLASSES: ½ Σ_{j,k} p_ij p_ik ‖w_j − w_k‖² (non-negative terms). Beyond, centred
        on the predicted class k_i: Σ_j p_ij ‖w_j − w_{k_i}‖² − ‖Σ_j p_ij w_j − w_{k_i}‖², with the distances to
        w_{k_i} from one B×K product (B·K·d instead of the pairwise form's B·K²).
        """
        if self._half_spread is not None:
            return ((probabilities @ self._half_spread) * probabilities).sum(1)
        anchors = self.weight.index_select(0, predicted)
        distances = (self._weight_sq_norms[None, :] + self._weight_sq_norms[predicted, None]
                     - 2.0 * anchors @ self.weight.T).clamp_min_(0.0)
        distances.scatter_(1, predicted[:, None], 0.0)
        mean_offset = probabilities @ self.weight - anchors
        return (probabilities * distances).sum(1) - (mean_offset * mean_offset).sum(1)

    def _decision_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, a) such that x̃ A + a holds the logits (first K columns) and nearest-mean scores (last K) of x̃ = h − shift.

        argmin_c ‖h − μ_c‖² = argmax_c x̃·m_c − (μ̃_G·m_c + ‖m_c‖²/2), with μ̃ = μ − shift and m_c = μ_c − μ_G.
        """
        centred = self._final.centred
        nearest_offset = -(centred @ self._final.shifted_global) - 0.5 * (centred * centred).sum(1)
        return torch.cat([self.weight, centred]).T.contiguous(), torch.cat([self._logit_offset, nearest_offset])

    def _feature_values(self, final: _FinalMeans) -> dict[str, torch.Tensor]:
        centred = final.centred
        between_trace = (centred * centred).sum() / self.num_classes
        norms = centred.norm(dim=1)
        pairs = class_pair_terms(centred, self.within_by_class / self.counts)
        return {
            "nc1": self.within_by_class.sum() / self.total / between_trace,
            "nc2": pairs.nc2,
            "nc2_equinorm": norms.std(correction=0) / norms.mean(),
            "fn": self.norm_sum / self.total,
            "ncc": pairs.ncc,
            "angle_mean_deg": pairs.angle_mean_deg,
            "angle_std_deg": pairs.angle_std_deg,
        }

    def _classifier_values(self, final: _FinalMeans) -> dict[str, torch.Tensor]:
        cosines = (self.weight * final.centred).sum(1) / (self.weight.norm(dim=1) * final.centred.norm(dim=1))
        return {"nc3": 1.0 - cosines.mean(), "flatness": self._flatness / self.total,
                "flatness_bound": (self.weight * self.weight).sum() * self._flatness_bound / self.total}

    @property
    def total(self) -> torch.Tensor:
        return self.counts.sum()

    def _require_last_pass(self) -> None:
        self._require_first_pass()
        if self.passes == 2 and not self.second_pass:
            raise ValueError("compute: the second pass has not been made (call start_second_pass and feed the "
                             "samples again, or make the statistics with passes=1)")

    def _require_first_pass(self) -> None:
        if not self._ready:
            raise ValueError("compute: no samples were given")
        self._raise_bad_input()
        self._require_every_class()

    def _raise_bad_input(self) -> None:
        bad_label, value, non_finite = torch.stack(
            [self._first_bad_label, self._bad_label_value, self._first_non_finite]).tolist()
        if bad_label >= 0:
            raise ValueError(f"labels must lie in range({self.num_classes}); batch {bad_label} has label {value}")
        if non_finite >= 0:
            raise NonFiniteFeaturesError(f"features contain non-finite values (NaN or inf), first in batch {non_finite}")

    def _require_every_class(self) -> None:
        empty = (self.counts == 0).nonzero().flatten().tolist()
        if empty:
            shown = empty if len(empty) <= 10 else [*empty[:10], "..."]
            raise ValueError(f"class {empty[0]} has no samples (empty classes: {shown}); K={self.num_classes}")


class _FinalMeans:
    """The class means of a finished first pass: shifted global mean and centred means m_c = μ_c − μ_G."""

    def __init__(self, shifted_global: torch.Tensor, centred: torch.Tensor) -> None:
        self.shifted_global, self.centred = shifted_global, centred

    @classmethod
    def of(cls, counts: torch.Tensor, shifted_means: torch.Tensor) -> _FinalMeans:
        shifted_global = (counts[:, None] * shifted_means).sum(0) / counts.sum()
        return cls(shifted_global, shifted_means - shifted_global)


_UNDEFINED_WITHOUT_SPREAD = frozenset({"nc1", "nc1_pinv", "nc2", "nc2_equinorm", "nc3", "ncc", "angle_mean_deg",
                                       "angle_std_deg", "minority_mean_collapse"})  # nan if Tr Σ_B = 0


def _check_classifier(weight: torch.Tensor | None, bias: torch.Tensor | None, num_classes: int) -> None:
    """W is K×d and finite; b, when given, has K finite entries."""
    if weight is None:
        if bias is not None:
            raise ValueError("bias: given without a weight")
        return
    if weight.ndim != 2 or weight.shape[0] != num_classes:
        raise ValueError(f"weight: expected a {num_classes}×d matrix (K={num_classes}), got shape {tuple(weight.shape)}")
    if bias is not None and bias.shape != (num_classes,):
        raise ValueError(f"bias: expected shape ({num_classes},), got {tuple(bias.shape)}")
    if not bool(torch.isfinite(weight).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
        raise NonFiniteFeaturesError("weight or bias contains non-finite values (NaN or inf)")


def _check_batch(features: torch.Tensor, labels: torch.Tensor) -> None:
    """A floating B×d matrix and B integer labels (shapes and dtypes only: no values are read)."""
    if features.ndim != 2 or not features.is_floating_point():
        raise ValueError(f"features: expected a floating N×d matrix, got {features.dtype} {tuple(features.shape)}")
    if labels.shape != (features.shape[0],):
        raise ValueError(f"labels: expected shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")


def _row_chunks(num_rows: int, row_width: int) -> list[slice]:
    """Row slices of about _ROW_ELEMENTS elements of the widest per-row buffer (at least 256 rows, so the products
    stay efficient when K or d is large)."""
    rows = max(256, _ROW_ELEMENTS // max(1, row_width))
    return [slice(start, min(start + rows, num_rows)) for start in range(0, num_rows, rows)]


def _between_class_whitener(centred_means: torch.Tensor) -> torch.Tensor:
    """P = U diag(1/s) (d×r) from the thin SVD of the centred means (ncflow.collapse.metrics' docstring)."""
    _, singular_values, right_vectors = torch.linalg.svd(centred_means, full_matrices=False)
    eigenvalues = singular_values.square()
    kept = eigenvalues > _PINV_RCOND * eigenvalues.max()
    return right_vectors[kept].T / singular_values[kept]


def _minority_collapse(weight: torch.Tensor | None, centred_means: torch.Tensor,
                       minority_classes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Minority collapse (Fang et al. 2021): the mean pairwise cosine, pairs i < j of the minority classes, of
    their classifier rows (`minority_collapse`) and of their centred class means (`minority_mean_collapse`).
    1 when the minority classes' rows (means) point the same way; −1/(K−1) for a simplex ETF."""
    index = torch.as_tensor(list(minority_classes), device=centred_means.device)
    values = {"minority_mean_collapse": _mean_pair_cosine(centred_means[index])}
    if weight is not None:
        values["minority_collapse"] = _mean_pair_cosine(weight[index])
    return values


def _mean_pair_cosine(rows: torch.Tensor) -> torch.Tensor:
    """Mean of cos(r_i, r_j) over the pairs i < j of `rows`."""
    unit = rows / rows.norm(dim=1, keepdim=True)
    upper = torch.triu_indices(rows.shape[0], rows.shape[0], offset=1, device=rows.device)
    return (unit @ unit.T)[upper[0], upper[1]].mean()
