"""Incremental PCA in torch (Ross et al., 2008, "Incremental Learning for Robust Visual Tracking"; the algorithm of
scikit-learn's ``IncrementalPCA``), the streaming SVD that EVA runs on layer inputs batch by batch.

After batches ``X_1 .. X_t`` (each ``(n_i, d)``) the state is the running column mean ``mu (d,)`` and variance
``var (d,)`` (float64, Chan et al.'s pairwise update), and the top ``k`` right singular vectors ``V_k (k, d)`` with
singular values ``s_k`` of the centred data seen so far. A new batch ``X`` is folded in by the SVD of

    [ diag(s_k) V_k ;  X - mean(X) ;  sqrt(n_seen n / n_total) (mu_old - mean(X)) ]

(the first batch: ``X - mu``), optionally by ``torch.svd_lowrank`` with ``q`` columns, ``niter`` subspace iterations
and a fixed seed so that the result is reproducible (the global random state is left untouched). Signs are fixed
so that each component's entry of largest magnitude is positive.
"""

from __future__ import annotations

import torch

from peftkit.errors import UsageError


class IncrementalPCA:
    """Streaming PCA of row vectors (PEFT's ``peft.utils.incremental_pca.IncrementalPCA`` for EVA's use).

    Attributes:
        components_: ``(k, d)`` principal directions, largest first.
        singular_values_: ``(k,)``.
        explained_variance_ratio_: ``(k,)`` share of the total variance per component.
        mean_, var_: ``(d,)`` running column mean and variance (float64).
        n_samples_seen_: ``(1,)`` rows seen.

    Args:
        n_components: ``k`` (default: ``min(n, d)`` of the first batch).
        lowrank: Use ``torch.svd_lowrank`` with ``lowrank_q`` (default ``2 k``) columns and ``lowrank_niter``
            iterations, seeded with ``lowrank_seed``.

    Raises:
        UsageError: ``k`` larger than ``d`` or than a batch's rows; a batch with another ``d``; an empty batch.
    """

    components_: torch.Tensor
    singular_values_: torch.Tensor
    explained_variance_: torch.Tensor
    explained_variance_ratio_: torch.Tensor

    def __init__(
        self,
        n_components: int | None = None,
        copy: bool = True,
        lowrank: bool = False,
        lowrank_q: int | None = None,
        lowrank_niter: int = 4,
        lowrank_seed: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.copy = copy
        self.lowrank = lowrank
        if lowrank and lowrank_q is None:
            if n_components is None:
                raise UsageError("IncrementalPCA(lowrank=True) needs n_components or lowrank_q.")
            lowrank_q = 2 * n_components
        if lowrank and n_components is not None and lowrank_q is not None and lowrank_q < n_components:
            raise UsageError(f"IncrementalPCA: lowrank_q={lowrank_q} must be at least n_components={n_components}.")
        self.lowrank_q = lowrank_q
        self.lowrank_niter = lowrank_niter
        self.lowrank_seed = lowrank_seed
        self.n_features_: int | None = None
        self.mean_: torch.Tensor | None = None
        self.var_: torch.Tensor | None = None
        self.n_samples_seen_ = torch.tensor([0])

    def _checked(self, X: torch.Tensor) -> torch.Tensor:
        X = X.clone() if self.copy else X
        n, d = X.shape
        if self.n_components is not None and self.n_components > d:
            raise UsageError(f"IncrementalPCA: n_components={self.n_components} exceeds the {d} features.")
        if self.n_components is not None and self.n_components > n:
            raise UsageError(f"IncrementalPCA: n_components={self.n_components} exceeds the batch's {n} rows.")
        return X if X.dtype in (torch.float32, torch.float64) else X.to(torch.float32)

    @staticmethod
    def running_moments(
        X: torch.Tensor, mean: torch.Tensor | None, var: torch.Tensor | None, seen: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean, var, count)`` after adding the rows of ``X`` (at least one) to ``seen`` rows of mean ``mean``
        and variance ``var`` (float64 sums; the pairwise update of Chan, Golub and LeVeque, 1979)."""
        batch = torch.tensor([X.shape[0]], device=X.device)
        total = seen + batch
        old_sum = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device) if mean is None else mean * seen
        batch_sum = X.sum(dim=0, dtype=torch.float64)
        new_mean = (old_sum + batch_sum) / total
        centred = X - batch_sum / batch
        correction = centred.sum(dim=0, dtype=torch.float64).square()
        batch_m2 = centred.square().sum(dim=0, dtype=torch.float64) - correction / batch
        if var is None:
            return new_mean, batch_m2 / total, total
        ratio = seen.double() / batch
        m2 = var * seen + batch_m2 + ratio / total * (old_sum / ratio - batch_sum).square()
        return new_mean, m2 / total, total

    def _svd(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.lowrank:
            return torch.linalg.svd(X, full_matrices=False)
        with torch.random.fork_rng(enabled=self.lowrank_seed is not None):
            if self.lowrank_seed is not None:
                torch.manual_seed(self.lowrank_seed)
            U, S, V = torch.svd_lowrank(X, q=self.lowrank_q, niter=self.lowrank_niter)
        return U, S, V.mH

    @staticmethod
    def _fix_signs(U: torch.Tensor, Vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip each component so that its largest-magnitude entry in ``Vt`` is positive."""
        largest = torch.argmax(torch.abs(Vt), dim=1)
        signs = torch.sign(Vt[range(Vt.shape[0]), largest])
        U *= signs[: U.shape[1]].view(1, -1)
        Vt *= signs.view(-1, 1)
        return U, Vt

    def partial_fit(self, X: torch.Tensor) -> IncrementalPCA:
        """Fold the batch ``X (n, d)`` into the decomposition (see the module docstring)."""
        first = not hasattr(self, "components_")
        X = self._checked(X)
        n, d = X.shape
        if n == 0:
            raise UsageError("IncrementalPCA: an empty batch has nothing to fold in.")
        if first:
            self.mean_, self.var_ = None, None
            self.n_samples_seen_ = torch.tensor([0], device=X.device)
            self.n_features_ = d
            self.n_components = self.n_components or min(n, d)
        if d != self.n_features_:
            raise UsageError(f"IncrementalPCA: this batch has {d} features, the first one had {self.n_features_}.")
        mean, var, total = self.running_moments(X, self.mean_, self.var_, self.n_samples_seen_)
        if first:
            X -= mean
        else:
            batch_mean = torch.mean(X, dim=0)
            X -= batch_mean
            old_mean: torch.Tensor = self.mean_  # type: ignore[assignment]  # set by the first batch
            shift = torch.sqrt((self.n_samples_seen_.double() / total) * n) * (old_mean - batch_mean)
            X = torch.vstack((self.singular_values_.view((-1, 1)) * self.components_, X, shift))
        U, S, Vt = self._svd(X)
        U, Vt = self._fix_signs(U, Vt)
        k = self.n_components
        self.n_samples_seen_ = total
        self.components_ = Vt[:k]
        self.singular_values_ = S[:k]
        self.mean_, self.var_ = mean, var
        self.explained_variance_ = (S**2 / (total - 1))[:k]
        self.explained_variance_ratio_ = (S**2 / torch.sum(var * total))[:k]
        return self
