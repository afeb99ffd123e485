"""Latent samplers: standard Gaussian, Gaussian mixture (EM, full covariance) and Gaussian KDE.

GMM and KDE are fitted on the posterior means of the training set (Dis-GEN: 5 components; bandwidth 0.25).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GaussianSampler:
    """z ~ N(0, I)."""

    dim: int

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.standard_normal((n, self.dim)).astype(np.float32)


@dataclass(frozen=True)
class KDESampler:
    """Gaussian kernel density: a random training latent plus bandwidth * N(0, I)."""

    points: np.ndarray
    bandwidth: float = 0.25

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        centres = self.points[rng.integers(0, len(self.points), n)]
        return (centres + self.bandwidth * rng.standard_normal(centres.shape)).astype(np.float32)

    def log_density(self, z: np.ndarray) -> np.ndarray:
        """Log density at z (M, D)."""
        d = self.points.shape[1]
        sq = ((z[:, None, :] - self.points[None]) ** 2).sum(-1) / self.bandwidth**2
        log_kernel = -0.5 * sq - 0.5 * d * np.log(2 * np.pi * self.bandwidth**2)
        return _logsumexp(log_kernel, axis=1) - np.log(len(self.points))


@dataclass(frozen=True)
class GMMSampler:
    """Gaussian mixture: weights (K,), means (K, D), covariances (K, D, D)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @classmethod
    def fit(cls, points: np.ndarray, components: int = 5, rng: np.random.Generator | None = None,
            iterations: int = 100, reg_covar: float = 1e-6, tol: float = 1e-4) -> "GMMSampler":
        """EM with k-means initialisation (as scikit-learn's GaussianMixture, covariance_type='full')."""
        rng = rng or np.random.default_rng(0)
        x = np.asarray(points, np.float64)
        n, d = x.shape
        k = min(components, n)
        labels = _kmeans(x, k, rng)
        resp = np.eye(k)[labels]
        previous = -np.inf
        for _ in range(iterations):
            weights, means, covs = _m_step(x, resp, reg_covar)
            log_prob = _log_gaussians(x, means, covs) + np.log(weights)
            log_norm = _logsumexp(log_prob, axis=1)
            resp = np.exp(log_prob - log_norm[:, None])
            mean_ll = float(log_norm.mean())
            if abs(mean_ll - previous) < tol:
                break
            previous = mean_ll
        weights, means, covs = _m_step(x, resp, reg_covar)
        return cls(weights=weights, means=means, covariances=covs)

    def log_density(self, z: np.ndarray) -> np.ndarray:
        return _logsumexp(_log_gaussians(np.asarray(z, np.float64), self.means, self.covariances)
                          + np.log(self.weights), axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        counts = rng.multinomial(n, self.weights / self.weights.sum())
        draws = [rng.multivariate_normal(m, c, size=c_n, method="cholesky")
                 for m, c, c_n in zip(self.means, self.covariances, counts) if c_n]
        z = np.concatenate(draws)
        return z[rng.permutation(n)].astype(np.float32)


def _kmeans(x, k, rng, iterations=20):
    centres = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iterations):
        labels = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
        centres = np.stack([x[labels == j].mean(0) if np.any(labels == j) else centres[j] for j in range(k)])
    return np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)


def _m_step(x, resp, reg_covar):
    nk = resp.sum(0) + 10 * np.finfo(float).eps
    means = resp.T @ x / nk[:, None]
    covs = []
    for j in range(len(nk)):
        diff = x - means[j]
        covs.append((resp[:, j, None] * diff).T @ diff / nk[j] + reg_covar * np.eye(x.shape[1]))
    return nk / len(x), means, np.stack(covs)


def _log_gaussians(x, means, covs):
    d = x.shape[1]
    out = []
    for mean, cov in zip(means, covs):
        chol = np.linalg.cholesky(cov)
        solved = np.linalg.solve(chol, (x - mean).T)
        out.append(-0.5 * (solved**2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * d * np.log(2 * np.pi))
    return np.stack(out, axis=1)


def _logsumexp(a, axis):
    top = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def make_sampler(name: str, train_latents: np.ndarray, dim: int, bandwidth: float = 0.25, components: int = 5,
                 seed: int = 0):
    """'gaussian', 'gmm' or 'kde' sampler fitted on training latents (N, D)."""
    if name == "gaussian":
        return GaussianSampler(dim)
    if name == "kde":
        return KDESampler(np.asarray(train_latents, np.float32), bandwidth)
    if name == "gmm":
        return GMMSampler.fit(train_latents, components, np.random.default_rng(seed))
    raise ValueError(f"sampler must be 'gaussian', 'gmm' or 'kde', got {name!r}")
