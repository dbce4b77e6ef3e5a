//! Causal attention on the CPU backend: one rayon task per (batch, head),
//! each a few GEMMs on that head's `[T, T]` scores, which never leave the
//! task. The forward keeps the log-sum-exp of each score row; the backward
//! recomputes the probabilities from it (as FlashAttention does) instead of
//! storing them.
//!
//! The GEMMs run over blocks of [`BLOCK`] rows (queries) or columns (keys)
//! and stop at the diagonal: query block [r0, r1) only meets keys 0..r1, so
//! the masked upper triangle is neither computed nor read (about half the
//! work at gpt-pixel's T = 785).

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::kernels::{self, zeroed};

/// A row-major matrix view, or its transpose, over a slice.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Distance between rows and between columns, in elements.
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous row-major `rows × cols` matrix.
    pub(super) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols);
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A row-major `rows × cols` matrix whose rows start `row_stride`
    /// elements apart (a block of a wider matrix).
    pub(super) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let m = Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        };
        m.assert_in_bounds();
        m
    }

    /// The same data read as the transpose.
    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The largest index read, checked against the slice before any
    /// unchecked access.
    fn assert_in_bounds(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// dst (row-major `lhs.rows × rhs.cols`) = scale · lhs · rhs, or
/// dst + scale · lhs · rhs with `accumulate`, on this thread.
pub(super) fn matmul_into(dst: &mut [f32], lhs: Mat, rhs: Mat, scale: f32, accumulate: bool) {
    matmul(
        dst,
        rhs.cols,
        lhs,
        rhs,
        scale,
        accumulate,
        Parallelism::None,
    )
}

/// [`matmul_into`] with the destination's rows `dst_stride` elements apart.
fn matmul_into_strided(dst: &mut [f32], dst_stride: usize, lhs: Mat, rhs: Mat, scale: f32) {
    matmul(dst, dst_stride, lhs, rhs, scale, false, Parallelism::None)
}

fn matmul(
    dst: &mut [f32],
    dst_stride: usize,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "inner dimensions");
    assert!(dst_stride >= n, "destination rows overlap");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst.len() >= (m - 1) * dst_stride + n,
        "destination too small"
    );
    lhs.assert_in_bounds();
    rhs.assert_in_bounds();
    // SAFETY: every index gemm reads or writes is inside the slices, checked
    // above; dst does not alias lhs or rhs (it is a unique borrow).
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_stride as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Where the `[T, D]` matrix of each (batch, head) lives in a buffer: row t
/// of head (b, h) starts at `offset + b·batch + h·head + t·row`, its D values
/// side by side.
#[derive(Clone, Copy, Debug)]
struct Heads {
    offset: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl Heads {
    /// A contiguous `[B, H, T, D]` tensor.
    fn split([_, h, t, d]: [usize; 4]) -> Self {
        Self {
            offset: 0,
            batch: h * t * d,
            head: t * d,
            row: d,
        }
    }

    /// Part `part` of `parts` tensors packed side by side along the last
    /// dimension of a contiguous `[B, T, parts·H·D]` tensor: the model's own
    /// layout (q, k, v out of one linear layer; heads re-assembled).
    fn packed([_, h, t, d]: [usize; 4], parts: usize, part: usize) -> Self {
        let c = h * d;
        Self {
            offset: part * c,
            batch: t * parts * c,
            head: d,
            row: parts * c,
        }
    }

    /// The first element of head `n` (= b·H + h).
    fn start(&self, n: usize, heads: usize) -> usize {
        self.offset + (n / heads) * self.batch + (n % heads) * self.head
    }

    /// Copies head `n`'s `[T, D]` matrix out of `src` into `dst`.
    fn gather(&self, src: &[f32], n: usize, [_, h, t, d]: [usize; 4], dst: &mut [f32]) {
        let start = self.start(n, h);
        for (i, row) in dst[..t * d].chunks_exact_mut(d).enumerate() {
            let at = start + i * self.row;
            row.copy_from_slice(&src[at..at + d]);
        }
    }
}

/// An output buffer that parallel tasks fill, each its own heads' rows
/// (disjoint by construction: one task per head).
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: tasks write disjoint elements (`scatter` is called once per head,
// and heads never share an element), and the buffer outlives the tasks.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn new(buffer: &mut [f32]) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
        }
    }

    /// Writes head `n`'s `[T, D]` matrix `src` into its place.
    ///
    /// # Safety
    /// No other task writes head `n` of this layout, and no two heads of
    /// the layouts written through this buffer overlap.
    unsafe fn scatter(&self, heads: Heads, n: usize, [_, h, t, d]: [usize; 4], src: &[f32]) {
        let start = heads.start(n, h);
        assert!(
            t == 0 || start + (t - 1) * heads.row + d <= self.len,
            "head out of bounds"
        );
        for (i, row) in src[..t * d].chunks_exact(d).enumerate() {
            // SAFETY: in bounds (checked above); disjoint from every other
            // task's writes (the caller's contract).
            unsafe {
                std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add(start + i * heads.row), d)
            };
        }
    }
}

/// The shape `[B, H, T, D]` of four-dimensional f32 tensors, or `None`.
fn heads_shape(tensors: &[&FlexTensor]) -> Option<[usize; 4]> {
    let first = tensors[0].layout().shape();
    if first.num_dims() != 4 {
        return None;
    }
    let dims = [first[0], first[1], first[2], first[3]];
    tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.layout().shape() == first)
        .then_some(dims)
}

/// `[B, H, T, D]` of a packed `[B, T, 3·H·D]` f32 tensor, or `None`.
fn packed_shape(qkv: &FlexTensor, n_head: usize) -> Option<[usize; 4]> {
    let shape = qkv.layout().shape();
    if qkv.dtype() != DType::F32 || shape.num_dims() != 3 || n_head == 0 {
        return None;
    }
    let c3 = shape[2];
    c3.is_multiple_of(3 * n_head)
        .then_some([shape[0], n_head, shape[1], c3 / (3 * n_head)])
}

fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// Dropout's `[B, H, T, T]` f32 multipliers for heads of `dims`,
/// contiguous: `Some(None)` without a mask, `None` for a mask of another
/// shape or type.
fn keep_mask(keep: Option<&FlexTensor>, [b, h, t, _]: [usize; 4]) -> Option<Option<FlexTensor>> {
    match keep {
        None => Some(None),
        Some(m) if m.dtype() == DType::F32 && m.layout().shape().as_slice() == [b, h, t, t] => {
            Some(Some(contiguous(m)))
        }
        Some(_) => None,
    }
}

/// Rows (or columns) per block of the score matrix: a GEMM stops at the
/// diagonal block, so the masked triangle costs at most half a block per row.
const BLOCK: usize = 64;

/// The blocks `[start, end)` of `0..t`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |start| (start, (start + BLOCK).min(t)))
}

/// The scores of query rows `r0..r1` against keys `0..r1`, scaled, into
/// rows `r0..r1` of the `[T, T]` matrix `scores` (columns ≥ r1 untouched).
fn block_scores(
    scores: &mut [f32],
    q: &[f32],
    k: &[f32],
    (r0, r1): (usize, usize),
    t: usize,
    d: usize,
    scale: f32,
) {
    let (q, k) = (Mat::new(&q[r0 * d..], r1 - r0, d), Mat::new(k, r1, d));
    matmul_into_strided(&mut scores[r0 * t..], t, q, k.t(), scale);
}

/// Each score replaced by e^(score − max), softmax's numerator, in place;
/// returns the max and the sum of the new values (its denominator).
#[inline(always)] // into its caller's `simd` copy
fn exp_shifted(scores: &mut [f32]) -> (f32, f32) {
    let max = kernels::max(scores);
    for s in scores.iter_mut() {
        *s = kernels::exp(*s - max);
    }
    (max, kernels::sum(scores))
}

/// Softmax of the causal part of rows `r0..r1` of `scores` (`[T, T]`, row
/// i keeps columns 0..=i) in place, zeroing columns i+1..r1; writes each
/// row's log-sum-exp into `lse` (indexed by row).
#[inline(always)] // into its caller's `simd` copy
fn causal_softmax(scores: &mut [f32], lse: &mut [f32], (r0, r1): (usize, usize), t: usize) {
    for i in r0..r1 {
        let (seen, future) = scores[i * t..i * t + r1].split_at_mut(i + 1);
        let (max, sum) = exp_shifted(seen);
        let inv = 1.0 / sum;
        for s in seen.iter_mut() {
            *s *= inv;
        }
        future.fill(0.0);
        lse[i] = max + sum.ln();
    }
}

/// Multiply-adds (about T²·D a head) that a task of [`forward_heads`] takes
/// at least: a batch-1 window of 64 tokens (4 heads of 64 × 32) is one
/// task, which ends before a woken worker would have started; training
/// batches still spread over every core.
const HEAD_TASK_WORK: usize = 1 << 20;

/// Rows `r0..r1` of `p` (`[T, T]`, causal part filled) multiplied by
/// dropout's `keep` on their causal part (row i, columns 0..=i).
#[inline(always)] // into its caller's `simd` copy
fn drop_rows(p: &mut [f32], keep: &[f32], (r0, r1): (usize, usize), t: usize) {
    for i in r0..r1 {
        let row = i * t..i * t + i + 1;
        for (p, &m) in p[row.clone()].iter_mut().zip(&keep[row]) {
            *p *= m;
        }
    }
}

/// Attention head by head, in tasks of at least [`HEAD_TASK_WORK`] (one
/// head each when heads are large): q, k, v gathered from their layouts,
/// the output scattered into `out` at `out_heads`, the log-sum-exp into
/// `lse` (`[B, H, T]`, contiguous). With `keep` (`[B, H, T, T]`,
/// contiguous: dropout's 0 or 1/(1 − p)), each probability is multiplied by
/// its entry before it weighs V; the log-sum-exp is the undropped one's.
#[allow(clippy::too_many_arguments)]
fn forward_heads(
    [(qs, qh), (ks, kh), (vs, vh)]: [(&[f32], Heads); 3],
    keep: Option<&[f32]>,
    out: &mut [f32],
    out_heads: Heads,
    lse: &mut [f32],
    dims: [usize; 4],
    scale: f32,
) {
    let [_, _, t, d] = dims;
    let out = SharedOut::new(out);
    lse.par_chunks_mut(t.max(1))
        .enumerate()
        .with_min_len(HEAD_TASK_WORK.div_ceil((t * t * d).max(1)))
        .for_each(|(n, lse)| {
            kernels::with_scratch(0, 4 * t * d + t * t, |scratch| {
                kernels::simd(
                    #[inline(always)]
                    || {
                        let (q, rest) = scratch.split_at_mut(t * d);
                        let (k, rest) = rest.split_at_mut(t * d);
                        let (v, rest) = rest.split_at_mut(t * d);
                        let (o, p) = rest.split_at_mut(t * d);
                        qh.gather(qs, n, dims, q);
                        kh.gather(ks, n, dims, k);
                        vh.gather(vs, n, dims, v);
                        let keep = keep.map(|m| &m[n * t * t..(n + 1) * t * t]);
                        for (r0, r1) in blocks(t) {
                            block_scores(p, q, k, (r0, r1), t, d, scale);
                            causal_softmax(p, lse, (r0, r1), t);
                            if let Some(keep) = keep {
                                drop_rows(p, keep, (r0, r1), t);
                            }
                            let probs = Mat::strided(&p[r0 * t..], r1 - r0, r1, t);
                            let o = &mut o[r0 * d..r1 * d];
                            matmul_into(o, probs, Mat::new(v, r1, d), 1.0, false);
                        }
                        // SAFETY: this task alone writes head n.
                        unsafe { out.scatter(out_heads, n, dims, o) };
                    },
                );
            })
        });
}

/// softmax(Q·Kᵀ·scale, causal)·V for `[B, H, T, D]` tensors: the output and
/// the log-sum-exp of each score row (`[B, H, T]`). `None` unless q, k, v are
/// f32 tensors of one four-dimensional shape.
pub(super) fn forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    scale: f32,
) -> Option<(FlexTensor, FlexTensor)> {
    let dims @ [b, h, t, d] = heads_shape(&[q, k, v])?;
    let (q, k, v) = (contiguous(q), contiguous(k), contiguous(v));
    let split = Heads::split(dims);
    let mut out = zeroed(Shape::new([b, h, t, d]));
    let mut lse = zeroed(Shape::new([b, h, t]));
    forward_heads(
        [
            (q.as_slice()?, split),
            (k.as_slice()?, split),
            (v.as_slice()?, split),
        ],
        None,
        out.storage_mut::<f32>(),
        split,
        lse.storage_mut::<f32>(),
        dims,
        scale,
    );
    Some((out, lse))
}

/// Total multiply-adds of a cached attention call below which it runs on
/// the calling thread: a batch-1 generation step (4 heads of 32 over at most
/// a few hundred positions) is over before rayon would have handed it out.
const CACHED_PARALLEL_WORK: usize = 1 << 16;

/// Attention of the T queries `q` (`[B, H, T, D]`, the positions
/// seen − T..seen) over the first `seen` positions of the key and value
/// caches (`[B, H, capacity, D]`), query i seeing positions 0..=seen − T + i,
/// scale 1/√D: `[B, H, T, D]`. `None` unless the shapes fit.
///
/// This is generation's attention, T = 1 at every step after the prompt:
/// each query is one pass of dot products over its head's keys and one of
/// multiply-adds over its values, read straight from the cache. Such a step
/// is bound by reading the cache (64 gpt-pixel images at position 400: 100 MB
/// per token), so the kernel reads each key and value once and copies
/// nothing (burn's attention runs a GEMM per head, whose set-up outweighs a
/// one-row product).
pub(super) fn cached_forward(
    q: &FlexTensor,
    key: &FlexTensor,
    value: &FlexTensor,
    seen: usize,
) -> Option<FlexTensor> {
    let dims @ [b, h, t, d] = heads_shape(&[q])?;
    let [cb, ch, capacity, cd] = heads_shape(&[key, value])?;
    if [cb, ch, cd] != [b, h, d] || t > seen || seen > capacity {
        return None;
    }
    let (q, key, value) = (contiguous(q), contiguous(key), contiguous(value));
    let (qs, ks, vs): (&[f32], &[f32], &[f32]) =
        (q.as_slice()?, key.as_slice()?, value.as_slice()?);
    let scale = 1.0 / (d as f32).sqrt();
    let head = |(n, out): (usize, &mut [f32])| {
        let keys = &ks[n * capacity * d..][..seen * d];
        let values = &vs[n * capacity * d..][..seen * d];
        let queries = &qs[n * t * d..][..t * d];
        kernels::with_scratch(0, seen, |scores| {
            kernels::simd(
                #[inline(always)]
                || {
                    let rows = queries.chunks_exact(d).zip(out.chunks_exact_mut(d));
                    for (i, (q, o)) in rows.enumerate() {
                        let scores = &mut scores[..seen - t + i + 1];
                        for (s, k) in scores.iter_mut().zip(keys.chunks_exact(d)) {
                            *s = kernels::dot(q, k) * scale;
                        }
                        let inv = 1.0 / exp_shifted(scores).1;
                        for (&p, v) in scores.iter().zip(values.chunks_exact(d)) {
                            for (o, &v) in o.iter_mut().zip(v) {
                                *o += p * v;
                            }
                        }
                        for o in o.iter_mut() {
                            *o *= inv;
                        }
                    }
                },
            )
        })
    };
    let mut out = zeroed(Shape::new(dims));
    if t > 0 {
        let heads = out.storage_mut::<f32>();
        if b * h * t * seen * d >= CACHED_PARALLEL_WORK {
            heads.par_chunks_mut(t * d).enumerate().for_each(head);
        } else {
            heads.chunks_mut(t * d).enumerate().for_each(head);
        }
    }
    Some(out)
}

/// Causal self-attention (scale 1/√(head size)) straight from the packed
/// `[B, T, 3·C]` output of the q/k/v projection to the heads re-assembled as
/// `[B, T, C]`, with the log-sum-exp (`[B, H, T]`): no split, transpose or
/// merge copies. `keep` (`[B, H, T, T]`) applies dropout to the attention
/// weights, as in [`forward_heads`].
pub(super) fn packed_forward(
    qkv: &FlexTensor,
    keep: Option<&FlexTensor>,
    n_head: usize,
) -> Option<(FlexTensor, FlexTensor)> {
    let dims @ [b, h, t, d] = packed_shape(qkv, n_head)?;
    let scale = 1.0 / (d as f32).sqrt();
    let keep = keep_mask(keep, dims)?;
    let qkv = contiguous(qkv);
    let src = qkv.as_slice()?;
    let part = |i| (src, Heads::packed(dims, 3, i));
    let mut out = zeroed(Shape::new([b, t, h * d]));
    let mut lse = zeroed(Shape::new([b, h, t]));
    forward_heads(
        [part(0), part(1), part(2)],
        keep.as_ref().map(|m| m.as_slice().expect("contiguous f32")),
        out.storage_mut::<f32>(),
        Heads::packed(dims, 1, 0),
        lse.storage_mut::<f32>(),
        dims,
        scale,
    );
    Some((out, lse))
}

/// One head's backward: `p` and `ds` are `[T, T]` scratch; `keep` the
/// head's dropout multipliers (`[T, T]`), if any.
#[inline(always)] // into its caller's `simd` copy
fn head_backward<'s>(
    [q, k, v, o, g]: [&'s [f32]; 5],
    keep: Option<&[f32]>,
    lse: &[f32],
    [dq, dk, dv]: [&mut [f32]; 3],
    (p, ds): (&'s mut [f32], &'s mut [f32]),
    (t, d, scale): (usize, usize, f32),
) {
    // Query blocks: P = exp(S − lse) on the causal part, dP = dO·Vᵀ, then
    // dS = P ∘ (dP − rowsum(dO ∘ O)) in place, and dQ = scale·dS·K. With
    // dropout's multipliers M (O = (P ∘ M)·V): dP = (dO·Vᵀ) ∘ M, the same
    // row sums (Σⱼ Pᵢⱼ·dPᵢⱼ is still dOᵢ·Oᵢ), and P ∘ M kept for dV.
    for (r0, r1) in blocks(t) {
        block_scores(p, q, k, (r0, r1), t, d, scale);
        for i in r0..r1 {
            let (seen, future) = p[i * t..i * t + r1].split_at_mut(i + 1);
            let l = lse[i];
            for s in seen.iter_mut() {
                *s = kernels::exp(*s - l);
            }
            future.fill(0.0);
        }
        let g_rows = Mat::new(&g[r0 * d..], r1 - r0, d);
        matmul_into_strided(&mut ds[r0 * t..], t, g_rows, Mat::new(v, r1, d).t(), 1.0);
        for i in r0..r1 {
            let row_dot: f32 = g[i * d..(i + 1) * d]
                .iter()
                .zip(&o[i * d..(i + 1) * d])
                .map(|(a, b)| a * b)
                .sum();
            let (ds_row, p_row) = (&mut ds[i * t..i * t + r1], &p[i * t..i * t + r1]);
            if let Some(keep) = keep {
                for (s, &m) in ds_row.iter_mut().zip(&keep[i * t..i * t + r1]) {
                    *s *= m;
                }
            }
            for (s, &pr) in ds_row.iter_mut().zip(p_row) {
                *s = pr * (*s - row_dot);
            }
        }
        if let Some(keep) = keep {
            drop_rows(p, keep, (r0, r1), t);
        }
        let ds_rows = Mat::strided(&ds[r0 * t..], r1 - r0, r1, t);
        matmul_into(
            &mut dq[r0 * d..r1 * d],
            ds_rows,
            Mat::new(k, r1, d),
            scale,
            false,
        );
    }
    // Key blocks: key j meets queries j..T, so columns c0..c1 of P and dS
    // are read from row c0 down (the blocks above hold no causal entries).
    let (p, ds) = (&*p, &*ds);
    for (c0, c1) in blocks(t) {
        let below = |m: &'s [f32]| Mat::strided(&m[c0 * t + c0..], t - c0, c1 - c0, t).t();
        let rows = |m: &'s [f32]| Mat::new(&m[c0 * d..], t - c0, d);
        // dV = (P ∘ M)ᵀ·dO; dK = scale·dSᵀ·Q.
        matmul_into(&mut dv[c0 * d..c1 * d], below(p), rows(g), 1.0, false);
        matmul_into(&mut dk[c0 * d..c1 * d], below(ds), rows(q), scale, false);
    }
}

/// One task per head: q, k, v, the output and its gradient gathered from
/// their layouts, dQ, dK, dV scattered into `outs` at their layouts.
fn backward_heads(
    inputs: [(&[f32], Heads); 5],
    keep: Option<&[f32]>,
    lse: &[f32],
    outs: [(&SharedOut, Heads); 3],
    dims: [usize; 4],
    scale: f32,
) {
    let [b, h, t, d] = dims;
    (0..b * h).into_par_iter().for_each(|n| {
        kernels::with_scratch(0, 8 * t * d, |mats| {
            kernels::with_scratch(1, 2 * t * t, |scores| {
                kernels::simd(
                    #[inline(always)]
                    || {
                        let (gathered, grads) = mats.split_at_mut(5 * t * d);
                        let mut parts = gathered.chunks_exact_mut(t * d);
                        let mut take = || parts.next().expect("five matrices");
                        let [q, k, v, o, g] = [take(), take(), take(), take(), take()];
                        for ((src, heads), dst) in inputs.iter().zip([&mut *q, k, v, o, g]) {
                            heads.gather(src, n, dims, dst);
                        }
                        let (dq, rest) = grads.split_at_mut(t * d);
                        let (dk, dv) = rest.split_at_mut(t * d);
                        let (p, ds) = scores.split_at_mut(t * t);
                        let lse = &lse[n * t..(n + 1) * t];
                        let keep = keep.map(|m| &m[n * t * t..(n + 1) * t * t]);
                        head_backward(
                            [q, k, v, o, g],
                            keep,
                            lse,
                            [dq, dk, dv],
                            (p, ds),
                            (t, d, scale),
                        );
                        for ((out, heads), grad) in outs.iter().zip([&*dq, dk, dv]) {
                            // SAFETY: this task alone writes head n of each layout,
                            // and the three layouts do not overlap.
                            unsafe { out.scatter(*heads, n, dims, grad) };
                        }
                    },
                )
            });
        })
    });
}

/// The gradients (dQ, dK, dV) of [`forward`] given the output gradient,
/// recomputing the probabilities from the saved log-sum-exp.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    out: &FlexTensor,
    lse: &FlexTensor,
    grad: &FlexTensor,
    scale: f32,
) -> Option<(FlexTensor, FlexTensor, FlexTensor)> {
    let dims @ [b, h, t, d] = heads_shape(&[q, k, v, out, grad])?;
    let [q, k, v, out, lse, grad] = [q, k, v, out, lse, grad].map(contiguous);
    let split = Heads::split(dims);
    let shape = || Shape::new([b, h, t, d]);
    let mut dq = zeroed(shape());
    let mut dk = zeroed(shape());
    let mut dv = zeroed(shape());
    let (sq, sk, sv) = (
        SharedOut::new(dq.storage_mut::<f32>()),
        SharedOut::new(dk.storage_mut::<f32>()),
        SharedOut::new(dv.storage_mut::<f32>()),
    );
    backward_heads(
        [
            (q.as_slice()?, split),
            (k.as_slice()?, split),
            (v.as_slice()?, split),
            (out.as_slice()?, split),
            (grad.as_slice()?, split),
        ],
        None,
        lse.as_slice()?,
        [(&sq, split), (&sk, split), (&sv, split)],
        dims,
        scale,
    );
    Some((dq, dk, dv))
}

/// The gradient of [`packed_forward`] with respect to its packed input
/// (`[B, T, 3·C]`), from the input, dropout's multipliers (if any), the
/// output (`[B, T, C]`), the log-sum-exp and the output's gradient.
pub(super) fn packed_backward(
    qkv: &FlexTensor,
    keep: Option<&FlexTensor>,
    out: &FlexTensor,
    lse: &FlexTensor,
    grad: &FlexTensor,
    n_head: usize,
) -> Option<FlexTensor> {
    let dims @ [b, h, t, d] = packed_shape(qkv, n_head)?;
    let scale = 1.0 / (d as f32).sqrt();
    let merged = [b, t, h * d];
    let f32_of_shape = |x: &FlexTensor, shape: &[usize]| {
        x.dtype() == DType::F32 && x.layout().shape().as_slice() == shape
    };
    if !f32_of_shape(out, &merged) || !f32_of_shape(grad, &merged) || !f32_of_shape(lse, &[b, h, t])
    {
        return None;
    }
    let keep = keep_mask(keep, dims)?;
    let [qkv, out, lse, grad] = [qkv, out, lse, grad].map(contiguous);
    let src = qkv.as_slice()?;
    let mut dqkv = zeroed(qkv.layout().shape().clone());
    let shared = SharedOut::new(dqkv.storage_mut::<f32>());
    let (part, whole) = (|i| Heads::packed(dims, 3, i), Heads::packed(dims, 1, 0));
    backward_heads(
        [
            (src, part(0)),
            (src, part(1)),
            (src, part(2)),
            (out.as_slice()?, whole),
            (grad.as_slice()?, whole),
        ],
        keep.as_ref().map(|m| m.as_slice().expect("contiguous f32")),
        lse.as_slice()?,
        [(&shared, part(0)), (&shared, part(1)), (&shared, part(2))],
        dims,
        scale,
    );
    Some(dqkv)
}
