"""Autoregressive baseline AR(p): X_t = c + sum_{i=1..p} phi_i X_{t-i}, fitted in closed form.

A window is the p values before the target in time order, so `windows[:, -1]` is
X_{t-1} and `windows[:, -p]` is X_{t-p}; `phi[i - 1]` is phi_i, the weight of lag
i (statsmodels' AutoReg order: const, L1, ..., Lp).

Multi-step forecasts are recursive: the one-step model predicts X_t, which is
appended to the window to predict X_{t+1}, and so on; only the one-step model is
fitted. `AR` is the same model as a flax module (`ar` in the registry), so the
training loop can also fit it by gradient descent, or `ar_variables` loads the
least-squares fit into it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdl.models.registry import register


def _check_windows(windows: Any) -> np.ndarray:
    windows = np.asarray(windows, dtype=np.float64)
    if windows.ndim == 3 and windows.shape[-1] == 1:
        windows = windows[..., 0]
    if windows.ndim != 2:
        raise ValueError(f"AR windows must be [N, p] (or [N, p, 1]); got shape {windows.shape}")
    return windows


def fit_ar(windows: Any, targets: Any) -> tuple[float, np.ndarray]:
    """Least-squares AR(p) fit: returns (c, phi) with phi [p] in lag order (phi[0] weighs X_{t-1}).

    Args:
      windows: [N, p] (or [N, p, 1]) past values in time order, the most recent last.
      targets: [N] next values, or [N, H] the next H values; only the one-step
        target (column 0) is fitted, since longer horizons are forecast recursively.
    """
    windows = _check_windows(windows)
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim == 3 and targets.shape[-1] == 1:
        targets = targets[..., 0]
    if targets.ndim == 2:
        targets = targets[:, 0]
    if targets.shape != (windows.shape[0],):
        raise ValueError(f"targets must be [N] or [N, H] with N = {windows.shape[0]}; got shape {targets.shape}")
    # Design matrix: [1, X_{t-1}, ..., X_{t-p}].
    design = np.concatenate([np.ones((windows.shape[0], 1)), windows[:, ::-1]], axis=1)
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    return float(coef[0]), coef[1:]


def predict_ar(c: float, phi: Any, windows: Any, horizon: int = 1) -> np.ndarray:
    """Recursive forecasts [N, horizon] from windows [N, p] (time order) with the fit (c, phi)."""
    windows = _check_windows(windows)
    phi = np.asarray(phi, dtype=np.float64)
    if windows.shape[1] != phi.shape[0]:
        raise ValueError(f"windows hold {windows.shape[1]} lags but phi has {phi.shape[0]}")
    history = windows[:, ::-1]  # Most recent first, aligned with phi.
    forecasts = []
    for _ in range(horizon):
        nxt = c + history @ phi
        forecasts.append(nxt)
        history = np.concatenate([nxt[:, None], history[:, :-1]], axis=1)
    return np.stack(forecasts, axis=1)


@register("ar")
class AR(nn.Module):
    """AR(p) as a flax module: windows [B, p] (or [B, p, 1]) -> recursive forecasts [B, num_outputs].

    p is read from the input; variables are `params/c` (scalar) and `params/phi` [p].
    """

    num_outputs: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Forecast the next `num_outputs` values of each window."""
        del train
        if x.ndim == 3 and x.shape[-1] == 1:
            x = x[..., 0]
        if x.ndim != 2:
            raise ValueError(f"AR expects windows [B, p] or [B, p, 1]; got shape {x.shape}")
        c = self.param("c", nn.initializers.zeros, (), jnp.float32).astype(self.dtype)
        phi = self.param("phi", nn.initializers.zeros, (x.shape[1],), jnp.float32).astype(self.dtype)
        history = x[:, ::-1].astype(self.dtype)
        forecasts = []
        for _ in range(self.num_outputs):
            nxt = c + history @ phi
            forecasts.append(nxt)
            history = jnp.concatenate([nxt[:, None], history[:, :-1]], axis=1)
        return jnp.stack(forecasts, axis=1)


def ar_variables(c: float, phi: Any) -> dict:
    """Variables for `AR` holding a closed-form fit from `fit_ar`."""
    return {"params": {"c": jnp.asarray(c, jnp.float32), "phi": jnp.asarray(phi, jnp.float32)}}
