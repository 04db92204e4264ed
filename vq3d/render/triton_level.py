"""Triton kernels of one sampling level of the renderer, fused (`render.kernel=triton`).

Per block of rays, for each of the level's S samples in order: the sample's position from its
interval in s-space (linear in disparity), `render.scene_scale`, Mip-NeRF 360's contraction, the
three bilinear plane lookups (features accumulated in fp32 from fp32 or bf16 planes), the field
MLP (C -> hidden -> 1 or 4, `tl.dot` on tiles padded to 16), density and colour, and alpha
compositing with the running transmittance; the block writes each sample's weight and the rays'
composited colour, opacity, expected depth and disparity. Nothing per sample is kept for the
backward: `_level_bwd` recomputes the same chain from the rays, the s-space edges (an output the
losses use anyway) and the planes, back-propagates compositing (the suffix sums of the weights'
gradients come from totals of saved outputs, so one pass suffices), the MLP and the lookups,
adds the planes' gradient with fp32 atomics, and writes per-block partial sums of the MLP's
weight gradients (summed by torch). The maths, line by line, is that of `vq3d.render.fields`
(`softplus_and_sigmoid`, `_mlp_backward`), `vq3d.render.compositing` and `vq3d.render.triplane`.

Import this module only where Triton imports; on a CPU, `TRITON_INTERPRET=1` (set before the
import) runs the kernels in Triton's interpreter, which is how the tests check them against the
torch path.
"""

from __future__ import annotations

import triton
import triton.language as tl

from vq3d.render import compositing

# stands in for an infinite interval; a compiled kernel reads only constexpr globals
MAX_DELTA = tl.constexpr(compositing.MAX_DELTA)


@triton.jit
def _t_of_s(s, near, inv_far):
    """Ray distance of spacing s: disparity (1 - s) / near + s / far, linear in s."""
    return 1.0 / ((1.0 - s) / near + s * inv_far)


@triton.jit
def _one_minus_exp_neg(x):
    """1 - exp(-x) for x >= 0, accurate for small x (torch's -expm1(-x))."""
    small = x * (1.0 - x * (0.5 - x * (1.0 / 6.0 - x * (1.0 / 24.0))))
    return tl.where(x < 1e-3, small, 1.0 - tl.exp(-x))


@triton.jit
def _plane_pixels(p, RES: tl.constexpr):
    """Continuous texel coordinates of a contracted coordinate in [-2, 2] (texel j's centre at
    j, border-clamped; nan reads texel 0): the lower texel and the fraction."""
    pix = p * (RES / 4.0) + (RES - 1) / 2.0
    pix = tl.where(pix != pix, 0.0, pix)
    pix = tl.minimum(tl.maximum(pix, 0.0), RES - 1.0)
    lo = tl.minimum(tl.floor(pix), RES - 2.0)
    return lo, pix - lo


@triton.jit
def _sample_point(ox, oy, oz, dx, dy, dz, t, scene_scale, L2: tl.constexpr):
    """World point o + d t, scaled, contracted into radius 2 (L2 or L-inf norm)."""
    px = (ox + dx * t) * scene_scale
    py = (oy + dy * t) * scene_scale
    pz = (oz + dz * t) * scene_scale
    if L2:
        mag = tl.sqrt(px * px + py * py + pz * pz)
    else:
        mag = tl.maximum(tl.maximum(tl.abs(px), tl.abs(py)), tl.abs(pz))
    safe = tl.maximum(mag, 1.0)
    factor = tl.where(mag <= 1.0, 1.0, (2.0 - 1.0 / safe) / safe)
    return px * factor, py * factor, pz * factor


@triton.jit
def _gather_plane(table, base, lo_u, fu, lo_v, fv, cols, lane_mask, RES: tl.constexpr, C: tl.constexpr):
    """Bilinear features (BLOCK, CP) of one plane, fp32."""
    row = base + lo_v.to(tl.int64) * RES + lo_u.to(tl.int64)
    ptr = table + row[:, None] * C + cols[None, :]
    f00 = tl.load(ptr, mask=lane_mask, other=0.0).to(tl.float32)
    f10 = tl.load(ptr + C, mask=lane_mask, other=0.0).to(tl.float32)
    f01 = tl.load(ptr + RES * C, mask=lane_mask, other=0.0).to(tl.float32)
    f11 = tl.load(ptr + (RES + 1) * C, mask=lane_mask, other=0.0).to(tl.float32)
    gu, gv = 1.0 - fu, 1.0 - fv
    return (f00 * (gu * gv)[:, None] + f10 * (fu * gv)[:, None] + f01 * (gu * fv)[:, None]
            + f11 * (fu * fv)[:, None])


@triton.jit
def _scatter_plane(grad_table, base, lo_u, fu, lo_v, fv, g, cols, lane_mask, RES: tl.constexpr,
                   C: tl.constexpr):
    """The adjoint of `_gather_plane`: the table's gradient rows += bilinear weight * g (fp32 atomics)."""
    row = base + lo_v.to(tl.int64) * RES + lo_u.to(tl.int64)
    ptr = grad_table + row[:, None] * C + cols[None, :]
    gu, gv = 1.0 - fu, 1.0 - fv
    tl.atomic_add(ptr, g * (gu * gv)[:, None], mask=lane_mask)
    tl.atomic_add(ptr + C, g * (fu * gv)[:, None], mask=lane_mask)
    tl.atomic_add(ptr + RES * C, g * (gu * fv)[:, None], mask=lane_mask)
    tl.atomic_add(ptr + (RES + 1) * C, g * (fu * fv)[:, None], mask=lane_mask)


@triton.jit
def _features(table, batch_base, ux, uy, uz, cols, lane_mask, plane_scale, RES: tl.constexpr, C: tl.constexpr):
    """The summed (or averaged) features of the three planes XY, YZ, ZX (BLOCK, CP), and each
    plane's lower texels and fractions (for the backward's scatter)."""
    lx, fx = _plane_pixels(ux, RES)
    ly, fy = _plane_pixels(uy, RES)
    lz, fz = _plane_pixels(uz, RES)
    plane = RES * RES
    x = _gather_plane(table, batch_base, lx, fx, ly, fy, cols, lane_mask, RES, C)
    x += _gather_plane(table, batch_base + plane, ly, fy, lz, fz, cols, lane_mask, RES, C)
    x += _gather_plane(table, batch_base + 2 * plane, lz, fz, lx, fx, cols, lane_mask, RES, C)
    return x * plane_scale, lx, fx, ly, fy, lz, fz


@triton.jit
def _field(x, w1t, b1, w2t, b2, col_o):
    """The MLP: hidden softplus (z - log sigmoid z, z >= -60), density softplus(o - 1) and colour
    sigmoid(o): returns z1, h, o (pre-activations kept for the backward), density, and o's
    sigmoid (the colour in columns 1..3)."""
    z1 = tl.dot(x, w1t, input_precision="ieee") + b1[None, :]
    z1 = tl.maximum(z1, -60.0)
    h = z1 - tl.log(1.0 / (1.0 + tl.exp(-z1)))
    o = tl.dot(h, w2t, input_precision="ieee") + b2[None, :]
    o0 = tl.sum(tl.where(col_o[None, :] == 0, o, 0.0), axis=1) - 1.0
    density = tl.where(o0 > 20.0, o0, tl.log(1.0 + tl.exp(tl.minimum(o0, 20.0))))
    colour = 1.0 / (1.0 + tl.exp(-o))
    return z1, h, o0, density, colour


@triton.jit
def _load_mlp(w1, b1, w2, b2, C: tl.constexpr, H: tl.constexpr, O: tl.constexpr, CP: tl.constexpr,
              HP: tl.constexpr, OP: tl.constexpr):
    """W1^T (CP, HP), b1 (HP,), W2^T (HP, OP), b2 (OP,) in fp32, zero-padded."""
    c = tl.arange(0, CP)
    h = tl.arange(0, HP)
    o = tl.arange(0, OP)
    w1t = tl.load(w1 + h[None, :] * C + c[:, None], mask=(c[:, None] < C) & (h[None, :] < H), other=0.0)
    bias1 = tl.load(b1 + h, mask=h < H, other=0.0)
    w2t = tl.load(w2 + o[None, :] * H + h[:, None], mask=(h[:, None] < H) & (o[None, :] < O), other=0.0)
    bias2 = tl.load(b2 + o, mask=o < O, other=0.0)
    return w1t.to(tl.float32), bias1.to(tl.float32), w2t.to(tl.float32), bias2.to(tl.float32)


@triton.jit
def _load_rays(origins, dirs, ray64, live):
    """The block's ray origins and directions, one (BLOCK,) vector per coordinate."""
    ox = tl.load(origins + ray64 * 3, mask=live, other=0.0)
    oy = tl.load(origins + ray64 * 3 + 1, mask=live, other=0.0)
    oz = tl.load(origins + ray64 * 3 + 2, mask=live, other=0.0)
    dx = tl.load(dirs + ray64 * 3, mask=live, other=0.0)
    dy = tl.load(dirs + ray64 * 3 + 1, mask=live, other=0.0)
    dz = tl.load(dirs + ray64 * 3 + 2, mask=live, other=0.0)
    return ox, oy, oz, dx, dy, dz


@triton.jit
def _interval(s_lo, s_hi, near, inv_far):
    """A sample's interval [s_lo, s_hi] in s-space: its mid-point's disparity and distance, and its
    length in distance (clamped to MAX_DELTA, as the torch path's interval_lengths)."""
    s_mid = 0.5 * (s_lo + s_hi)
    disp_mid = (1.0 - s_mid) / near + s_mid * inv_far
    delta = tl.minimum(tl.maximum(_t_of_s(s_hi, near, inv_far) - _t_of_s(s_lo, near, inv_far), 0.0), MAX_DELTA)
    return disp_mid, 1.0 / disp_mid, delta


@triton.jit
def _level_fwd(table, origins, dirs, edges, w1, b1, w2, b2,
               weights_out, rgb_out, depth_out, disparity_out, opacity_out,
               n_rays, rays_per_batch, near, inv_far, scene_scale, plane_scale,
               S: tl.constexpr, C: tl.constexpr, H: tl.constexpr, O: tl.constexpr,
               CP: tl.constexpr, HP: tl.constexpr, OP: tl.constexpr, RES: tl.constexpr,
               BLOCK: tl.constexpr, L2: tl.constexpr, OPAQUE_LAST: tl.constexpr):
    pid = tl.program_id(0)
    ray = pid * BLOCK + tl.arange(0, BLOCK)
    live = ray < n_rays
    ray64 = ray.to(tl.int64)
    cols = tl.arange(0, CP)
    lane_mask = live[:, None] & (cols[None, :] < C)
    col_o = tl.arange(0, OP)
    batch_base = (ray64 // rays_per_batch) * (3 * RES * RES)
    ox, oy, oz, dx, dy, dz = _load_rays(origins, dirs, ray64, live)
    w1t, bias1, w2t, bias2 = _load_mlp(w1, b1, w2, b2, C, H, O, CP, HP, OP)
    through = tl.zeros([BLOCK], dtype=tl.float32)  # optical depth before the sample
    opacity = tl.zeros([BLOCK], dtype=tl.float32)
    depth_sum = tl.zeros([BLOCK], dtype=tl.float32)
    disparity = tl.zeros([BLOCK], dtype=tl.float32)
    rgb = tl.zeros([BLOCK, OP], dtype=tl.float32)
    s_lo = tl.load(edges + ray64 * (S + 1), mask=live, other=0.0)
    for k in range(S):
        s_hi = tl.load(edges + ray64 * (S + 1) + k + 1, mask=live, other=1.0)
        disp_mid, t_mid, delta = _interval(s_lo, s_hi, near, inv_far)
        ux, uy, uz = _sample_point(ox, oy, oz, dx, dy, dz, t_mid, scene_scale, L2)
        x, _, _, _, _, _, _ = _features(table, batch_base, ux, uy, uz, cols, lane_mask, plane_scale, RES, C)
        _, _, _, density, colour = _field(x, w1t, bias1, w2t, bias2, col_o)
        optical = density * delta
        alpha = _one_minus_exp_neg(optical)
        if OPAQUE_LAST:
            alpha = tl.where(k == S - 1, 1.0, alpha)
        w = tl.exp(-through) * alpha
        through += optical
        tl.store(weights_out + ray64 * S + k, w, mask=live)
        opacity += w
        depth_sum += w * t_mid
        disparity += w * disp_mid
        rgb += w[:, None] * colour
        s_lo = s_hi
    tl.store(opacity_out + ray64, opacity, mask=live)
    tl.store(depth_out + ray64, depth_sum / tl.maximum(opacity, 1e-6), mask=live)
    tl.store(disparity_out + ray64, disparity + (1.0 - opacity) * inv_far, mask=live)
    rgb_mask = live[:, None] & (col_o[None, :] >= 1) & (col_o[None, :] < O)
    tl.store(rgb_out + ray64[:, None] * 3 + (col_o[None, :] - 1), rgb, mask=rgb_mask)


@triton.jit
def _level_bwd(table, origins, dirs, edges, w1, b1, w2, b2,
               weights, rgb, depth, opacity,
               g_weights, g_rgb, g_depth, g_disparity, g_opacity,
               grad_table, part_w1, part_b1, part_w2, part_b2,
               n_rays, n_blocks, programs, rays_per_batch, near, inv_far, scene_scale, plane_scale,
               S: tl.constexpr, C: tl.constexpr, H: tl.constexpr, O: tl.constexpr,
               CP: tl.constexpr, HP: tl.constexpr, OP: tl.constexpr, RES: tl.constexpr,
               BLOCK: tl.constexpr, L2: tl.constexpr, OPAQUE_LAST: tl.constexpr,
               TABLE_GRAD: tl.constexpr):
    # a program walks the ray blocks pid, pid + programs, ...: the MLP's weights are loaded and its
    # gradients' partial sums written once per program, not per block (their buffer is programs x
    # the MLP's size, however many rays)
    pid = tl.program_id(0)
    cols = tl.arange(0, CP)
    col_o = tl.arange(0, OP)
    col_h = tl.arange(0, HP)
    w1t, bias1, w2t, bias2 = _load_mlp(w1, b1, w2, b2, C, H, O, CP, HP, OP)
    acc_w1 = tl.zeros([CP, HP], dtype=tl.float32)
    acc_b1 = tl.zeros([HP], dtype=tl.float32)
    acc_w2 = tl.zeros([HP, OP], dtype=tl.float32)
    acc_b2 = tl.zeros([OP], dtype=tl.float32)
    block = pid
    while block < n_blocks:  # a while loop: Triton's interpreter cannot range() over a runtime scalar
        ray = block * BLOCK + tl.arange(0, BLOCK)
        live = ray < n_rays
        ray64 = ray.to(tl.int64)
        lane_mask = live[:, None] & (cols[None, :] < C)
        batch_base = (ray64 // rays_per_batch) * (3 * RES * RES)
        ox, oy, oz, dx, dy, dz = _load_rays(origins, dirs, ray64, live)
        # the rays' outputs and their gradients
        rgb_mask = live[:, None] & (col_o[None, :] >= 1) & (col_o[None, :] < O)
        rgb_ptr = ray64[:, None] * 3 + (col_o[None, :] - 1)
        g_col = tl.load(g_rgb + rgb_ptr, mask=rgb_mask, other=0.0)  # (BLOCK, OP): colour grads in columns 1..3
        out_rgb = tl.load(rgb + rgb_ptr, mask=rgb_mask, other=0.0)
        opac = tl.load(opacity + ray64, mask=live, other=1.0)
        dep = tl.load(depth + ray64, mask=live, other=0.0)
        g_dep = tl.load(g_depth + ray64, mask=live, other=0.0)
        g_dis = tl.load(g_disparity + ray64, mask=live, other=0.0)
        g_op = tl.load(g_opacity + ray64, mask=live, other=0.0)
        clamped = opac < 1e-6
        opac_c = tl.maximum(opac, 1e-6)
        # pass 1: total = sum_i G_i w_i, G_i = dL/dw_i through every output (no recomputation: the
        # colour part is g_rgb . rgb, an output)
        total = tl.sum(g_col * out_rgb, axis=1)
        s_lo = tl.load(edges + ray64 * (S + 1), mask=live, other=0.0)
        for k in range(S):
            s_hi = tl.load(edges + ray64 * (S + 1) + k + 1, mask=live, other=1.0)
            disp_mid, t_mid, _ = _interval(s_lo, s_hi, near, inv_far)
            w = tl.load(weights + ray64 * S + k, mask=live, other=0.0)
            gw = tl.load(g_weights + ray64 * S + k, mask=live, other=0.0)
            d_depth = tl.where(clamped, t_mid / 1e-6, (t_mid - dep) / opac_c)
            total += w * (gw + g_op + g_dis * (disp_mid - inv_far) + g_dep * d_depth)
            s_lo = s_hi
        # pass 2: recompute each sample, back-propagate compositing, the MLP and the lookups
        through = tl.zeros([BLOCK], dtype=tl.float32)
        prefix = tl.zeros([BLOCK], dtype=tl.float32)
        s_lo = tl.load(edges + ray64 * (S + 1), mask=live, other=0.0)
        for k in range(S):
            s_hi = tl.load(edges + ray64 * (S + 1) + k + 1, mask=live, other=1.0)
            disp_mid, t_mid, delta = _interval(s_lo, s_hi, near, inv_far)
            ux, uy, uz = _sample_point(ox, oy, oz, dx, dy, dz, t_mid, scene_scale, L2)
            x, lx, fx, ly, fy, lz, fz = _features(table, batch_base, ux, uy, uz, cols, lane_mask, plane_scale, RES, C)
            z1, h, o0, density, colour = _field(x, w1t, bias1, w2t, bias2, col_o)
            optical = density * delta
            alpha = _one_minus_exp_neg(optical)
            after = tl.exp(-(through + optical))  # transmittance after the sample
            if OPAQUE_LAST:
                alpha = tl.where(k == S - 1, 1.0, alpha)
                after = tl.where(k == S - 1, 0.0, after)
            w = tl.exp(-through) * alpha
            through += optical
            gw = tl.load(g_weights + ray64 * S + k, mask=live, other=0.0)
            d_depth = tl.where(clamped, t_mid / 1e-6, (t_mid - dep) / opac_c)
            G = gw + g_op + g_dis * (disp_mid - inv_far) + g_dep * d_depth + tl.sum(g_col * colour, axis=1)
            prefix += G * w
            # sum_{i > k} G_i w_i; exactly 0 after the last sample, whose interval may be 1e10 long
            # (far = inf), where the rounding of total - prefix would be multiplied by it
            later = tl.where(k == S - 1, 0.0, total - prefix)
            d_density = delta * (G * after - later)  # (vq3d.render.compositing._AlphaWeights)
            d_o0 = d_density / (1.0 + tl.exp(-o0))  # density = softplus(o0): its slope sigmoid(o0)
            d_o = tl.where(col_o[None, :] == 0, d_o0[:, None], g_col * w[:, None] * colour * (1.0 - colour))
            d_o = tl.where(live[:, None], d_o, 0.0)
            acc_w2 += tl.dot(tl.trans(h), d_o, input_precision="ieee")
            acc_b2 += tl.sum(d_o, axis=0)
            d_h = tl.dot(d_o, tl.trans(w2t), input_precision="ieee")
            d_z1 = d_h / (1.0 + tl.exp(-z1))  # softplus' = sigmoid
            d_z1 = tl.where(col_h[None, :] < H, d_z1, 0.0)
            acc_w1 += tl.dot(tl.trans(x), d_z1, input_precision="ieee")
            acc_b1 += tl.sum(d_z1, axis=0)
            if TABLE_GRAD:
                d_x = tl.dot(d_z1, tl.trans(w1t), input_precision="ieee") * plane_scale
                plane = RES * RES
                _scatter_plane(grad_table, batch_base, lx, fx, ly, fy, d_x, cols, lane_mask, RES, C)
                _scatter_plane(grad_table, batch_base + plane, ly, fy, lz, fz, d_x, cols, lane_mask, RES, C)
                _scatter_plane(grad_table, batch_base + 2 * plane, lz, fz, lx, fx, d_x, cols, lane_mask, RES, C)
            s_lo = s_hi
        block += programs
    # per-program partial sums of the MLP's gradients, as W1^T, b1, W2^T, b2 (padded)
    c_idx = tl.arange(0, CP)
    tl.store(part_w1 + pid * CP * HP + c_idx[:, None] * HP + col_h[None, :], acc_w1)
    tl.store(part_b1 + pid * HP + col_h, acc_b1)
    tl.store(part_w2 + pid * HP * OP + col_h[:, None] * OP + col_o[None, :], acc_w2)
    tl.store(part_b2 + pid * OP + col_o, acc_b2)
