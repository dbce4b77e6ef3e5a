//! The Flex kernels: element-wise maps over contiguous f32 buffers, split
//! into chunks that rayon spreads over the cores, each chunk a loop the
//! compiler vectorises (branch-free polynomial `exp` and `erf` instead of
//! `libm` calls).

use std::mem::MaybeUninit;

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::GroupNormSpec;

/// Elements per parallel task: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

/// Element-wise work under this many elements stays on the calling thread:
/// waking a sleeping worker for two or three chunks costs about what it
/// saves (batch-1 generation's GELU over 64 × 512 values, eight calls a
/// token, made 2 threads slower than 1).
const SERIAL_BELOW: usize = 4 * CHUNK;

/// Elements per task of an element-wise pass over `n` elements: a
/// [`CHUNK`], or all of them (one task, the calling thread's) when `n` is
/// under [`SERIAL_BELOW`].
fn chunk_for(n: usize) -> usize {
    if n < SERIAL_BELOW { n.max(1) } else { CHUNK }
}

/// A new contiguous f32 tensor of zeros, zero-filled in parallel chunks.
/// `FlexTensor::empty` fills its zeros on the calling thread, so every
/// kernel that then writes its output in parallel left the other threads
/// idle for a memset first (2 % of a U-Net sampling call at 2 threads, all
/// of it serial).
pub(super) fn zeroed(shape: Shape) -> FlexTensor {
    let n = shape.num_elements();
    if n < SERIAL_BELOW {
        return FlexTensor::from_data(TensorData::new(vec![0.0f32; n], shape));
    }
    par_new(shape, CHUNK, |_, _| {})
}

/// A new contiguous f32 tensor whose chunks of `chunk` elements (the last
/// may be shorter) are written in parallel by `fill(index, chunk)`. Each
/// chunk is zeroed in its own task just before `fill` runs, while it is in
/// that core's cache, instead of a whole-buffer zero fill first.
pub(super) fn par_new(
    shape: Shape,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync + Send,
) -> FlexTensor {
    let mut nothing = vec![(); shape.num_elements().div_ceil(chunk.max(1))];
    par_new_with(shape, chunk, &mut nothing, 1, |i, out, _| fill(i, out))
}

/// [`par_new`], with chunk i of `side` (`side_chunk` elements) handed to
/// `fill` next to output chunk i (per-sample statistics).
pub(super) fn par_new_with<T: Send>(
    shape: Shape,
    chunk: usize,
    side: &mut [T],
    side_chunk: usize,
    fill: impl Fn(usize, &mut [f32], &mut [T]) + Sync + Send,
) -> FlexTensor {
    let (n, chunk, side_chunk) = (shape.num_elements(), chunk.max(1), side_chunk.max(1));
    // Every output chunk needs its side chunk, or the zip below would leave
    // the output's tail uninitialised.
    assert!(
        side.len().div_ceil(side_chunk) >= n.div_ceil(chunk),
        "too few side chunks"
    );
    let mut values = Vec::<f32>::with_capacity(n);
    values.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .zip(side.par_chunks_mut(side_chunk))
        .enumerate()
        .for_each(|(i, (part, side))| {
            for v in part.iter_mut() {
                v.write(0.0);
            }
            // SAFETY: every element of `part` was initialised just above,
            // and `MaybeUninit<f32>` has the layout of `f32`.
            let part = unsafe { &mut *(part as *mut [MaybeUninit<f32>] as *mut [f32]) };
            fill(i, part, side)
        });
    // SAFETY: the chunks above cover all n elements (asserted), each
    // initialised.
    unsafe { values.set_len(n) };
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Runs `f` compiled for the widest vector unit this CPU has: AVX-512, then
/// AVX2 + FMA, else the build's baseline (SSE2 on x86-64, whose 4 lanes are
/// all a portable build may assume). The element-wise loops here inline
/// into `f`, so they vectorise at that width, while one binary still runs
/// on any x86-64 CPU (the GEMMs and burn's own kernels dispatch the same way
/// at run time). The results do not depend on the path: no loop here lets
/// the compiler reassociate or fuse multiply-adds.
#[inline(always)]
pub(super) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// Whether `x` alone holds its buffer and its elements are the whole
/// buffer in order: a kernel may then write its result over it.
fn reusable(x: &FlexTensor) -> bool {
    let n = x.layout().num_elements();
    x.is_unique()
        && x.layout().contiguous_offsets() == Some((0, n))
        && x.bytes().len() == n * std::mem::size_of::<f32>()
}

/// `f` applied to every element of `x`, or `x` back when it is not f32.
/// (`f` is a generic, not a function pointer, so it inlines and vectorises.)
/// Written over `x`'s own buffer when nothing else holds it (an activation
/// in inference; under autodiff the input is kept for the backward pass).
pub(super) fn map(x: FlexTensor, f: impl Fn(f32) -> f32 + Sync) -> Result<FlexTensor, FlexTensor> {
    if x.dtype() != DType::F32 {
        return Err(x);
    }
    let chunk = chunk_for(x.layout().num_elements());
    if reusable(&x) {
        let mut x = x;
        x.storage_mut::<f32>()
            .par_chunks_mut(chunk)
            .for_each(|part| {
                simd(
                    #[inline(always)]
                    || {
                        for v in part.iter_mut() {
                            *v = f(*v);
                        }
                    },
                )
            });
        return Ok(x);
    }
    let x = if x.is_contiguous() {
        x
    } else {
        x.to_contiguous()
    };
    let input: &[f32] = x.as_slice().expect("contiguous f32");
    Ok(par_new(x.layout().shape().clone(), chunk, |at, o| {
        let i = &input[at * chunk..];
        simd(
            #[inline(always)]
            || {
                for (o, &i) in o.iter_mut().zip(i) {
                    *o = f(i);
                }
            },
        )
    }))
}

/// `f(x, g)` element by element, or `g` back when the two are not f32
/// tensors of one shape. Written over `g`'s own buffer when nothing else
/// holds it (a backward pass's incoming gradient, as a rule), as [`map`]
/// writes over its input.
pub(super) fn zip(
    x: &FlexTensor,
    g: FlexTensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<FlexTensor, FlexTensor> {
    if x.dtype() != DType::F32
        || g.dtype() != DType::F32
        || x.layout().shape() != g.layout().shape()
    {
        return Err(g);
    }
    let x = x.to_contiguous();
    let Some(xs) = x.as_slice::<f32>() else {
        return Err(g);
    };
    let chunk = chunk_for(xs.len());
    if reusable(&g) {
        let mut g = g;
        g.storage_mut::<f32>()
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(at, part)| {
                let x = &xs[at * chunk..];
                simd(
                    #[inline(always)]
                    || {
                        for (g, &x) in part.iter_mut().zip(x) {
                            *g = f(x, *g);
                        }
                    },
                )
            });
        return Ok(g);
    }
    let g = g.to_contiguous();
    let Some(gs) = g.as_slice::<f32>() else {
        return Err(g);
    };
    Ok(par_new(x.layout().shape().clone(), chunk, |at, o| {
        let (x, g) = (&xs[at * chunk..], &gs[at * chunk..]);
        simd(
            #[inline(always)]
            || {
                for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                    *o = f(x, g);
                }
            },
        )
    }))
}

/// Nearest-neighbour ×2 upsampling of a 4-D f32 tensor: each input line of
/// W values becomes two output lines of 2W; `None` for other tensors.
pub(super) fn upsample_nearest2(x: &FlexTensor) -> Option<FlexTensor> {
    let shape = x.layout().shape();
    if x.dtype() != DType::F32 || shape.num_dims() != 4 || shape[3] == 0 {
        return None;
    }
    let w = shape[3];
    let x = x.to_contiguous();
    let xs: &[f32] = x.as_slice()?;
    let out_shape = [shape[0], shape[1], 2 * shape[2], 2 * w];
    let per_task = (CHUNK / (4 * w)).max(1);
    Some(par_new(out_shape.into(), per_task * 4 * w, |i, o| {
        let x = &xs[i * per_task * w..];
        simd(
            #[inline(always)]
            || {
                for (pair, line) in o.chunks_exact_mut(4 * w).zip(x.chunks_exact(w)) {
                    let (top, bottom) = pair.split_at_mut(2 * w);
                    for (o, &v) in top.chunks_exact_mut(2).zip(line) {
                        o[0] = v;
                        o[1] = v;
                    }
                    bottom.copy_from_slice(top);
                }
            },
        )
    }))
}

/// The gradient of [`upsample_nearest2`]: the sum of each 2×2 block of the
/// `[N, C, 2H, 2W]` gradient; `None` for other tensors.
pub(super) fn upsample_nearest2_backward(grad: &FlexTensor) -> Option<FlexTensor> {
    let shape = grad.layout().shape();
    if grad.dtype() != DType::F32
        || shape.num_dims() != 4
        || !shape[2].is_multiple_of(2)
        || !shape[3].is_multiple_of(2)
        || shape[3] == 0
    {
        return None;
    }
    let w = shape[3] / 2;
    let grad = grad.to_contiguous();
    let gs: &[f32] = grad.as_slice()?;
    let in_shape = [shape[0], shape[1], shape[2] / 2, w];
    let mut dx = zeroed(in_shape.into());
    let per_task = (CHUNK / (4 * w)).max(1);
    dx.storage_mut::<f32>()
        .par_chunks_mut(per_task * w)
        .zip(gs.par_chunks(per_task * 4 * w))
        .for_each(|(dx, g)| {
            simd(
                #[inline(always)]
                || {
                    for (line, pair) in dx.chunks_exact_mut(w).zip(g.chunks_exact(4 * w)) {
                        let (top, bottom) = pair.split_at(2 * w);
                        for ((d, t), b) in line
                            .iter_mut()
                            .zip(top.chunks_exact(2))
                            .zip(bottom.chunks_exact(2))
                        {
                            *d = (t[0] + t[1]) + (b[0] + b[1]);
                        }
                    }
                },
            )
        });
    Some(dx)
}

/// Rows of `len` elements per parallel task: about half a [`CHUNK`] of
/// elements, so that a few rows (a generation step's 64) stay on the calling
/// thread instead of waking another for microseconds of work (rayon splits
/// down to single rows otherwise).
fn rows_per_task(len: usize) -> usize {
    (CHUNK / 2 / len.max(1)).max(1)
}

/// Each row of `x` (`[rows, len]`) normalised to zero mean and unit
/// variance; returns it and each row's rstd (`[rows, 1]`), or `x` back
/// when it is not a 2-D f32 tensor. Computed over `x`'s own buffer when
/// nothing else holds it, else over a copy.
pub(super) fn normalize_rows(
    x: FlexTensor,
    eps: f32,
) -> Result<(FlexTensor, FlexTensor), FlexTensor> {
    let shape = x.layout().shape().clone();
    if x.dtype() != DType::F32 || shape.num_dims() != 2 || shape[1] == 0 {
        return Err(x);
    }
    let (rows, len) = (shape[0], shape[1]);
    let mut out = whole_buffer(x);
    let mut rstd = zeroed([rows, 1].into());
    out.storage_mut::<f32>()
        .par_chunks_mut(len)
        .zip(rstd.storage_mut::<f32>().par_iter_mut())
        .with_min_len(rows_per_task(len))
        .for_each(|(o, r)| {
            simd(
                #[inline(always)]
                || {
                    let mean = sum(o) / len as f32;
                    // Two passes (centre, then square) for accuracy, as burn's var.
                    for o in o.iter_mut() {
                        *o -= mean;
                    }
                    let var = centered_square_sum(o, 0.0) / len as f32;
                    *r = 1.0 / (var + eps).sqrt();
                    for o in o.iter_mut() {
                        *o *= *r;
                    }
                },
            )
        });
    Ok((out, rstd))
}

/// The gradient of [`normalize_rows`]: per row, rstd·(g − mean(g) − x̂·mean(g·x̂)).
pub(super) fn normalize_rows_backward(
    normed: &FlexTensor,
    rstd: &FlexTensor,
    grad: &FlexTensor,
) -> Option<FlexTensor> {
    let shape = normed.layout().shape().clone();
    if normed.dtype() != DType::F32
        || grad.dtype() != DType::F32
        || rstd.dtype() != DType::F32
        || shape.num_dims() != 2
        || grad.layout().shape() != &shape
        || shape[1] == 0
    {
        return None;
    }
    let len = shape[1];
    let (normed, rstd, grad) = (
        normed.to_contiguous(),
        rstd.to_contiguous(),
        grad.to_contiguous(),
    );
    let (ys, rs, gs): (&[f32], &[f32], &[f32]) =
        (normed.as_slice()?, rstd.as_slice()?, grad.as_slice()?);
    if rs.len() != shape[0] {
        return None;
    }
    let mut out = zeroed(shape);
    out.storage_mut::<f32>()
        .par_chunks_mut(len)
        .zip(ys.par_chunks(len).zip(gs.par_chunks(len)))
        .zip(rs.par_iter())
        .with_min_len(rows_per_task(len))
        .for_each(|((o, (y, g)), &r)| {
            simd(
                #[inline(always)]
                || {
                    let mean_g = sum(g) / len as f32;
                    for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                        *o = g * y;
                    }
                    let mean_gy = sum(o) / len as f32;
                    for ((o, &y), &g) in o.iter_mut().zip(y).zip(g) {
                        *o = r * (g - mean_g - y * mean_gy);
                    }
                },
            )
        });
    Some(out)
}

/// Per-channel sums over the samples of an `[N, C, S]` tensor: `f(i, acc)`
/// fills `acc` (`width` floats) with sample i's contributions, one task per
/// sample; the N partial rows are then added up channel by channel (a loop
/// over contiguous channels, so it vectorises even when S = 1).
fn sample_sums(samples: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut partial = vec![0.0f32; samples * width];
    partial
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(i, acc)| f(i, acc));
    let mut total = vec![0.0f32; width];
    simd(
        #[inline(always)]
        || {
            for row in partial.chunks_exact(width) {
                for (t, &p) in total.iter_mut().zip(row) {
                    *t += p;
                }
            }
        },
    );
    total
}

/// Σ (x − mu)² with 16 independent partial sums (see [`sum`]).
#[inline(always)]
fn centered_square_sum(xs: &[f32], mu: f32) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest: f32 = chunks
        .remainder()
        .iter()
        .map(|&x| (x - mu) * (x - mu))
        .sum();
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l += (x - mu) * (x - mu);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// (Σ g, Σ g·(x − mu)) with 16 independent partial sums each.
#[inline(always)]
fn grad_sums(gs: &[f32], xs: &[f32], mu: f32) -> (f32, f32) {
    let (mut lanes_g, mut lanes_gx) = ([0.0f32; 16], [0.0f32; 16]);
    let (chunks_g, chunks_x) = (gs.chunks_exact(16), xs.chunks_exact(16));
    let (mut rest_g, mut rest_gx) = (0.0f32, 0.0f32);
    for (&g, &x) in chunks_g.remainder().iter().zip(chunks_x.remainder()) {
        rest_g += g;
        rest_gx += g * (x - mu);
    }
    for (cg, cx) in chunks_g.zip(chunks_x) {
        for (((lg, lgx), &g), &x) in lanes_g.iter_mut().zip(&mut lanes_gx).zip(cg).zip(cx) {
            *lg += g;
            *lgx += g * (x - mu);
        }
    }
    (
        lanes_g.iter().sum::<f32>() + rest_g,
        lanes_gx.iter().sum::<f32>() + rest_gx,
    )
}

/// `a` (`[N, C_a, …]`) and `b` (`[N, C_b, …]`) concatenated along the
/// channels, two block copies per sample, samples in parallel (burn's `cat`
/// copies on one thread); `None` unless both are f32 of matching shapes.
pub(super) fn cat_channels(a: &FlexTensor, b: &FlexTensor) -> Option<FlexTensor> {
    let (sa, sb) = (a.layout().shape(), b.layout().shape());
    let same_rest = sa.num_dims() == sb.num_dims()
        && sa.num_dims() >= 2
        && sa[0] == sb[0]
        && (2..sa.num_dims()).all(|d| sa[d] == sb[d]);
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 || !same_rest {
        return None;
    }
    let rest: usize = (2..sa.num_dims()).map(|d| sa[d]).product();
    let (len_a, len_b) = (sa[1] * rest, sb[1] * rest);
    let mut shape = sa.clone();
    shape[1] = sa[1] + sb[1];
    let (a, b) = (a.to_contiguous(), b.to_contiguous());
    let (xa, xb): (&[f32], &[f32]) = (a.as_slice()?, b.as_slice()?);
    Some(par_new(shape, len_a + len_b, |i, out| {
        out[..len_a].copy_from_slice(&xa[i * len_a..(i + 1) * len_a]);
        out[len_a..].copy_from_slice(&xb[i * len_b..(i + 1) * len_b]);
    }))
}

/// `grad` (`[N, C, …]`) split after its first `first` channels into two
/// new contiguous tensors, one block copy per sample each.
pub(super) fn split_channels(grad: &FlexTensor, first: usize) -> Option<(FlexTensor, FlexTensor)> {
    let shape = grad.layout().shape().clone();
    if grad.dtype() != DType::F32 || shape.num_dims() < 2 || first > shape[1] {
        return None;
    }
    let c = shape[1];
    let rest: usize = (2..shape.num_dims()).map(|d| shape[d]).product();
    let grad = grad.to_contiguous();
    let gs: &[f32] = grad.as_slice()?;
    let part = |channels: usize, offset: usize| {
        let mut dims = shape.clone();
        dims[1] = channels;
        let len = channels * rest;
        par_new(dims, len, |i, o| {
            o.copy_from_slice(&gs[i * c * rest + offset..][..len])
        })
    };
    Some((part(first, 0), part(c - first, first * rest)))
}

/// The inputs of a normalisation with a per-channel affine map, checked
/// and made contiguous: x a non-empty `[N, C, S]` f32 tensor, γ and β `[C]`
/// f32 vectors; with (N, C, S). `None` when they are not.
fn per_channel_affine(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
) -> Option<([FlexTensor; 3], [usize; 3])> {
    let shape = x.layout().shape();
    if [x, gamma, beta].iter().any(|t| t.dtype() != DType::F32) || shape.num_dims() != 3 {
        return None;
    }
    let (n, c, s) = (shape[0], shape[1], shape[2]);
    let per_channel = |t: &FlexTensor| t.layout().num_elements() == c;
    if n * c * s == 0 || !per_channel(gamma) || !per_channel(beta) {
        return None;
    }
    let inputs = [x, gamma, beta].map(FlexTensor::to_contiguous);
    Some((inputs, [n, c, s]))
}

/// Group normalisation of `x` `[N, C, S]` with per-channel γ and β, then
/// SiLU when `spec.silu` (see [`super::FusedOps::fused_group_norm`]): one
/// task per sample; each group's values are contiguous (channels
/// g·C/G.. of the sample), so its statistics are two sums over one slice
/// and the output one more pass. Returns (y, mean, rstd), the statistics
/// `[N·G]`.
pub(super) fn group_norm(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    spec: GroupNormSpec,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let ([x, gamma, beta], [n, c, s]) = per_channel_affine(x, gamma, beta)?;
    let groups = spec.groups;
    if groups == 0 || c % groups != 0 {
        return None;
    }
    let (xs, gammas, betas): (&[f32], &[f32], &[f32]) =
        (x.as_slice()?, gamma.as_slice()?, beta.as_slice()?);
    let shape = x.layout().shape().clone();
    // (mean, rstd) of every (sample, group).
    let mut stats = vec![0.0f32; 2 * n * groups];
    let out = par_new_with(shape, c * s, &mut stats, 2 * groups, |i, o, stats| {
        let x = &xs[i * c * s..(i + 1) * c * s];
        // Two copies of the loop, so neither tests `silu` per element.
        let sample = (gammas, betas, s, spec.eps);
        if spec.silu {
            simd(
                #[inline(always)]
                || group_norm_sample::<true>(o, x, stats, sample),
            )
        } else {
            simd(
                #[inline(always)]
                || group_norm_sample::<false>(o, x, stats, sample),
            )
        }
    });
    let mean: Vec<f32> = stats.iter().step_by(2).copied().collect();
    let rstd: Vec<f32> = stats.iter().skip(1).step_by(2).copied().collect();
    Some((out, vector(&mean), vector(&rstd)))
}

/// One sample of [`group_norm`]: `o` and `x` its `[C, S]` values, `stats`
/// its groups' (mean, rstd) pairs to fill; `SILU` applies SiLU. Inlined
/// into its caller's `simd` copy (an outlined function stays baseline SSE2).
#[inline(always)]
fn group_norm_sample<const SILU: bool>(
    o: &mut [f32],
    x: &[f32],
    stats: &mut [f32],
    (gammas, betas, s, eps): (&[f32], &[f32], usize, f32),
) {
    let groups = stats.len() / 2;
    let (len, per_group) = (x.len() / groups, gammas.len() / groups);
    let group_slices = o
        .chunks_exact_mut(len)
        .zip(x.chunks_exact(len))
        .zip(stats.chunks_exact_mut(2));
    for (g, ((o, x), stats)) in group_slices.enumerate() {
        // Two passes (mean, then squared deviations) for accuracy, as burn's var.
        let mean = sum(x) / len as f32;
        let rstd = 1.0 / (centered_square_sum(x, mean) / len as f32 + eps).sqrt();
        (stats[0], stats[1]) = (mean, rstd);
        let channels = g * per_group..(g + 1) * per_group;
        let affine = gammas[channels.clone()].iter().zip(&betas[channels]);
        for ((o, x), (&gamma, &beta)) in o.chunks_exact_mut(s).zip(x.chunks_exact(s)).zip(affine) {
            let scale = gamma * rstd;
            for (o, &x) in o.iter_mut().zip(x) {
                let z = (x - mean) * scale + beta;
                *o = if SILU { silu(z) } else { z };
            }
        }
    }
}

/// The gradients (dx, dγ, dβ) of [`group_norm`] (formulas at
/// [`super::FusedOps::fused_group_norm_backward`]). One task per sample,
/// two passes over it: the first writes dz (the gradient at γ·x̂ + β,
/// through SiLU) into dx's buffer and sums Σdz and Σdz·x̂ per channel; the
/// second turns dz into dx in place with the group's sums.
pub(super) fn group_norm_backward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    mean: &FlexTensor,
    rstd: &FlexTensor,
    grad: &FlexTensor,
    spec: GroupNormSpec,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let shape = x.layout().shape().clone();
    if [x, gamma, beta, mean, rstd, grad]
        .iter()
        .any(|t| t.dtype() != DType::F32)
        || shape.num_dims() != 3
        || grad.layout().shape() != &shape
    {
        return None;
    }
    let (n, c, s, groups) = (shape[0], shape[1], shape[2], spec.groups);
    if n * c * s == 0 || groups == 0 || c % groups != 0 {
        return None;
    }
    let (x, gamma, beta, mean, rstd, grad) = (
        x.to_contiguous(),
        gamma.to_contiguous(),
        beta.to_contiguous(),
        mean.to_contiguous(),
        rstd.to_contiguous(),
        grad.to_contiguous(),
    );
    let (xs, gs, gammas, betas): (&[f32], &[f32], &[f32], &[f32]) = (
        x.as_slice()?,
        grad.as_slice()?,
        gamma.as_slice()?,
        beta.as_slice()?,
    );
    let (means, rstds): (&[f32], &[f32]) = (mean.as_slice()?, rstd.as_slice()?);
    if gammas.len() != c
        || betas.len() != c
        || means.len() != n * groups
        || rstds.len() != n * groups
    {
        return None;
    }
    let mut dx = zeroed(shape);
    // Per sample: Σ dz per channel, then Σ dz·x̂ per channel.
    let mut partial = vec![0.0f32; n * 2 * c];
    dx.storage_mut::<f32>()
        .par_chunks_mut(c * s)
        .zip(xs.par_chunks(c * s).zip(gs.par_chunks(c * s)))
        .zip(partial.par_chunks_mut(2 * c))
        .zip(means.par_chunks(groups).zip(rstds.par_chunks(groups)))
        .for_each(|(((o, (x, g)), acc), stats)| {
            let sample = (gammas, betas, s);
            if spec.silu {
                simd(
                    #[inline(always)]
                    || group_norm_sample_backward::<true>(o, (x, g), acc, stats, sample),
                )
            } else {
                simd(
                    #[inline(always)]
                    || group_norm_sample_backward::<false>(o, (x, g), acc, stats, sample),
                )
            }
        });
    let mut sums = vec![0.0f32; 2 * c];
    for sample in partial.chunks_exact(2 * c) {
        for (t, p) in sums.iter_mut().zip(sample) {
            *t += p;
        }
    }
    let (dbeta, dgamma) = sums.split_at(c);
    Some((dx, vector(dgamma), vector(dbeta)))
}

/// One sample of [`group_norm_backward`]: `o` receives dx, (`x`, `g`) the
/// sample's input and output gradient, `acc` its per-channel (Σdz, Σdz·x̂),
/// `stats` its groups' means and rstds. Inlined into its caller's `simd` copy.
#[inline(always)]
fn group_norm_sample_backward<const SILU: bool>(
    o: &mut [f32],
    (x, g): (&[f32], &[f32]),
    acc: &mut [f32],
    (means, rstds): (&[f32], &[f32]),
    (gammas, betas, s): (&[f32], &[f32], usize),
) {
    let (c, groups) = (gammas.len(), means.len());
    let (per_group, len) = (c / groups, (c / groups) * s);
    let (acc_dz, acc_dzx) = acc.split_at_mut(c);
    for group in 0..groups {
        let (mu, r) = (means[group], rstds[group]);
        let channels = group * per_group..(group + 1) * per_group;
        for j in channels.clone() {
            let at = j * s..(j + 1) * s;
            let (gamma, beta) = (gammas[j], betas[j]);
            let dz_at = |x: f32, g: f32| {
                let xhat = (x - mu) * r;
                let dz = if SILU {
                    silu_grad(gamma * xhat + beta, g)
                } else {
                    g
                };
                (dz, xhat)
            };
            (acc_dz[j], acc_dzx[j]) = dz_sums(&x[at.clone()], &g[at.clone()], &mut o[at], dz_at);
        }
        // d = γ·dz; the group's means of d and d·x̂.
        let (mut sum_d, mut sum_dx) = (0.0f32, 0.0f32);
        for j in channels.clone() {
            sum_d += gammas[j] * acc_dz[j];
            sum_dx += gammas[j] * acc_dzx[j];
        }
        let (mean_d, mean_dx) = (sum_d / len as f32, sum_dx / len as f32);
        for j in channels {
            let at = j * s..(j + 1) * s;
            let k = gammas[j] * r;
            for (o, &x) in o[at.clone()].iter_mut().zip(&x[at]) {
                let xhat = (x - mu) * r;
                *o = k * *o - r * (mean_d + xhat * mean_dx);
            }
        }
    }
}

/// Writes dz = f(x, g).0 into `dz` and returns (Σ dz, Σ dz·x̂) with
/// (dz, x̂) = f(x, g), in 16 independent partial sums each (see [`sum`]).
#[inline(always)]
fn dz_sums(
    xs: &[f32],
    gs: &[f32],
    dz: &mut [f32],
    f: impl Fn(f32, f32) -> (f32, f32),
) -> (f32, f32) {
    let (mut lanes, mut lanes_x) = ([0.0f32; 16], [0.0f32; 16]);
    let whole = xs.len() / 16 * 16;
    let chunks = xs[..whole]
        .chunks_exact(16)
        .zip(gs[..whole].chunks_exact(16))
        .zip(dz[..whole].chunks_exact_mut(16));
    for ((x, g), d) in chunks {
        for i in 0..16 {
            let (v, xhat) = f(x[i], g[i]);
            d[i] = v;
            lanes[i] += v;
            lanes_x[i] += v * xhat;
        }
    }
    let (mut rest, mut rest_x) = (0.0f32, 0.0f32);
    for ((&x, &g), d) in xs[whole..].iter().zip(&gs[whole..]).zip(&mut dz[whole..]) {
        let (v, xhat) = f(x, g);
        *d = v;
        rest += v;
        rest_x += v * xhat;
    }
    (
        lanes.iter().sum::<f32>() + rest,
        lanes_x.iter().sum::<f32>() + rest_x,
    )
}

/// A new `[len]` f32 tensor holding `values`.
fn vector(values: &[f32]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values.to_vec(), [values.len()]))
}

/// Batch normalisation in training mode over `x` `[N, C, S]`: the batch
/// mean μ and biased variance σ² of every channel (over N·S values), and
/// y = (x − μ)·γ/√(σ² + eps) + β. Returns (y, μ `[C]`, σ² `[C]`), or
/// `None` for tensors it does not handle.
pub(super) fn batch_norm(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    eps: f32,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let ([x, gamma, beta], [n, c, s]) = per_channel_affine(x, gamma, beta)?;
    let (xs, gammas, betas): (&[f32], &[f32], &[f32]) =
        (x.as_slice()?, gamma.as_slice()?, beta.as_slice()?);
    let shape = x.layout().shape().clone();
    let count = (n * s) as f32;
    let sample = |i: usize| &xs[i * c * s..(i + 1) * c * s];

    // Two passes (mean, then squared deviations) for accuracy, as burn's var.
    let mean: Vec<f32> = sample_sums(n, c, |i, acc| {
        simd(
            #[inline(always)]
            || {
                for (a, row) in acc.iter_mut().zip(sample(i).chunks_exact(s)) {
                    *a = sum(row);
                }
            },
        )
    })
    .iter()
    .map(|total| total / count)
    .collect();
    let var: Vec<f32> = sample_sums(n, c, |i, acc| {
        simd(
            #[inline(always)]
            || {
                for ((a, row), &mu) in acc.iter_mut().zip(sample(i).chunks_exact(s)).zip(&mean) {
                    *a = centered_square_sum(row, mu);
                }
            },
        )
    })
    .iter()
    .map(|total| total / count)
    .collect();

    // Per channel, y = (x − μ)·scale + β with scale = γ·rstd.
    let scale: Vec<f32> = gammas
        .iter()
        .zip(&var)
        .map(|(g, v)| g / (v + eps).sqrt())
        .collect();
    let mut out = zeroed(shape);
    out.storage_mut::<f32>()
        .par_chunks_mut(c * s)
        .zip(xs.par_chunks(c * s))
        .for_each(|(o, x)| {
            simd(
                #[inline(always)]
                || {
                    let channels = mean.iter().zip(&scale).zip(betas);
                    for ((o, x), ((&mu, &k), &b)) in
                        o.chunks_exact_mut(s).zip(x.chunks_exact(s)).zip(channels)
                    {
                        for (o, &x) in o.iter_mut().zip(x) {
                            *o = (x - mu) * k + b;
                        }
                    }
                },
            )
        });
    Some((out, vector(&mean), vector(&var)))
}

/// The gradients (dx, dγ, dβ) of [`batch_norm`] from its input, its batch
/// statistics and the incoming gradient g. With x̂ = (x − μ)·rstd and M
/// values per channel: dβ = Σ g, dγ = Σ g·x̂, dx = γ·rstd·(g − dβ/M − x̂·dγ/M).
pub(super) fn batch_norm_backward(
    x: &FlexTensor,
    mean: &FlexTensor,
    var: &FlexTensor,
    gamma: &FlexTensor,
    grad: &FlexTensor,
    eps: f32,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let shape = x.layout().shape().clone();
    if [x, mean, var, gamma, grad]
        .iter()
        .any(|t| t.dtype() != DType::F32)
        || shape.num_dims() != 3
        || grad.layout().shape() != &shape
    {
        return None;
    }
    let (n, c, s) = (shape[0], shape[1], shape[2]);
    if n * c * s == 0 {
        return None;
    }
    let (x, mean, var, gamma, grad) = (
        x.to_contiguous(),
        mean.to_contiguous(),
        var.to_contiguous(),
        gamma.to_contiguous(),
        grad.to_contiguous(),
    );
    let (xs, gs): (&[f32], &[f32]) = (x.as_slice()?, grad.as_slice()?);
    let (means, vars, gammas): (&[f32], &[f32], &[f32]) =
        (mean.as_slice()?, var.as_slice()?, gamma.as_slice()?);
    if means.len() != c || vars.len() != c || gammas.len() != c {
        return None;
    }
    let count = (n * s) as f32;
    // One pass for both sums: acc[..c] = Σ g, acc[c..] = Σ g·(x − μ).
    let sums = sample_sums(n, 2 * c, |i, acc| {
        let (x, g) = (
            &xs[i * c * s..(i + 1) * c * s],
            &gs[i * c * s..(i + 1) * c * s],
        );
        let (acc_g, acc_gx) = acc.split_at_mut(c);
        simd(
            #[inline(always)]
            || {
                let rows = x.chunks_exact(s).zip(g.chunks_exact(s)).zip(means);
                for ((sg, sgx), ((x, g), &mu)) in acc_g.iter_mut().zip(acc_gx.iter_mut()).zip(rows)
                {
                    (*sg, *sgx) = grad_sums(g, x, mu);
                }
            },
        )
    });
    let rstd: Vec<f32> = vars.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let dbeta = &sums[..c];
    let dgamma: Vec<f32> = sums[c..]
        .iter()
        .zip(&rstd)
        .map(|(sgx, r)| sgx * r)
        .collect();
    // dx = k_g·g + k_x·(x − μ) + k_0 per channel.
    let k_g: Vec<f32> = gammas.iter().zip(&rstd).map(|(g, r)| g * r).collect();
    let k_x: Vec<f32> = (0..c)
        .map(|j| -k_g[j] * rstd[j] * dgamma[j] / count)
        .collect();
    let k_0: Vec<f32> = (0..c).map(|j| -k_g[j] * dbeta[j] / count).collect();
    let mut dx = zeroed(shape);
    dx.storage_mut::<f32>()
        .par_chunks_mut(c * s)
        .zip(xs.par_chunks(c * s).zip(gs.par_chunks(c * s)))
        .for_each(|(o, (x, g))| {
            simd(
                #[inline(always)]
                || {
                    let rows = o
                        .chunks_exact_mut(s)
                        .zip(x.chunks_exact(s))
                        .zip(g.chunks_exact(s));
                    for (j, ((o, x), g)) in rows.enumerate() {
                        let (mu, kg, kx, k0) = (means[j], k_g[j], k_x[j], k_0[j]);
                        for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
                            *o = kg * g + kx * (x - mu) + k0;
                        }
                    }
                },
            )
        });
    Some((dx, vector(&dgamma), vector(dbeta)))
}

/// The scalars of one Adam update (burn's `Adam` formulation, step t):
/// bias corrections folded into `combined` = √(1 − β₂ᵗ)/(1 − β₁ᵗ) and
/// `eps_scaled` = ε·√(1 − β₂ᵗ).
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamScalars {
    pub beta_1: f32,
    pub beta_2: f32,
    pub combined: f32,
    pub eps_scaled: f32,
    pub lr: f32,
}

/// `t` with its elements the whole of its buffer, in order: itself when it
/// already is (sharing the buffer only if `t` did), else a copy. With
/// `storage_mut` (copy on write) that gives in-place updates of buffers
/// nothing else holds, and a copy of those something else does.
fn whole_buffer(t: FlexTensor) -> FlexTensor {
    t.to_contiguous() // a clone when it already is; `t` itself is dropped here
}

/// Whether [`adam_step`] handles these tensors: all f32, of one shape.
pub(super) fn adam_handles(
    param: &FlexTensor,
    grad: &FlexTensor,
    moments: Option<(&FlexTensor, &FlexTensor)>,
) -> bool {
    let shape = param.layout().shape();
    let same = |t: &FlexTensor| t.dtype() == DType::F32 && t.layout().shape() == shape;
    same(param) && same(grad) && moments.is_none_or(|(m, v)| same(m) && same(v))
}

/// One Adam update of a parameter in one pass, in place where the buffers
/// allow: returns (θ', m', v') from θ, its gradient g and the moments
/// (`None` at the first step: zero). Each element goes through the same f32
/// operations, in the same order, as burn's `Adam` (which makes ~13 tensor
/// passes, each into a new buffer), so the result is bit-identical to it.
///
/// # Panics
/// Unless [`adam_handles`] the tensors.
pub(super) fn adam_step(
    param: FlexTensor,
    grad: &FlexTensor,
    moments: Option<(FlexTensor, FlexTensor)>,
    k: AdamScalars,
) -> (FlexTensor, FlexTensor, FlexTensor) {
    let handled = adam_handles(&param, grad, moments.as_ref().map(|(m, v)| (m, v)));
    assert!(handled, "adam_step: f32 tensors of one shape");
    let shape = param.layout().shape().clone();
    let grad = grad.to_contiguous();
    let gs: &[f32] = grad.as_slice().expect("contiguous f32");
    let mut param = whole_buffer(param);
    let fresh = moments.is_none();
    let (mut m, mut v) = match moments {
        Some((m, v)) => (whole_buffer(m), whole_buffer(v)),
        None => (zeroed(shape.clone()), zeroed(shape)),
    };
    let (one_minus_b1, one_minus_b2) = (1.0 - k.beta_1, 1.0 - k.beta_2);
    param
        .storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(gs.par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| {
            simd(
                #[inline(always)]
                || {
                    // The moments, as burn: m·β₁ + g·(1 − β₁), v·β₂ + g²·(1 − β₂).
                    for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
                        if fresh {
                            *m = g * one_minus_b1;
                            *v = (g * g) * one_minus_b2;
                        } else {
                            *m = *m * k.beta_1 + g * one_minus_b1;
                            *v = *v * k.beta_2 + (g * g) * one_minus_b2;
                        }
                    }
                    // θ − lr·(m·combined / (√v + ε·√(1 − β₂ᵗ))).
                    for ((p, &m), &v) in p.iter_mut().zip(m.iter()).zip(v.iter()) {
                        *p -= ((m * k.combined) / (v.sqrt() + k.eps_scaled)) * k.lr;
                    }
                },
            )
        });
    (param, m, v)
}

/// Runs `f` with this thread's scratch buffer number `slot` (0 or 1) of at
/// least `len` floats (contents unspecified); nested calls use different
/// slots (attention and convolution: 0 and 1 inside their tasks). Kernels reuse it across calls instead of
/// allocating fresh pages, which the kernel must zero, every time.
pub(super) fn with_scratch<R>(slot: usize, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    use std::cell::RefCell;
    thread_local! {
        static SCRATCH: [RefCell<Vec<f32>>; 2] = const { [RefCell::new(Vec::new()), RefCell::new(Vec::new())] };
    }
    SCRATCH.with(|slots| match slots[slot].try_borrow_mut() {
        Ok(mut buffer) => {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
            f(&mut buffer[..len])
        }
        // Already in use further up this thread's stack (a rayon worker
        // that stole a second kernel call while waiting): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Σ xs with 16 independent partial sums, so the loop vectorises (a single
/// running sum is a dependency chain the compiler may not reorder).
#[inline(always)]
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (l, x) in lanes.iter_mut().zip(chunk) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

/// Σ aᵢ·bᵢ over the shorter of `a` and `b`, with 16 independent partial
/// sums (as [`sum`]) added pairwise at the end, so a short product (a
/// 32-wide attention head) spends few instructions on the reduction.
#[inline(always)]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (a, b) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: f32 = a
        .remainder()
        .iter()
        .zip(b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in a.zip(b) {
        for ((l, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *l += x * y;
        }
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0] + rest
}

/// max xs (−∞ for none) with 16 independent partial maxima.
#[inline(always)]
pub(super) fn max(xs: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = xs.chunks_exact(16);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = if x > *l { x } else { *l };
        }
    }
    rest.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

/// eˣ in f32 without branches (Cephes `expf`: x = n·ln2 + r, |r| ≤ ln2/2,
/// a degree-6 polynomial for eʳ, 2ⁿ built in the exponent bits); within
/// 2 ulp of `f32::exp` on [−87, 88], and clamped outside it.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round x·log2(e) to the nearest integer with the 1.5·2²³ trick (no libm call).
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ: `shifted` is exactly 1.5·2²³ + n, so its bits are ROUND's plus n.
    // Integer operations on the bits vectorise; `n as i32` (a saturating
    // cast) compiled to one scalar conversion per lane.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5·10⁻⁷).
#[inline(always)]
pub(super) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let magnitude = 1.0 - poly * exp(-a * a);
    magnitude.copysign(x)
}

/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// x·Φ(x) with Φ(x) = ½(1 + erf(x/√2)).
#[inline(always)]
pub(super) fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// (Φ(x) + x·φ(x))·g.
#[inline(always)]
pub(super) fn gelu_grad(x: f32, g: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * exp(-0.5 * x * x);
    (cdf + x * pdf) * g
}

/// Softplus log(1 + eˣ) in the form that neither overflows nor loses small
/// values: max(x, 0) + log(1 + e^−|x|).
#[inline(always)]
pub(super) fn softplus(x: f32) -> f32 {
    x.max(0.0) + ln_1p_unit(exp(-x.abs()))
}

/// log(1 + e) for e in [0, 1], branch-free so the loop vectorises (libm's
/// `log1pf` is a scalar call): 2·atanh(s) with s = e/(2 + e) ≤ 1/3, its odd
/// series to s¹³ (the next term is below 1e-7).
#[inline(always)]
fn ln_1p_unit(e: f32) -> f32 {
    let s = e / (2.0 + e);
    let s2 = s * s;
    let series = 1.0
        + s2 * (1.0 / 3.0
            + s2 * (1.0 / 5.0
                + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 / 13.0)))));
    2.0 * s * series
}

/// The gradient of [`softplus`] times `g`: σ(x)·g.
#[inline(always)]
pub(super) fn softplus_grad(x: f32, g: f32) -> f32 {
    g / (1.0 + exp(-x))
}

/// x·σ(x), σ(x) = 1/(1 + e⁻ˣ) (exp clamps, so no overflow to NaN).
#[inline(always)]
pub(super) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// σ(x)·(1 + x·(1 − σ(x)))·g.
#[inline(always)]
pub(super) fn silu_grad(x: f32, g: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-x));
    s * (1.0 + x * (1.0 - s)) * g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_copies_compute_what_the_baseline_loop_does() {
        // The same element functions and row reductions, once through
        // `simd` (AVX-512 or AVX2 where the CPU has them) and once as the
        // baseline build's loop: bit for bit equal.
        let xs: Vec<f32> = (0..4099).map(|i| (i as f32 - 2050.0) * 0.0137).collect();
        let all = |x: f32, g: f32| {
            [
                gelu(x),
                gelu_grad(x, g),
                softplus(x),
                softplus_grad(x, g),
                silu(x),
                silu_grad(x, g),
                exp(x),
            ]
        };
        let run = |xs: &[f32]| -> (Vec<[f32; 7]>, f32, f32) {
            let values = xs.iter().map(|&x| all(x, 0.5 - x)).collect();
            (values, sum(xs), max(xs))
        };
        let plain = run(&xs);
        let vector = simd(
            #[inline(always)]
            || run(&xs),
        );
        assert_eq!(plain.1.to_bits(), vector.1.to_bits());
        assert_eq!(plain.2.to_bits(), vector.2.to_bits());
        for (i, (a, b)) in plain.0.iter().zip(&vector.0).enumerate() {
            for (a, b) in a.iter().zip(b) {
                assert_eq!(a.to_bits(), b.to_bits(), "element {i}");
            }
        }
    }

    #[test]
    fn exp_and_erf_are_accurate_over_their_range() {
        let mut worst_exp = 0.0f32;
        let mut worst_erf = 0.0f64;
        for i in -87_000..=88_000 {
            let x = i as f32 / 1000.0;
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst_exp = worst_exp.max(rel);
            if x.abs() < 8.0 {
                let reference = libm_erf(x as f64);
                worst_erf = worst_erf.max((erf(x) as f64 - reference).abs());
            }
        }
        assert!(worst_exp < 3e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
        assert_eq!(exp(-1000.0), (-87.0f32).exp());
        assert!(exp(f32::NAN).is_nan());
        assert!(silu(-1000.0).abs() < 1e-30 && silu(1000.0) == 1000.0);
    }

    #[test]
    fn ln_1p_is_accurate_on_the_unit_interval() {
        let worst = (0..=100_000)
            .map(|i| i as f64 / 100_000.0)
            .map(|e| {
                let reference = e.ln_1p();
                ((ln_1p_unit(e as f32) as f64 - reference) / reference.max(f64::MIN_POSITIVE)).abs()
            })
            .fold(0.0, f64::max);
        assert!(worst < 5e-7, "log1p relative error {worst}");
        // Tiny arguments keep their relative accuracy (softplus of very negative x).
        assert!((ln_1p_unit(1e-30) / 1e-30 - 1.0).abs() < 1e-6);
    }

    /// erf in f64 by its Maclaurin series / continued fraction, as a reference.
    fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/√π Σ (−1)ⁿ x^(2n+1) / (n! (2n+1)), converges fast for |x| < 3;
        // beyond, 1 − erfc by the continued fraction.
        if x.abs() < 3.0 {
            let mut sum = 0.0;
            let mut term = x;
            for n in 0..200 {
                sum += term / (2 * n + 1) as f64;
                term *= -x * x / (n + 1) as f64;
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            let a = x.abs();
            let mut f = 0.0;
            for k in (1..200).rev() {
                f = (k as f64 / 2.0) / (a + f);
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f);
            (1.0 - erfc).copysign(x)
        }
    }
}
