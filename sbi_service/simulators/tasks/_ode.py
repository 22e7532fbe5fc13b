"""A fixed-step classical Runge-Kutta (RK4) integrator, vectorized over a batch.

``rk4(rhs, y0, dt, save_steps)`` integrates ``dy/dt = rhs(y)`` (autonomous) for all rows
of ``y0 (n, k)`` at once, with the same step ``dt`` for every row, and returns the
states after the step counts in ``save_steps`` as ``(n, k, len(save_steps))``.

One RK4 step, with ``h = dt``:

    k1 = f(y),  k2 = f(y + h k1 / 2),  k3 = f(y + h k2 / 2),  k4 = f(y + h k3)
    y <- y + h (k1 + 2 k2 + 2 k3 + k4) / 6

The local error is O(h^5) and the global error O(h^4). The built-in ODE tasks
integrate in log coordinates (populations vary over many orders of magnitude there,
their logarithms do not), and their step sizes were chosen so that the trajectories
agree with ``scipy.integrate.solve_ivp`` at rtol=1e-12 to a relative error well below
1e-3 over the prior (``tests/test_tasks.py`` checks this).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def rk4(
    rhs: Callable[[Tensor], Tensor], y0: Tensor, dt: float, save_steps: Sequence[int]
) -> Tensor:
    """Integrate ``dy/dt = rhs(y)`` from ``y0 (n, k)``; return ``(n, k, len(save_steps))``.

    ``save_steps`` are non-decreasing step counts (0 saves the initial state); the state
    after ``save_steps[j]`` steps of size ``dt`` is ``out[..., j]``.
    """
    steps = [int(s) for s in save_steps]
    if any(b < a for a, b in zip(steps, steps[1:], strict=False)) or (steps and steps[0] < 0):
        raise ValueError(f"save_steps must be non-negative and non-decreasing, got {steps}")
    out = torch.empty(*y0.shape, len(steps), dtype=y0.dtype, device=y0.device)
    y = y0
    h, h2, h6 = dt, dt / 2, dt / 6
    step = 0
    for j, target in enumerate(steps):
        while step < target:
            k1 = rhs(y)
            k2 = rhs(y + h2 * k1)
            k3 = rhs(y + h2 * k2)
            k4 = rhs(y + h * k3)
            y = y + h6 * (k1 + 2 * (k2 + k3) + k4)
            step += 1
        out[..., j] = y
    return out


def save_steps_for(times: Sequence[float], dt: float) -> list[int]:
    """Step counts that land exactly on ``times`` (each must be a multiple of ``dt``)."""
    steps = []
    for t in times:
        s = round(t / dt)
        if abs(s * dt - t) > 1e-9 * max(1.0, abs(t)):
            raise ValueError(f"time {t} is not a multiple of the step {dt}")
        steps.append(s)
    return steps
