#!/usr/bin/env python3
"""Fits the rational approximation of the standard normal CDF that the CPU backend's float GELU
uses (include/ftune/backends/cpu/primitives.hpp, detail::normal_cdf):

    Phi(x) = 0.5 + t P(t^2) / Q(t^2),  t = x clamped to [-T, T],  Q(0) = 1,

P and Q of degree 5, by iteratively reweighted linear least squares (Loeb's linearization,
Lawson's weights) on Chebyshev-spaced points of [0, T] against mpmath's erf at 30 digits. Beyond
T = 5.6, Phi is within 1.1e-8 of 0 or 1 (below half a float ulp of 1). Prints the coefficients
and the error of the fit in double and of the evaluation in float32 on a dense grid.

Usage: python3 scripts/fit_normal_cdf.py   (needs numpy and mpmath)
"""
import mpmath as mp
import numpy as np

mp.mp.dps = 30
T, DEG = 5.6, 5


def main():
    theta = np.linspace(0, np.pi, 4001)[1:]
    t = (1 - np.cos(theta)) / 2 * T
    g = np.array([float(mp.erf(mp.mpf(x) / mp.sqrt(2)) / 2) for x in t])  # Phi(t) - 0.5
    s = t * t
    w, q_prev = np.ones_like(t), np.ones_like(t)
    for _ in range(40):  # t P(s) - g Q(s) = 0, Q's constant term 1, weighted by 1 / Q
        A = np.hstack([np.stack([t * s**k for k in range(DEG + 1)], 1),
                       np.stack([-g * s**k for k in range(1, DEG + 1)], 1)])
        W = w / np.abs(q_prev)
        sol, *_ = np.linalg.lstsq(A * W[:, None], g * W, rcond=None)
        a, b = sol[:DEG + 1], np.concatenate([[1.0], sol[DEG + 1:]])
        q_prev = np.polyval(b[::-1], s)
        err = t * np.polyval(a[::-1], s) / q_prev - g
        w = w * np.sqrt(np.abs(err) / np.abs(err).max()) + 1e-12
        w /= w.max()
    print(f"double: max |error| {np.abs(err).max():.3g}; Q > 0 on [0, T]: {bool((q_prev > 0).all())}")
    f = np.float32
    xs = np.linspace(-9, 9, 40001)
    tt = np.clip(xs, -T, T).astype(f)
    ss = tt * tt
    p, q = f(a[-1]), f(b[-1])
    for c in a[-2::-1]:
        p = (p * ss + f(c)).astype(f)
    for c in b[-2::-1]:
        q = (q * ss + f(c)).astype(f)
    phi = np.clip((tt * (p / q) + f(0.5)).astype(f), 0, 1)
    exact = np.array([float(mp.ncdf(mp.mpf(x))) for x in xs])
    print(f"float32: max |Phi error| {np.abs(phi - exact).max():.3g}")
    print("P:", ", ".join(f"{c:.9e}f" for c in a))
    print("Q:", ", ".join(f"{c:.9e}f" for c in b))


if __name__ == "__main__":
    main()
