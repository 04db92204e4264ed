"""Exact ray casting of the synthetic dataset's primitives (numpy, float64, vectorized over rays).

Every function works in the primitive's local frame on rays stored component-first, origins
`o` (3, N) and UNIT directions `d` (3, N) (each coordinate contiguous, for speed), so a
returned `t` is the Euclidean ray distance, vq3d's depth. A miss is `t = inf`. Rays are
assumed to start outside the primitive (cameras and shadow rays do).

Convex primitives (sphere, box, cylinder, cone) are intersections of simple convex sets (a ball,
slabs, an infinite cylinder, a one-sided cone). A ray meets each set in an interval of t and the
primitive in the intersection of those intervals: the slab method of Kay & Kajiya (1986),
generalised to quadric sets. The entering set names the surface piece (`face`) for the normal.

The torus is not convex: its first hit is the smallest root of a quartic in t (Hanrahan 1983;
Graphics Gems II "intersecting a ray with a torus"). The roots are isolated exactly: the
quartic is monotone between consecutive roots of its derivative (a cubic, solved in closed
form), so a sign change between consecutive critical points brackets exactly one root, which
bisection and safeguarded Newton steps refine to ~1e-12.

Local shapes (all centred at the local origin; cylinder, cone and torus have their axis on z):
  sphere (r,)        box (ax, ay, az) half extents      cylinder (r, h) radius, half height
  cone (r, h)        base disc of radius r at z = -h, apex at z = +h
  torus (R, rho)     major radius R in the xy plane, tube radius rho
"""

from __future__ import annotations

import numpy as np

SHAPES: tuple[str, ...] = ("sphere", "box", "cylinder", "cone", "torus")
T_MIN = 1e-9  # hits closer than this are ignored (shadow rays start on a surface)
_TINY = 1e-14
Interval = tuple[np.ndarray, np.ndarray, np.ndarray]  # (t_in, t_out, face_in), each (N,)
Hit = tuple[np.ndarray, np.ndarray]  # (t, face), each (N,)


# ----------------------------------------------------------------------------- intervals
# An interval is (t_in, t_out, face_in), each (N,); empty when t_in > t_out.


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _empty_like(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.full_like(x, np.inf), np.full_like(x, -np.inf)


def _slab(o: np.ndarray, d: np.ndarray, lo: float, hi: float) -> Interval:
    """Interval of t with lo <= o + t d <= hi for one axis (o, d: (N,)); face 0 = lo, 1 = hi.

    d == 0 gives t_lo, t_hi = -inf, +inf inside the slab and two equal infinities outside it
    (an empty interval); fmin/fmax ignore the NaN of a ray lying exactly in a bounding plane.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t_lo = (lo - o) / d
        t_hi = (hi - o) / d
    return np.fmin(t_lo, t_hi), np.fmax(t_lo, t_hi), (d <= 0).astype(np.int64)


def _quadratic_interval(a: np.ndarray, b_half: np.ndarray,
                        c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roots t1 <= t2 of a t^2 + 2 b_half t + c (a != 0) and a mask of real roots.

    Uses the cancellation-free form q = -(b + sign(b) sqrt(disc)), roots q / a and c / q.
    """
    disc = b_half * b_half - a * c
    real = disc >= 0
    sq = np.sqrt(np.where(real, disc, 0.0))
    q = -(b_half + np.where(b_half >= 0, sq, -sq))
    q = np.where(q == 0, _TINY, q)
    r1, r2 = q / a, c / q
    return np.minimum(r1, r2), np.maximum(r1, r2), real


def _combine(*intervals: Interval, t_min: float) -> Hit:
    """First hit (t, face) of the intersection of convex intervals; t = inf, face = -1 on a miss."""
    t_in, t_out, face = intervals[0]
    for other_in, other_out, other_face in intervals[1:]:
        face = np.where(other_in > t_in, other_face, face)
        t_in, t_out = np.maximum(t_in, other_in), np.minimum(t_out, other_out)
    hit = (t_in <= t_out) & (t_in > t_min)
    return np.where(hit, t_in, np.inf), np.where(hit, face, -1)


# ----------------------------------------------------------------------------- convex shapes


def _ball(o: np.ndarray, d: np.ndarray, r: float) -> Interval:
    t1, t2, real = _quadratic_interval(np.ones(o.shape[1]), _dot(o, d),
                                       _dot(o, o) - r * r)
    empty_in, empty_out = _empty_like(t1)
    return np.where(real, t1, empty_in), np.where(real, t2, empty_out), np.zeros(o.shape[1], dtype=np.int64)


def _infinite_cylinder(o: np.ndarray, d: np.ndarray, r: float) -> Interval:
    """Interval inside x^2 + y^2 <= r^2 (axis z)."""
    a = d[0] ** 2 + d[1] ** 2
    b_half = o[0] * d[0] + o[1] * d[1]
    c = o[0] ** 2 + o[1] ** 2 - r * r
    along_axis = a < _TINY
    t1, t2, real = _quadratic_interval(np.where(along_axis, 1.0, a), b_half, c)
    empty_in, empty_out = _empty_like(t1)
    t_in = np.where(along_axis, np.where(c <= 0, -np.inf, np.inf), np.where(real, t1, empty_in))
    t_out = np.where(along_axis, np.where(c <= 0, np.inf, -np.inf), np.where(real, t2, empty_out))
    return t_in, t_out, np.zeros(o.shape[1], dtype=np.int64)


def _solid_cone(o: np.ndarray, d: np.ndarray, r: float, h: float) -> Interval:
    """Interval inside the convex cone sqrt(x^2 + y^2) <= k (h - z), k = r / (2h), apex (0, 0, h).

    On the ray, g(t) = x^2 + y^2 - k^2 (h - z)^2 = A t^2 + 2 B t + C; g <= 0 is the double
    cone, and w(t) = h - z(t) >= 0 picks its lower nappe.
    """
    k2 = (r / (2.0 * h)) ** 2
    w0 = h - o[2]
    a = d[0] ** 2 + d[1] ** 2 - k2 * d[2] ** 2
    b_half = o[0] * d[0] + o[1] * d[1] + k2 * w0 * d[2]
    c = o[0] ** 2 + o[1] ** 2 - k2 * w0 * w0
    a = np.where(np.abs(a) < _TINY, _TINY, a)  # a ray parallel to a cone line (measure zero)
    t1, t2, real = _quadratic_interval(a, b_half, c)
    empty_in, empty_out = _empty_like(t1)
    # a > 0: g <= 0 between the roots, on one nappe; keep it if its midpoint has w >= 0.
    mid_w = w0 - 0.5 * (t1 + t2) * d[2]
    between_ok = real & (mid_w >= 0)
    # a < 0: g <= 0 outside the roots; the lower nappe is the half-line along which w grows.
    down = d[2] < 0
    t_in = np.where(a > 0, np.where(between_ok, t1, empty_in),
                    np.where(real, np.where(down, t2, -np.inf), empty_in))
    t_out = np.where(a > 0, np.where(between_ok, t2, empty_out),
                     np.where(real, np.where(down, np.inf, t1), empty_out))
    return t_in, t_out, np.zeros(o.shape[1], dtype=np.int64)


def _intersect_box(o: np.ndarray, d: np.ndarray, half: np.ndarray, t_min: float) -> Hit:
    slabs = []
    for axis in range(3):
        t_in, t_out, side = _slab(o[axis], d[axis], -half[axis], half[axis])
        slabs.append((t_in, t_out, 2 * axis + side))  # faces -x, +x, -y, +y, -z, +z
    return _combine(*slabs, t_min=t_min)


def _intersect_cylinder(o: np.ndarray, d: np.ndarray, r: float, h: float, t_min: float) -> Hit:
    t_in, t_out, side = _slab(o[2], d[2], -h, h)
    return _combine(_infinite_cylinder(o, d, r), (t_in, t_out, 1 + side), t_min=t_min)  # 1 bottom, 2 top


def _intersect_cone(o: np.ndarray, d: np.ndarray, r: float, h: float, t_min: float) -> Hit:
    t_in, t_out, side = _slab(o[2], d[2], -h, h)
    # entering through z = +h can only happen at the apex, which belongs to the side
    return _combine(_solid_cone(o, d, r, h), (t_in, t_out, np.where(side == 0, 1, 0)), t_min=t_min)


# ----------------------------------------------------------------------------- torus


def _horner(coeffs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Polynomials (deg+1, N), highest power first, at points x (K, N) -> (K, N)."""
    out = coeffs[0] * x + coeffs[1]
    for j in range(2, coeffs.shape[0]):
        out *= x
        out += coeffs[j]
    return out


def _derivative(coeffs: np.ndarray) -> np.ndarray:
    deg = coeffs.shape[0] - 1
    return coeffs[:-1] * np.arange(deg, 0, -1, dtype=coeffs.dtype)[:, None]


def _bisect(coeffs: np.ndarray, a: np.ndarray, b: np.ndarray,
            iters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shrink brackets [a, b] (K, N) around the root of a polynomial that is monotone in each.

    Returns (lo, hi, has): the final brackets and whether the polynomial changes sign in [a, b].
    """
    fa, fb = _horner(coeffs, a), _horner(coeffs, b)
    has = (fa * fb <= 0) & (b >= a)
    rising = fb > fa
    lo, hi = a.copy(), b.copy()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = (_horner(coeffs, mid) > 0) == rising  # the root lies below mid
        np.copyto(hi, mid, where=below)
        np.copyto(lo, mid, where=~below)
    return lo, hi, has


def _cubic_roots(coeffs: np.ndarray) -> np.ndarray:
    """Real roots (3, N) of cubics (4, N) with non-zero leading coefficient, NaN padded.

    Closed form (Cardano for one real root, Viete's trigonometric form for three), then two
    Newton steps to repair the closed form's rounding near multiple roots.
    """
    b, c, d = coeffs[1] / coeffs[0], coeffs[2] / coeffs[0], coeffs[3] / coeffs[0]
    shift = b / 3.0
    p = c - b * shift  # depressed cubic u^3 + p u + q, x = u - b / 3
    q = 2.0 * shift ** 3 - c * shift + d
    disc = (0.5 * q) ** 2 + (p / 3.0) ** 3
    one_real = disc > 0
    sq = np.sqrt(np.where(one_real, disc, 0.0))
    cardano = np.cbrt(-0.5 * q + sq) + np.cbrt(-0.5 * q - sq)
    neg_p = np.minimum(p, 0.0)
    m = 2.0 * np.sqrt(-neg_p / 3.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        arg = np.where(neg_p < 0, 3.0 * q / (neg_p * m), 0.0)
    phi = np.arccos(np.clip(arg, -1.0, 1.0)) / 3.0
    k = np.arange(3, dtype=coeffs.dtype)[:, None]
    viete = m * np.cos(phi - 2.0 * np.pi * k / 3.0)
    roots = np.where(one_real, np.stack([cardano, np.full_like(q, np.nan), np.full_like(q, np.nan)]), viete)
    roots = roots - shift
    deriv = _derivative(coeffs)
    for _ in range(2):
        with np.errstate(divide="ignore", invalid="ignore"):
            step = roots - _horner(coeffs, roots) / _horner(deriv, roots)
        roots = np.where(np.isfinite(step), step, roots)
    return roots


def _sort3(x: np.ndarray) -> np.ndarray:
    """Sort (3, N) along the first axis with a 3-comparator network (np.sort is ~50x slower)."""
    a, b = np.minimum(x[0], x[1]), np.maximum(x[0], x[1])
    b, c = np.minimum(b, x[2]), np.maximum(b, x[2])
    a, b = np.minimum(a, b), np.maximum(a, b)
    return np.stack([a, b, c])


def _first_root(coeffs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Smallest root (N,) in [lo, hi] of quartics (5, N); inf where there is none.

    The critical points (roots of the cubic derivative, closed form) cut [lo, hi] into pieces
    on which the quartic is monotone; the first piece whose ends differ in sign holds the first
    root, exactly one. A miss would need two roots between adjacent critical points closer than
    their rounding (~1e-8): a ray grazing the surface tangentially.
    """
    crit = _cubic_roots(_derivative(coeffs))
    crit = np.where((crit > lo) & (crit < hi), crit, hi)
    knots = np.concatenate([lo[None], _sort3(crit), hi[None]], axis=0)
    values = _horner(coeffs, knots)
    change = values[:-1] * values[1:] <= 0
    found = change.any(axis=0)
    piece = np.argmax(change, axis=0)[None]
    a = np.take_along_axis(knots, piece, axis=0)
    b = np.take_along_axis(knots, piece + 1, axis=0)
    lo_b, hi_b, _ = _bisect(coeffs, a, b, iters=12)
    # Newton steps from the bracket (quadratic convergence: ~1e-4 -> 1e-8 -> 1e-16), each kept
    # only if it stays inside the monotone piece.
    root, deriv = 0.5 * (lo_b + hi_b), _derivative(coeffs)
    for _ in range(3):
        with np.errstate(divide="ignore", invalid="ignore"):
            step = root - _horner(coeffs, root) / _horner(deriv, root)
        root = np.where((step >= a) & (step <= b), step, root)
    return np.where(found, root[0], np.inf)


def _torus_quartic(o: np.ndarray, d: np.ndarray, big_r: float, rho: float) -> np.ndarray:
    """Coefficients (5, N) of P(t) = (|x|^2 + R^2 - rho^2)^2 - 4 R^2 (x^2 + y^2), x = o + t d.

    P < 0 inside the tube. With |d| = 1: |x|^2 = t^2 + 2 f t + |o|^2, f = o.d.
    """
    f = _dot(o, d)
    q = _dot(o, o) + big_r ** 2 - rho ** 2
    a = d[0] ** 2 + d[1] ** 2
    b = o[0] * d[0] + o[1] * d[1]
    c = o[0] ** 2 + o[1] ** 2
    r2 = 4.0 * big_r ** 2
    ones = np.ones_like(f)
    return np.stack([ones, 4 * f, 4 * f * f + 2 * q - r2 * a, 4 * f * q - 2 * r2 * b, q * q - r2 * c])


def _intersect_torus(o: np.ndarray, d: np.ndarray, big_r: float, rho: float, t_min: float) -> Hit:
    # search only where the ray is inside the bounding sphere and the slab |z| <= rho
    t_in_b, t_out_b, _ = _ball(o, d, big_r + rho)
    t_in_z, t_out_z, _ = _slab(o[2], d[2], -rho, rho)
    lo = np.maximum(np.maximum(t_in_b, t_in_z), t_min)
    hi = np.minimum(t_out_b, t_out_z)
    idx = np.nonzero(lo < hi)[0]
    t = np.full(o.shape[1], np.inf)
    if len(idx):
        start = lo[idx]
        # shift the origin to the interval start so the quartic is well conditioned (|o'| <= R + rho)
        d_sub = np.take(d, idx, axis=1)
        o_shift = np.take(o, idx, axis=1) + start * d_sub
        coeffs = _torus_quartic(o_shift, d_sub, big_r, rho)
        s = _first_root(coeffs, np.zeros(len(idx)), hi[idx] - start)
        t[idx] = start + s
    hit = np.isfinite(t) & (t > t_min)
    return np.where(hit, t, np.inf), np.where(hit, 0, -1)


# ----------------------------------------------------------------------------- public API


def intersect(shape: str, params: np.ndarray, o: np.ndarray, d: np.ndarray,
              t_min: float = T_MIN) -> tuple[np.ndarray, np.ndarray]:
    """First hit of rays (local frame, o (3, N), unit d (3, N)) with a primitive.

    Returns t (N,) (inf on a miss) and face (N,) int (-1 on a miss; the surface piece, see
    `normal`).
    """
    p = np.asarray(params, dtype=np.float64)
    o, d = np.asarray(o, dtype=np.float64), np.asarray(d, dtype=np.float64)
    if shape == "sphere":
        return _combine(_ball(o, d, p[0]), t_min=t_min)
    if shape == "box":
        return _intersect_box(o, d, p, t_min)
    if shape == "cylinder":
        return _intersect_cylinder(o, d, p[0], p[1], t_min)
    if shape == "cone":
        return _intersect_cone(o, d, p[0], p[1], t_min)
    if shape == "torus":
        return _intersect_torus(o, d, p[0], p[1], t_min)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def implicit(shape: str, params: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Implicit function (N,) of local points x (3, N): 0 on the surface, < 0 inside.

    Written independently of `intersect` (distance-like forms) so tests can check hits with it.
    """
    p = np.asarray(params, dtype=np.float64)
    radial = np.sqrt(x[0] ** 2 + x[1] ** 2)
    if shape == "sphere":
        return np.sqrt(x[0] ** 2 + x[1] ** 2 + x[2] ** 2) - p[0]
    if shape == "box":
        return np.max(np.abs(x) - p[:, None], axis=0)
    if shape == "cylinder":
        return np.maximum(radial - p[0], np.abs(x[2]) - p[1])
    if shape == "cone":
        k = p[0] / (2 * p[1])
        side = (radial - k * (p[1] - x[2])) / np.sqrt(1 + k * k)
        return np.maximum(side, np.abs(x[2]) - p[1])
    if shape == "torus":
        return np.sqrt((radial - p[0]) ** 2 + x[2] ** 2) - p[1]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def normal(shape: str, params: np.ndarray, x: np.ndarray, face: np.ndarray) -> np.ndarray:
    """Outward unit normals (3, N) at local surface points x (3, N) on surface pieces `face` (N,)."""
    p = np.asarray(params, dtype=np.float64)
    radial = np.maximum(np.sqrt(x[0] ** 2 + x[1] ** 2), _TINY)
    if shape == "sphere":
        n = x.copy()
    elif shape == "box":
        n = np.zeros_like(x)
        axis = np.clip(face, 0, 5) // 2
        n[axis, np.arange(x.shape[1])] = np.where(face % 2 == 1, 1.0, -1.0)
        return n
    elif shape == "cylinder":
        side, cap = face == 0, np.where(face == 2, 1.0, -1.0)
        n = np.stack([np.where(side, x[0] / radial, 0.0), np.where(side, x[1] / radial, 0.0),
                      np.where(side, 0.0, cap)])
    elif shape == "cone":
        side, k = face == 0, p[0] / (2 * p[1])
        n = np.stack([np.where(side, x[0] / radial, 0.0), np.where(side, x[1] / radial, 0.0),
                      np.where(side, k, -1.0)])
    elif shape == "torus":
        scale = 1.0 - p[0] / radial  # x - R * (x, y, 0) / |(x, y)|
        n = np.stack([x[0] * scale, x[1] * scale, x[2]])
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return n / np.maximum(np.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2), _TINY)


def bounding_radius(shape: str, params: np.ndarray) -> float:
    """Radius of the smallest origin-centred ball holding the primitive."""
    p = np.asarray(params, dtype=np.float64)
    if shape == "sphere":
        return float(p[0])
    if shape == "box":
        return float(np.linalg.norm(p))
    if shape in ("cylinder", "cone"):
        return float(np.hypot(p[0], p[1]))
    if shape == "torus":
        return float(p[0] + p[1])
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def exit_room(lo: np.ndarray, hi: np.ndarray, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where rays from inside the axis-aligned box [lo, hi] (3,) leave it; o, d (3, N).

    Returns t (N,) and wall (N,) in 0..5 = -x, +x, -y (floor), +y (ceiling), -z (back), +z.
    """
    with np.errstate(divide="ignore"):  # d_k == 0: the ray never reaches that axis' walls, t = inf
        tx, ty, tz = (np.where(d[k] > 0, hi[k] - o[k], o[k] - lo[k]) / np.abs(d[k]) for k in range(3))
    t_yz = np.minimum(ty, tz)
    t = np.minimum(tx, t_yz)
    axis = np.where(tx <= t_yz, 0, np.where(ty <= tz, 1, 2))
    positive = np.where(axis == 0, d[0], np.where(axis == 1, d[1], d[2])) > 0
    return t, 2 * axis + positive
