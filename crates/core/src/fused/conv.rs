//! 2-D convolution on the CPU backend as im2col + GEMM, for the forward
//! pass and both gradients, one rayon task per chunk of a few samples:
//!
//! - output:        Y = W · cols(X)
//! - weight grad:   dW = Σ_chunks dY · cols(X)ᵀ (each task sums its chunks, then the sums are added)
//! - input grad:    dX = col2im(Wᵀ · dY)
//!
//! where cols(X) is the `[C_in·kh·kw, S·H'·W']` im2col matrix of a chunk of
//! S samples side by side, and dY that chunk's output gradient as
//! `[C_out, S·H'·W']`. A chunk holds as many samples as keep its im2col
//! matrix within a core's cache ([`COLS_BUDGET`]): small feature maps (a 7×7
//! output gives a per-sample GEMM only 49 columns) then share one wider
//! GEMM and one packing of the weight, large ones go one sample per task.
//! The forward pass of a stride-1 convolution over a map of 14×14 or more
//! reads a third of that matrix instead, one GEMM per kernel row
//! ([`KernelRows`]).
//!
//! burn's CPU backend computes the input gradient as a transposed
//! convolution looping over samples on one thread and the weight gradient
//! as a convolution with badly shaped GEMMs (shared/notes/cpu-op-gap.md).
//! Groups = 1 and dilation = 1 only; the caller falls back to burn otherwise.
//!
//! A transposed convolution is the adjoint of a convolution, so its forward
//! pass is that convolution's input gradient, and its gradients are that
//! convolution's forward pass and weight gradient (with roles exchanged).

use burn::tensor::{DType, Shape, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::attention::{Mat, matmul_into};
use super::kernels::{par_new, simd, with_scratch};

/// Stride and symmetric zero padding of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Step between output positions, `[height, width]`.
    pub stride: [usize; 2],
    /// Zeros added on each side, `[height, width]`.
    pub padding: [usize; 2],
}

/// Which gradients a convolution's backward pass computes: those of the
/// inputs autodiff tracks. The others' GEMMs are skipped: a batch of data
/// needs no dX, and a network that is only passed through (the
/// discriminator in a generator's update) needs no dW.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGrads {
    /// dX, the input's gradient.
    pub x: bool,
    /// dW, the weight's gradient.
    pub weight: bool,
}

/// The sizes one convolution works with.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn new(x: &Shape, weight: &Shape, g: ConvGeometry) -> Option<Self> {
        if x.num_dims() != 4 || weight.num_dims() != 4 || x[1] != weight[1] {
            return None;
        }
        let (h, w, kh, kw) = (x[2], x[3], weight[2], weight[3]);
        let (ph, pw) = (h + 2 * g.padding[0], w + 2 * g.padding[1]);
        if ph < kh || pw < kw || g.stride[0] == 0 || g.stride[1] == 0 {
            return None;
        }
        Some(Self {
            n: x[0],
            c_in: x[1],
            h,
            w,
            c_out: weight[0],
            kh,
            kw,
            oh: (ph - kh) / g.stride[0] + 1,
            ow: (pw - kw) / g.stride[1] + 1,
        })
    }

    /// Rows of the im2col matrix (C_in·kh·kw).
    fn patch(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Columns of the im2col matrix (output positions).
    fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Samples per chunk: as many as keep the chunk's im2col matrix within
    /// [`COLS_BUDGET`] floats, at least one, and at most n / [`GROUPS`], so
    /// that a batch makes at least that many chunks for the threads to
    /// share. Fixed by the batch, not by the number of threads: the chunks
    /// are the terms of the weight gradient's sum, which then comes out the
    /// same on any machine.
    fn chunk(&self) -> usize {
        let per_group = self.n.div_ceil(GROUPS).max(1);
        (COLS_BUDGET / (self.patch() * self.positions()).max(1)).clamp(1, per_group)
    }
}

/// The largest im2col matrix of one chunk, in floats (1 MiB, within a
/// core's L2 cache): DCGAN's 14×14 → 7×7 layer takes 5 samples a chunk, the
/// U-Net's layers one (measured: a 16 MiB budget, the whole batch's matrix
/// in one GEMM, made the U-Net step 1.5× slower).
const COLS_BUDGET: usize = 1 << 18;

/// The chunks a batch is cut into at least (work for up to 16 threads),
/// and the weight gradient's partial sums at most.
const GROUPS: usize = 16;

/// The input position output (oy, ox) reads through kernel tap (ki, kj), or
/// `None` in the padding.
#[inline(always)]
fn source(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    (o * stride + k).checked_sub(pad).filter(|&i| i < size)
}

/// The output columns `lo..hi` whose input column `ox·stride + k − pad` lies
/// inside `0..size` (the others read the zero padding).
#[inline(always)]
fn valid_range(k: usize, stride: usize, pad: usize, size: usize, outputs: usize) -> (usize, usize) {
    // ox·stride + k ≥ pad  and  ox·stride + k < size + pad
    let lo = pad.saturating_sub(k).div_ceil(stride);
    let hi = if size + pad > k {
        ((size + pad - k - 1) / stride + 1).min(outputs)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// A convolution's input split into its stride phases: for stride
/// (sh, sw), phase (py, px) holds the input lines ≡ py (mod sh) and columns
/// ≡ px (mod sw), each phase plane `rows × ow` (zero where the input has
/// no such position). Tap (ki, kj) then reads one phase plane shifted by a
/// constant (dy, dx): output (oy, ox) reads phase position (oy + dy,
/// ox + dx). So an im2col row is one block copy of a phase plane (and a
/// col2im row one block add), with the few entries that read the padding
/// zeroed, instead of a strided gather of every output line (7 to 28
/// floats each at DCGAN's and the U-Net's sizes).
///
/// It applies when every phase has at most `ow` columns (the output is as
/// wide as the input divided by the stride: 3×3 with padding 1, 4×4
/// stride 2 with padding 1). At stride 1 the one phase is the plane itself.
#[derive(Clone, Copy, Debug)]
struct Phases {
    stride: [usize; 2],
    padding: [usize; 2],
    /// Input size.
    h: usize,
    w: usize,
    /// Lines per phase plane (the most any phase has).
    rows: usize,
    /// Output size; a phase plane's lines are `ow` wide.
    oh: usize,
    ow: usize,
}

/// Where one tap reads: its phase plane, the output lines and columns whose
/// read lies inside that plane, and the block of the shifted read.
struct Tap {
    phase: usize,
    /// Output lines `lines[0]..lines[1]` and columns `columns[0]..columns[1]`.
    lines: [usize; 2],
    columns: [usize; 2],
    /// `out[start..start + len]` ↔ `plane[src..src + len]` over those lines
    /// (`None`: empty); entries of wrapped columns are in it and must be
    /// zeroed or dropped.
    block: Option<[usize; 3]>,
}

impl Phases {
    fn new(d: &Dims, g: ConvGeometry) -> Option<Self> {
        let [sh, sw] = g.stride;
        let fits = d.w.div_ceil(sw) <= d.ow && (sh > 1 || sw > 1 || d.w == d.ow);
        fits.then(|| Self {
            stride: g.stride,
            padding: g.padding,
            h: d.h,
            w: d.w,
            rows: d.h.div_ceil(sh),
            oh: d.oh,
            ow: d.ow,
        })
    }

    /// At stride 1 the plane itself is the one phase (no copy).
    fn unit(&self) -> bool {
        self.stride == [1, 1]
    }

    fn plane_len(&self) -> usize {
        self.rows * self.ow
    }

    /// Floats for all phase planes of one channel.
    fn len(&self) -> usize {
        self.stride[0] * self.stride[1] * self.plane_len()
    }

    /// Every tap of a `kh × kw` kernel, in im2col row order.
    fn taps(&self, kh: usize, kw: usize) -> Vec<Tap> {
        let [sh, sw] = self.stride.map(|s| s as isize);
        let mut taps = Vec::with_capacity(kh * kw);
        for ki in 0..kh {
            for kj in 0..kw {
                let ty = ki as isize - self.padding[0] as isize;
                let tx = kj as isize - self.padding[1] as isize;
                let (py, px) = (ty.rem_euclid(sh) as usize, tx.rem_euclid(sw) as usize);
                let (dy, dx) = (ty.div_euclid(sh), tx.div_euclid(sw));
                // The phase holds the input lines ≡ py (mod sh): (h − py)/sh rounded up.
                let valid_lines = self.h.saturating_sub(py).div_ceil(self.stride[0]);
                let valid_columns = self.w.saturating_sub(px).div_ceil(self.stride[1]);
                let range = |shift: isize, valid: usize, outputs: usize| {
                    let lo = (-shift).clamp(0, outputs as isize) as usize;
                    let hi = (valid as isize - shift).clamp(lo as isize, outputs as isize);
                    [lo, hi as usize]
                };
                let lines = range(dy, valid_lines, self.oh);
                let columns = range(dx, valid_columns, self.ow);
                let ow = self.ow as isize;
                let first = (lines[0] as isize + dy) * ow + dx;
                let skip = (-first).max(0) as usize; // reads before the plane: padding
                let src = first.max(0) as usize;
                let start = lines[0] * self.ow + skip;
                let plane_len = if self.unit() {
                    self.h * self.w
                } else {
                    self.plane_len()
                };
                let len = (lines[1] * self.ow)
                    .saturating_sub(start)
                    .min(plane_len.saturating_sub(src));
                taps.push(Tap {
                    phase: py * self.stride[1] + px,
                    lines,
                    columns,
                    block: (len > 0).then_some([start, src, len]),
                });
            }
        }
        taps
    }

    /// One channel's input plane (`h × w`) into its phase planes.
    #[inline(always)]
    fn split(&self, plane: &[f32], phases: &mut [f32]) {
        let [sh, sw] = self.stride;
        phases.fill(0.0);
        for (iy, line) in plane.chunks_exact(self.w).enumerate() {
            let (py, ry) = (iy % sh, iy / sh);
            for px in 0..sw {
                let at = (py * sw + px) * self.plane_len() + ry * self.ow;
                let dst = &mut phases[at..at + self.ow];
                for (d, &v) in dst.iter_mut().zip(line.iter().skip(px).step_by(sw)) {
                    *d = v;
                }
            }
        }
    }

    /// The adjoint of [`Phases::split`]: phase planes back into one
    /// channel's input plane (every position written).
    #[inline(always)]
    fn merge(&self, phases: &[f32], plane: &mut [f32]) {
        let [sh, sw] = self.stride;
        for (iy, line) in plane.chunks_exact_mut(self.w).enumerate() {
            let (py, ry) = (iy % sh, iy / sh);
            for px in 0..sw {
                let at = (py * sw + px) * self.plane_len() + ry * self.ow;
                let src = &phases[at..at + self.ow];
                for (d, &v) in line.iter_mut().skip(px).step_by(sw).zip(src) {
                    *d = v;
                }
            }
        }
    }

    /// One im2col row: `out[oy·ow + ox]` = the tap's phase plane at
    /// (oy + dy, ox + dx), 0 outside it.
    #[inline(always)]
    fn copy_tap(&self, plane: &[f32], tap: &Tap, out: &mut [f32]) {
        let ([oy_lo, oy_hi], [lo, hi]) = (tap.lines, tap.columns);
        let ow = self.ow;
        out[..oy_lo * ow].fill(0.0);
        out[oy_hi * ow..].fill(0.0);
        if let Some([start, src, len]) = tap.block {
            out[start..start + len].copy_from_slice(&plane[src..src + len]);
        }
        zero_columns(&mut out[oy_lo * ow..oy_hi * ow], ow, [lo, hi]);
    }

    /// The adjoint of [`Phases::copy_tap`]: adds one col2im row onto the
    /// tap's phase plane. The row's entries that read the padding are zeroed
    /// first (it is scratch), so the block add puts nothing where they wrap.
    #[inline(always)]
    fn add_tap(&self, row: &mut [f32], tap: &Tap, plane: &mut [f32]) {
        let ([oy_lo, oy_hi], [lo, hi]) = (tap.lines, tap.columns);
        zero_columns(
            &mut row[oy_lo * self.ow..oy_hi * self.ow],
            self.ow,
            [lo, hi],
        );
        if let Some([start, src, len]) = tap.block {
            for (p, &r) in plane[src..src + len]
                .iter_mut()
                .zip(&row[start..start + len])
            {
                *p += r;
            }
        }
    }
}

/// Zeroes the columns outside `lo..hi` of the lines (`width` wide) in
/// `lines`: one or two columns at a kernel's edge taps, so it walks them
/// down the lines (a `fill` per line is a `memset` call for 0 to 2 floats,
/// 5 % of a U-Net sampling call).
#[inline(always)]
fn zero_columns(lines: &mut [f32], width: usize, [lo, hi]: [usize; 2]) {
    for column in (0..lo).chain(hi..width) {
        for v in lines[column..].iter_mut().step_by(width) {
            *v = 0.0;
        }
    }
}

/// One sample's im2col rows, in order: row (c·kh + ki)·kw + kj holds, at
/// oy·ow + ox, x[c, oy·s + ki − p, ox·s + kj − p] (0 in the padding).
/// `phases`: scratch of at least [`Phases::len`] floats when `d` has phases.
#[inline(always)] // into its caller's `simd` copy
fn im2col<'a>(
    x: &[f32],
    d: &Dims,
    g: ConvGeometry,
    phases: &mut [f32],
    mut rows: impl Iterator<Item = &'a mut [f32]>,
) {
    let [sh, sw] = g.stride;
    let phased = Phases::new(d, g);
    let taps = phased.map_or_else(Vec::new, |p| p.taps(d.kh, d.kw));
    for c in 0..d.c_in {
        let plane = &x[c * d.h * d.w..(c + 1) * d.h * d.w];
        if let Some(p) = &phased {
            if !p.unit() {
                p.split(plane, &mut phases[..p.len()]);
            }
            for tap in &taps {
                let out = rows.next().expect("one im2col row per (channel, tap)");
                let source = if p.unit() {
                    plane
                } else {
                    &phases[tap.phase * p.plane_len()..(tap.phase + 1) * p.plane_len()]
                };
                p.copy_tap(source, tap, out);
            }
            continue;
        }
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let out = rows.next().expect("one im2col row per (channel, tap)");
                let (lo, hi) = valid_range(kj, sw, g.padding[1], d.w, d.ow);
                for (oy, line) in out.chunks_exact_mut(d.ow).enumerate() {
                    let Some(iy) = source(oy, ki, sh, g.padding[0], d.h) else {
                        line.fill(0.0);
                        continue;
                    };
                    line[..lo].fill(0.0);
                    line[hi..].fill(0.0);
                    if lo < hi {
                        // First input column read: lo·stride + kj − pad ≥ 0 by construction.
                        let start = iy * d.w + lo * sw + kj - g.padding[1];
                        if sw == 1 {
                            line[lo..hi].copy_from_slice(&plane[start..start + (hi - lo)]);
                        } else {
                            let src = &plane[start..start + (hi - lo - 1) * sw + 1];
                            for (v, s) in line[lo..hi].iter_mut().zip(src.iter().step_by(sw)) {
                                *v = *s;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every entry of one sample's rows (row r,
/// as in [`im2col`], at `cols[at(r)..]`; scratch, which it may overwrite)
/// back onto the input position it was read from.
#[inline(always)] // into its caller's `simd` copy
fn col2im(
    cols: &mut [f32],
    at: impl Fn(usize) -> usize,
    d: &Dims,
    g: ConvGeometry,
    phases: &mut [f32],
    x: &mut [f32],
) {
    let positions = d.positions();
    let [sh, sw] = g.stride;
    let phased = Phases::new(d, g);
    let taps = phased.map_or_else(Vec::new, |p| p.taps(d.kh, d.kw));
    if phased.is_none() || phased.is_some_and(|p| p.unit()) {
        x.fill(0.0);
    }
    for c in 0..d.c_in {
        let plane = &mut x[c * d.h * d.w..(c + 1) * d.h * d.w];
        if let Some(p) = &phased {
            let phases = &mut phases[..p.len()];
            if !p.unit() {
                phases.fill(0.0);
            }
            for (t, tap) in taps.iter().enumerate() {
                let start = at(c * taps.len() + t);
                let col = &mut cols[start..start + positions];
                let target = if p.unit() {
                    &mut *plane
                } else {
                    &mut phases[tap.phase * p.plane_len()..(tap.phase + 1) * p.plane_len()]
                };
                p.add_tap(col, tap, target);
            }
            if !p.unit() {
                p.merge(phases, plane);
            }
            continue;
        }
        for ki in 0..d.kh {
            for kj in 0..d.kw {
                let start = at((c * d.kh + ki) * d.kw + kj);
                let col = &cols[start..start + positions];
                let (lo, hi) = valid_range(kj, sw, g.padding[1], d.w, d.ow);
                if lo >= hi {
                    continue;
                }
                for (oy, line) in col.chunks_exact(d.ow).enumerate() {
                    let Some(iy) = source(oy, ki, sh, g.padding[0], d.h) else {
                        continue;
                    };
                    let start = iy * d.w + lo * sw + kj - g.padding[1];
                    let dst = &mut plane[start..start + (hi - lo - 1) * sw + 1];
                    if sw == 1 {
                        for (v, s) in dst.iter_mut().zip(&line[lo..hi]) {
                            *v += s;
                        }
                    } else {
                        for (v, s) in dst.iter_mut().step_by(sw).zip(&line[lo..hi]) {
                            *v += s;
                        }
                    }
                }
            }
        }
    }
}

/// Room for one channel's phase planes ([`Phases`]), if `d` has them.
fn phase_scratch(d: &Dims, g: ConvGeometry) -> Vec<f32> {
    vec![0.0; Phases::new(d, g).map_or(0, |p| p.len())]
}

fn f32_contiguous(t: &FlexTensor) -> Option<FlexTensor> {
    (t.dtype() == DType::F32).then(|| t.to_contiguous())
}

/// The im2col matrix of `count` samples (`xs`, `[count, C_in, H, W]`) side
/// by side: `[patch, count·positions]`, sample j in columns j·positions...
#[inline(always)] // into its caller's `simd` copy
fn chunk_im2col(xs: &[f32], d: &Dims, g: ConvGeometry, count: usize, cols: &mut [f32]) {
    let (in_sample, positions) = (d.c_in * d.h * d.w, d.positions());
    let cols = &mut cols[..d.patch() * count * positions];
    let mut phases = phase_scratch(d, g);
    for (j, x) in xs.chunks_exact(in_sample).take(count).enumerate() {
        // Row r of sample j is piece r·count + j of rows of `positions`.
        let rows = cols.chunks_exact_mut(positions).skip(j).step_by(count);
        im2col(x, d, g, &mut phases, rows);
    }
}

/// The output gradient of `count` samples (`gs`, `[count, C_out,
/// positions]`) as one `[C_out, count·positions]` matrix: `gs` itself for
/// one sample, else gathered into `dy`.
#[inline(always)] // into its caller's `simd` copy
fn chunk_rows<'a>(gs: &'a [f32], d: &Dims, count: usize, dy: &'a mut [f32]) -> &'a [f32] {
    let positions = d.positions();
    let len = d.c_out * count * positions;
    if count == 1 {
        return &gs[..len];
    }
    for (i, row) in dy[..len].chunks_exact_mut(positions).enumerate() {
        let (c, j) = (i / count, i % count);
        let at = (j * d.c_out + c) * positions;
        row.copy_from_slice(&gs[at..at + positions]);
    }
    &dy[..len]
}

/// A stride-1 convolution over a large feature map computed one kernel row
/// at a time: the im2col matrix of a `1 × kw` kernel over the input padded
/// with `padding` zero lines above and below (`C_in·kw` rows of
/// `(H + 2p)·W'` columns) holds, shifted by `ki·W'` columns, the im2col rows
/// of every kernel row ki, so the output is Σ_ki W_ki · B[:, ki·W'..] —
/// `kh` GEMMs of depth `C_in·kw` reading one matrix a third the size of
/// the full im2col (3×3 kernels), which was 10 % of a U-Net sampling call
/// to write.
struct KernelRows {
    d: Dims,
    g: ConvGeometry,
    /// The `1 × kw` convolution whose im2col is B.
    row: Dims,
}

impl KernelRows {
    /// Output positions from which a sample's GEMMs are wide enough to go
    /// one sample at a time (a 14×14 map); smaller maps share GEMMs across
    /// samples through [`Dims::chunk`].
    const MIN_POSITIONS: usize = 196;

    fn new(d: &Dims, g: ConvGeometry) -> Option<Self> {
        let applies = g.stride == [1, 1] && d.kh > 1 && d.positions() >= Self::MIN_POSITIONS;
        let row = Dims {
            kh: 1,
            oh: d.h + 2 * g.padding[0],
            ..*d
        };
        applies.then_some(Self { d: *d, g, row })
    }

    /// B's row length: the padded input's lines, each W' wide.
    fn row_len(&self) -> usize {
        self.row.positions()
    }

    /// The weight `[C_out, C_in, kh, kw]` as `kh` matrices
    /// `[C_out, C_in·kw]`, one per kernel row.
    fn weights_by_row(&self, ws: &[f32]) -> Vec<f32> {
        let d = &self.d;
        let depth = d.c_in * d.kw;
        let mut out = vec![0.0; d.kh * d.c_out * depth];
        for m in 0..d.c_out {
            for c in 0..d.c_in {
                for ki in 0..d.kh {
                    let src = &ws[((m * d.c_in + c) * d.kh + ki) * d.kw..][..d.kw];
                    let at = (ki * d.c_out + m) * depth + c * d.kw;
                    out[at..at + d.kw].copy_from_slice(src);
                }
            }
        }
        out
    }

    fn forward(&self, xs: &[f32], ws: &[f32]) -> FlexTensor {
        let (d, row) = (&self.d, &self.row);
        let (in_sample, out_sample) = (d.c_in * d.h * d.w, d.c_out * d.positions());
        let depth = d.c_in * d.kw;
        let weights = self.weights_by_row(ws);
        let shape = Shape::new([d.n, d.c_out, d.oh, d.ow]);
        par_new(shape, out_sample, |j, out| {
            let x = &xs[j * in_sample..(j + 1) * in_sample];
            with_scratch(0, depth * self.row_len(), |b| {
                simd(
                    #[inline(always)]
                    || {
                        let mut phases = phase_scratch(row, self.g);
                        im2col(
                            x,
                            row,
                            self.g,
                            &mut phases,
                            b.chunks_exact_mut(self.row_len()),
                        );
                        for ki in 0..d.kh {
                            let w = Mat::new(&weights[ki * d.c_out * depth..], d.c_out, depth);
                            let shifted =
                                Mat::strided(&b[ki * d.ow..], depth, d.positions(), self.row_len());
                            matmul_into(out, w, shifted, 1.0, ki > 0);
                        }
                    },
                )
            })
        })
    }
}

/// The convolution of `x` (`[N, C_in, H, W]`) with `weight`
/// (`[C_out, C_in, kh, kw]`), no bias: `[N, C_out, H', W']`.
pub(super) fn forward(x: &FlexTensor, weight: &FlexTensor, g: ConvGeometry) -> Option<FlexTensor> {
    let d = Dims::new(x.layout().shape(), weight.layout().shape(), g)?;
    let (x, weight) = (f32_contiguous(x)?, f32_contiguous(weight)?);
    let (xs, ws): (&[f32], &[f32]) = (x.as_slice()?, weight.as_slice()?);
    if let Some(rows) = KernelRows::new(&d, g) {
        return Some(rows.forward(xs, ws));
    }
    let (positions, chunk) = (d.positions(), d.chunk());
    let (in_sample, out_sample) = (d.c_in * d.h * d.w, d.c_out * positions);
    let w = Mat::new(ws, d.c_out, d.patch());
    let shape = Shape::new([d.n, d.c_out, d.oh, d.ow]);
    let out = par_new(shape, chunk * out_sample, |ci, out| {
        let count = out.len() / out_sample.max(1);
        let width = count * positions;
        let xs = &xs[ci * chunk * in_sample..];
        with_scratch(0, d.patch() * width, |cols| {
            with_scratch(1, d.c_out * width, |y| {
                simd(
                    #[inline(always)]
                    || {
                        chunk_im2col(xs, &d, g, count, cols);
                        let cols = Mat::new(cols, d.patch(), width);
                        if count == 1 {
                            // One sample: the GEMM's [C_out, positions] is its output.
                            matmul_into(out, w, cols, 1.0, false);
                            return;
                        }
                        matmul_into(y, w, cols, 1.0, false);
                        // [C_out, count·positions] → [count, C_out, positions].
                        for (i, dst) in out.chunks_exact_mut(positions).enumerate() {
                            let (j, c) = (i / d.c_out, i % d.c_out);
                            let at = c * width + j * positions;
                            dst.copy_from_slice(&y[at..at + positions]);
                        }
                    },
                )
            })
        })
    });
    Some(out)
}

/// The gradients (dX, dW) of [`forward`] given the output gradient, those
/// `wanted`.
pub(super) fn backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    g: ConvGeometry,
    wanted: ConvGrads,
) -> Option<(Option<FlexTensor>, Option<FlexTensor>)> {
    let d = Dims::new(x.layout().shape(), weight.layout().shape(), g)?;
    if grad.layout().shape() != &Shape::new([d.n, d.c_out, d.oh, d.ow]) {
        return None;
    }
    let (x, weight, grad) = (
        f32_contiguous(x)?,
        f32_contiguous(weight)?,
        f32_contiguous(grad)?,
    );
    let (xs, ws, gs): (&[f32], &[f32], &[f32]) =
        (x.as_slice()?, weight.as_slice()?, grad.as_slice()?);
    Some((
        wanted.x.then(|| input_grad(&d, g, ws, gs)),
        wanted.weight.then(|| weight_grad(&d, g, xs, gs)),
    ))
}

/// dX of a convolution: per chunk, dcols = Wᵀ·dY, then col2im per sample.
fn input_grad(d: &Dims, g: ConvGeometry, ws: &[f32], gs: &[f32]) -> FlexTensor {
    let (positions, chunk) = (d.positions(), d.chunk());
    let (in_sample, out_sample) = (d.c_in * d.h * d.w, d.c_out * positions);
    let w = Mat::new(ws, d.c_out, d.patch());
    let shape = Shape::new([d.n, d.c_in, d.h, d.w]);
    par_new(shape, chunk * in_sample, |ci, dx| {
        let count = dx.len() / in_sample.max(1);
        let width = count * positions;
        let gs = &gs[ci * chunk * out_sample..];
        with_scratch(0, d.patch() * width, |dcols| {
            with_scratch(1, d.c_out * width, |dy| {
                simd(
                    #[inline(always)]
                    || {
                        let dy = chunk_rows(gs, d, count, dy);
                        matmul_into(dcols, w.t(), Mat::new(dy, d.c_out, width), 1.0, false);
                        let mut phases = phase_scratch(d, g);
                        for (j, dx) in dx.chunks_exact_mut(in_sample).enumerate() {
                            let at = |r: usize| r * width + j * positions;
                            col2im(dcols, at, d, g, &mut phases, dx);
                        }
                    },
                )
            })
        })
    })
}

/// dW of a convolution: the chunks fall into at most [`GROUPS`] groups,
/// each group accumulates dY·cols(X)ᵀ over its chunks in order, and the
/// groups' sums are added in order. Groups fixed by the batch alone make
/// the float sums the same in every run and on any number of threads (a
/// parallel fold's are grouped by how the work was stolen).
fn weight_grad(d: &Dims, g: ConvGeometry, xs: &[f32], gs: &[f32]) -> FlexTensor {
    let (positions, chunk) = (d.positions(), d.chunk());
    let (in_sample, out_sample) = (d.c_in * d.h * d.w, d.c_out * positions);
    let dw_len = d.c_out * d.patch();
    let chunks = d.n.div_ceil(chunk);
    let per_group = chunks.div_ceil(GROUPS);
    let accumulate = |dw: &mut Vec<f32>, ci: usize| {
        let first = ci * chunk;
        let count = chunk.min(d.n - first);
        let width = count * positions;
        with_scratch(0, d.patch() * width, |cols| {
            with_scratch(1, d.c_out * width, |dy| {
                let dy = simd(
                    #[inline(always)]
                    || {
                        chunk_im2col(&xs[first * in_sample..], d, g, count, cols);
                        chunk_rows(&gs[first * out_sample..], d, count, dy)
                    },
                );
                let cols_t = Mat::new(cols, d.patch(), width).t();
                matmul_into(dw, Mat::new(dy, d.c_out, width), cols_t, 1.0, true);
            })
        });
    };
    let sums: Vec<Vec<f32>> = (0..chunks.div_ceil(per_group.max(1)))
        .into_par_iter()
        .map(|group| {
            let mut dw = vec![0.0f32; dw_len];
            for ci in group * per_group..((group + 1) * per_group).min(chunks) {
                accumulate(&mut dw, ci);
            }
            dw
        })
        .collect();
    let mut sums = sums.into_iter();
    let mut dw = sums.next().unwrap_or_else(|| vec![0.0; dw_len]);
    for sum in sums {
        for (a, b) in dw.iter_mut().zip(&sum) {
            *a += b;
        }
    }
    FlexTensor::from_data(TensorData::new(dw, [d.c_out, d.c_in, d.kh, d.kw]))
}

/// The convolution a transposed convolution is the adjoint of: for `x`
/// `[N, C_in, H, W]` and `weight` `[C_in, C_out, k, k]` (burn's layout),
/// the convolution of `[N, C_out, H', W']` with the same weight read as
/// `[C_in, C_out, k, k]` = `[c_out, c_in, k, k]` maps back to `[N, C_in, H, W]`,
/// with H' = (H − 1)·stride − 2·padding + k.
fn transposed_dims(x: &Shape, weight: &Shape, g: ConvGeometry) -> Option<Dims> {
    if x.num_dims() != 4 || weight.num_dims() != 4 || x[1] != weight[0] {
        return None;
    }
    let out = |size: usize, k: usize, s: usize, p: usize| {
        ((size.checked_sub(1)? * s + k).checked_sub(2 * p)).filter(|&o| o > 0)
    };
    let oh = out(x[2], weight[2], g.stride[0], g.padding[0])?;
    let ow = out(x[3], weight[3], g.stride[1], g.padding[1])?;
    let d = Dims::new(&Shape::new([x[0], weight[1], oh, ow]), weight, g)?;
    (d.oh == x[2] && d.ow == x[3]).then_some(d)
}

/// A transposed convolution (no bias, no output padding) of `x`
/// (`[N, C_in, H, W]`) with `weight` (`[C_in, C_out, k, k]`):
/// `[N, C_out, H', W']`, as the input gradient of the convolution it is the
/// adjoint of.
pub(super) fn transpose_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    g: ConvGeometry,
) -> Option<FlexTensor> {
    let d = transposed_dims(x.layout().shape(), weight.layout().shape(), g)?;
    let (x, weight) = (f32_contiguous(x)?, f32_contiguous(weight)?);
    Some(input_grad(&d, g, weight.as_slice()?, x.as_slice()?))
}

/// The gradients (dX, dW) of [`transpose_forward`], those `wanted`: dX is
/// the adjoint convolution's forward pass of the output gradient, dW its
/// weight gradient with input and output exchanged.
pub(super) fn transpose_backward(
    x: &FlexTensor,
    weight: &FlexTensor,
    grad: &FlexTensor,
    g: ConvGeometry,
    wanted: ConvGrads,
) -> Option<(Option<FlexTensor>, Option<FlexTensor>)> {
    let d = transposed_dims(x.layout().shape(), weight.layout().shape(), g)?;
    if grad.layout().shape() != &Shape::new([d.n, d.c_in, d.h, d.w]) {
        return None;
    }
    let dx = match wanted.x {
        true => Some(forward(grad, weight, g)?),
        false => None,
    };
    let dw = match wanted.weight {
        true => {
            let (x, grad) = (f32_contiguous(x)?, f32_contiguous(grad)?);
            Some(weight_grad(&d, g, grad.as_slice()?, x.as_slice()?))
        }
        false => None,
    };
    Some((dx, dw))
}
