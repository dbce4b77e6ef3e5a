//! Causal attention on the CPU backend: one rayon task per (batch, head),
//! each a few GEMMs on that head's `[T, T]` scores, which never leave the
//! task. The forward keeps the log-sum-exp of each score row; the backward
//! recomputes the probabilities from it (as FlashAttention does) instead of
//! storing them.

use burn::tensor::{DType, Shape};
use burn_flex::FlexTensor;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::kernels;

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
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(k, rhs.rows, "inner dimensions");
    assert!(dst.len() >= m * n, "destination too small");
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
            n as isize,
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
            Parallelism::None,
        );
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

fn contiguous(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// Softmax of the causal part of each row of `scores` (`[T, T]`, row i
/// keeps columns 0..=i) in place, zeroing the rest; returns nothing but
/// writes each row's log-sum-exp into `lse`.
fn causal_softmax(scores: &mut [f32], lse: &mut [f32], t: usize) {
    for (i, row) in scores.chunks_exact_mut(t).enumerate() {
        let (seen, future) = row.split_at_mut(i + 1);
        let max = kernels::max(seen);
        for s in seen.iter_mut() {
            *s = kernels::exp(*s - max);
        }
        let sum = kernels::sum(seen);
        let inv = 1.0 / sum;
        for s in seen.iter_mut() {
            *s *= inv;
        }
        future.fill(0.0);
        lse[i] = max + sum.ln();
    }
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
    let [b, h, t, d] = heads_shape(&[q, k, v])?;
    let (q, k, v) = (contiguous(q), contiguous(k), contiguous(v));
    let (qs, ks, vs): (&[f32], &[f32], &[f32]) = (q.as_slice()?, k.as_slice()?, v.as_slice()?);
    let mut out = FlexTensor::empty(Shape::new([b, h, t, d]), DType::F32);
    let mut lse = FlexTensor::empty(Shape::new([b, h, t]), DType::F32);
    out.storage_mut::<f32>()
        .par_chunks_mut(t * d)
        .zip(lse.storage_mut::<f32>().par_chunks_mut(t))
        .enumerate()
        .for_each(|(head, (out, lse))| {
            let at = head * t * d..(head + 1) * t * d;
            let (q, k, v) = (&qs[at.clone()], &ks[at.clone()], &vs[at]);
            kernels::with_scratch(0, t * t, |p| {
                matmul_into(p, Mat::new(q, t, d), Mat::new(k, t, d).t(), scale, false);
                causal_softmax(p, lse, t);
                matmul_into(out, Mat::new(p, t, t), Mat::new(v, t, d), 1.0, false);
            });
        });
    Some((out, lse))
}

/// One head's backward: `p` and `ds` are `[T, T]` scratch.
#[allow(clippy::too_many_arguments)]
fn head_backward(
    [q, k, v, o, g]: [&[f32]; 5],
    lse: &[f32],
    [dq, dk, dv]: [&mut [f32]; 3],
    p: &mut [f32],
    ds: &mut [f32],
    t: usize,
    d: usize,
    scale: f32,
) {
    // P = exp(S − lse) on the causal part.
    matmul_into(p, Mat::new(q, t, d), Mat::new(k, t, d).t(), scale, false);
    for (i, row) in p.chunks_exact_mut(t).enumerate() {
        let (seen, future) = row.split_at_mut(i + 1);
        let l = lse[i];
        for s in seen.iter_mut() {
            *s = kernels::exp(*s - l);
        }
        future.fill(0.0);
    }
    // dV = Pᵀ·dO.
    matmul_into(dv, Mat::new(p, t, t).t(), Mat::new(g, t, d), 1.0, false);
    // dP = dO·Vᵀ, then dS = P ∘ (dP − rowsum(dO ∘ O)), in place.
    matmul_into(ds, Mat::new(g, t, d), Mat::new(v, t, d).t(), 1.0, false);
    for i in 0..t {
        let row_dot: f32 = g[i * d..(i + 1) * d]
            .iter()
            .zip(&o[i * d..(i + 1) * d])
            .map(|(a, b)| a * b)
            .sum();
        let (ds_row, p_row) = (&mut ds[i * t..(i + 1) * t], &p[i * t..(i + 1) * t]);
        for (s, &pr) in ds_row.iter_mut().zip(p_row) {
            *s = pr * (*s - row_dot);
        }
    }
    // dQ = scale·dS·K; dK = scale·dSᵀ·Q.
    matmul_into(dq, Mat::new(ds, t, t), Mat::new(k, t, d), scale, false);
    matmul_into(dk, Mat::new(ds, t, t).t(), Mat::new(q, t, d), scale, false);
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
    let [b, h, t, d] = heads_shape(&[q, k, v, out, grad])?;
    let (q, k, v, out, lse, grad) = (
        contiguous(q),
        contiguous(k),
        contiguous(v),
        contiguous(out),
        contiguous(lse),
        contiguous(grad),
    );
    let (qs, ks, vs): (&[f32], &[f32], &[f32]) = (q.as_slice()?, k.as_slice()?, v.as_slice()?);
    let (os, ls, gs): (&[f32], &[f32], &[f32]) =
        (out.as_slice()?, lse.as_slice()?, grad.as_slice()?);
    let shape = || Shape::new([b, h, t, d]);
    let mut dq = FlexTensor::empty(shape(), DType::F32);
    let mut dk = FlexTensor::empty(shape(), DType::F32);
    let mut dv = FlexTensor::empty(shape(), DType::F32);
    dq.storage_mut::<f32>()
        .par_chunks_mut(t * d)
        .zip(dk.storage_mut::<f32>().par_chunks_mut(t * d))
        .zip(dv.storage_mut::<f32>().par_chunks_mut(t * d))
        .enumerate()
        .for_each(|(head, ((dq, dk), dv))| {
            let at = head * t * d..(head + 1) * t * d;
            let (q, k, v) = (&qs[at.clone()], &ks[at.clone()], &vs[at.clone()]);
            let (o, g) = (&os[at.clone()], &gs[at]);
            let lse = &ls[head * t..(head + 1) * t];
            kernels::with_scratch(0, t * t, |p| {
                kernels::with_scratch(1, t * t, |ds| {
                    head_backward([q, k, v, o, g], lse, [dq, dk, dv], p, ds, t, d, scale)
                })
            });
        });
    Some((dq, dk, dv))
}
