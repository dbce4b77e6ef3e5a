use super::*;
use crate::seed::{host_rng, normal_tensor};
use crate::{CpuBackend, CpuDevice};
use burn::tensor::{TensorMetadata, activation};

type Ad = Autodiff<CpuBackend>;

fn max_diff<const D: usize>(a: Tensor<CpuBackend, D>, b: Tensor<CpuBackend, D>) -> f32 {
    (a - b).abs().max().into_scalar()
}

/// Within 1e-4, relative to the reference's largest magnitude when that
/// exceeds 1 (gradients that sum thousands of f32 terms).
fn close<const D: usize>(ours: Tensor<CpuBackend, D>, reference: Tensor<CpuBackend, D>) -> bool {
    close_with_terms(ours, reference, 0.0)
}

/// `close`, with the tolerance also relative to `terms`: the size of the
/// terms a result is the difference of, where they cancel.
fn close_with_terms<const D: usize>(
    ours: Tensor<CpuBackend, D>,
    reference: Tensor<CpuBackend, D>,
    terms: f32,
) -> bool {
    let scale = reference.clone().abs().max().into_scalar().max(1.0);
    max_diff(ours, reference) <= 1e-4 * scale.max(terms)
}

/// Values and input gradients of a fused op against burn's composition
/// on random inputs (wide enough to reach the tails), within 1e-4.
fn matches_composed(
    fused: fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>,
    composed: fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>,
) {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // Odd sizes exercise the kernels' chunk remainders.
    let x = normal_tensor::<Ad, 3>(&mut rng, [3, 37, 129], 0.0, 3.0, &dev);
    let tails =
        Tensor::<Ad, 1>::from_floats([-90.0, -30.0, -9.0, 0.0, 1e-6, 9.0, 30.0, 90.0], &dev)
            .reshape([1, 1, 8])
            .repeat_dim(0, 3)
            .repeat_dim(1, 37);
    let x = Tensor::cat(vec![x, tails], 2);
    let upstream = normal_tensor::<Ad, 3>(&mut rng, x.dims(), 0.0, 1.0, &dev);
    let xa = x.clone().require_grad();
    let xb = x.require_grad();
    let ya = fused(xa.clone());
    let yb = composed(xb.clone());
    assert!(max_diff(ya.clone().inner(), yb.clone().inner()) < 1e-4);
    let ga = (ya * upstream.clone()).sum().backward();
    let gb = (yb * upstream).sum().backward();
    let (da, db) = (xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
    assert!(max_diff(da, db) < 1e-4);
}

#[test]
fn nearest_upsampling_matches_burns_interpolate_in_values_and_gradients() {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // Odd sizes, and enough lines to span several parallel tasks.
    for [n, c, h, w] in [[2, 3, 5, 7], [3, 64, 14, 14], [1, 1, 1, 1]] {
        let x = normal_tensor::<Ad, 4>(&mut rng, [n, c, h, w], 0.0, 1.0, &dev);
        let (xa, xb) = (x.clone().require_grad(), x.require_grad());
        let ours = upsample_nearest2(xa.clone());
        let theirs = interpolate(
            xb.clone(),
            [2 * h, 2 * w],
            InterpolateOptions::new(InterpolateMode::Nearest),
        );
        assert_eq!(ours.dims(), [n, c, 2 * h, 2 * w]);
        assert_eq!(max_diff(ours.clone().inner(), theirs.clone().inner()), 0.0);
        let upstream = normal_tensor::<Ad, 4>(&mut rng, ours.dims(), 0.0, 1.0, &dev);
        let ga = (ours * upstream.clone()).sum().backward();
        let gb = (theirs * upstream).sum().backward();
        assert!(max_diff(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap()) < 1e-5);
        // The composed default (other backends) gives the same values.
        let composed = float::<CpuBackend, 4>(composed_upsample_nearest2::<CpuBackend>(primitive(
            xa.clone().inner(),
        )));
        assert_eq!(max_diff(composed, upsample_nearest2(xa.inner())), 0.0);
    }
}

#[test]
fn gelu_matches_burns_composition_in_values_and_gradients() {
    // burn's own gelu_backward is the tanh approximation's derivative,
    // so the reference is the exact formula composed from erf.
    fn exact(x: Tensor<Ad, 3>) -> Tensor<Ad, 3> {
        x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
    }
    matches_composed(gelu, exact);
}

#[test]
fn softplus_matches_burns_composition_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    let x = normal_tensor::<CpuBackend, 2>(&mut rng, [7, 301], 0.0, 6.0, &dev);
    let tails = Tensor::<CpuBackend, 1>::from_floats(
        [-100.0, -88.0, -20.0, -1e-6, 0.0, 1e-6, 20.0, 88.0, 100.0],
        &dev,
    )
    .reshape([1, 9])
    .repeat_dim(0, 7);
    let x = Tensor::cat(vec![x, tails], 1);
    let upstream = normal_tensor::<CpuBackend, 2>(&mut rng, x.dims(), 0.0, 1.0, &dev);
    // Values: the composition from burn's ops.
    let ours = softplus(x.clone());
    assert!(max_diff(ours, composed_softplus(x.clone())) < 1e-4);
    // Gradients: σ(x)·upstream from burn's sigmoid (the composition's
    // own gradient is the subgradient 0 at x = 0, through relu and abs).
    let xa = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
    let grads = (softplus(xa.clone()) * Tensor::from_inner(upstream.clone()))
        .sum()
        .backward();
    let expected = activation::sigmoid(x) * upstream;
    assert!(max_diff(xa.grad(&grads).unwrap(), expected) < 1e-4);
}

#[test]
fn silu_matches_burns_composition_in_values_and_gradients() {
    matches_composed(silu, activation::silu);
}

#[test]
fn kernels_that_reuse_their_input_buffer_leave_shared_inputs_alone() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    let x = normal_tensor::<CpuBackend, 2>(&mut rng, [6, 50], 1.0, 2.0, &dev);
    let before: Vec<f32> = x.to_data().to_vec().unwrap();
    let reference: Vec<f32> = activation::silu(x.clone()).into_data().to_vec().unwrap();
    // Shared (x is kept): a new buffer. Owned (a fresh copy): written over.
    for input in [x.clone(), x.clone() * 1.0] {
        let y: Vec<f32> = silu(input).into_data().to_vec().unwrap();
        assert!(y.iter().zip(&reference).all(|(a, b)| (a - b).abs() < 1e-5));
        let normed = normalize_rows(x.clone() * 1.0, 1e-5);
        assert!(normed.mean().into_scalar().abs() < 1e-5);
    }
    let kept = x.clone();
    let _ = normalize_rows(x, 1e-5);
    assert_eq!(kept.into_data().to_vec::<f32>().unwrap(), before);
}

#[test]
fn leaky_relu_matches_burns_in_values_and_gradients() {
    matches_composed(|x| leaky_relu(x, 0.2), |x| activation::leaky_relu(x, 0.2));
}

#[test]
fn row_normalisation_matches_burns_composition_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // Rows of GroupNorm's sizes (N·G rows of (C/G)·H·W), an odd length,
    // a constant row (variance 0: eps decides), and large offsets.
    for (rows, len, mean, std) in [(8, 1568, 0.0, 1.0), (5, 37, 3.0, 0.1), (3, 1, 0.0, 1.0)] {
        let x = normal_tensor::<Ad, 2>(&mut rng, [rows, len], mean, std, &dev);
        let x = Tensor::cat(vec![x, Tensor::ones([1, len], &dev) * 2.0], 0);
        let upstream = normal_tensor::<Ad, 2>(&mut rng, x.dims(), 0.0, 1.0, &dev);
        let (xa, xb) = (x.clone().require_grad(), x.require_grad());
        let ya = normalize_rows(xa.clone(), 1e-5);
        let yb = {
            let (var, m) = xb.clone().var_mean_bias(1);
            (xb.clone() - m) * (var + 1e-5).sqrt().recip()
        };
        assert!(max_diff(ya.clone().inner(), yb.clone().inner()) < 1e-4);
        let ga = (ya * upstream.clone()).sum().backward();
        let gb = (yb * upstream).sum().backward();
        let (da, db) = (xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
        assert!(close(da, db), "{rows}x{len}");
    }
}

#[test]
fn batch_norm_matches_burns_composition_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // DCGAN's shapes (after a linear layer: S = 1; after a convolution:
    // S = H·W), odd sizes, an offset mean, and a constant channel.
    for (n, c, s, mean, std) in [
        (64, 128, 49, 0.0, 1.0),
        (16, 300, 1, 0.5, 2.0),
        (3, 5, 37, 4.0, 0.1),
        (1, 2, 1, 0.0, 1.0),
    ] {
        let x = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], mean, std, &dev);
        let x = Tensor::cat(vec![x, Tensor::ones([n, 1, s], &dev) * 3.0], 1);
        let c = c + 1;
        let gamma = normal_tensor::<Ad, 1>(&mut rng, [c], 1.0, 0.5, &dev);
        let beta = normal_tensor::<Ad, 1>(&mut rng, [c], 0.0, 0.5, &dev);
        let upstream = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], 0.0, 1.0, &dev);
        let inputs = || {
            (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            )
        };
        let (xa, ga, ba) = inputs();
        let (xb, gb, bb) = inputs();
        let (ya, mean_a, var_a) = batch_norm(xa.clone(), ga.clone(), ba.clone(), 1e-5);
        // burn's autodiff through the broadcast composition.
        let (yb, mean_b, var_b) = {
            let (y, m, v) = composed_batch_norm::<Ad>(
                primitive(xb.clone()),
                primitive(gb.clone()),
                primitive(bb.clone()),
                1e-5,
            );
            (float::<Ad, 3>(y), float::<Ad, 1>(m), float::<Ad, 1>(v))
        };
        let shape = format!("{n}x{c}x{s}");
        assert!(close(ya.clone().inner(), yb.clone().inner()), "y {shape}");
        assert!(close(mean_a.inner(), mean_b.inner()), "mean {shape}");
        assert!(close(var_a.inner(), var_b.inner()), "var {shape}");
        let grads_a = (ya * upstream.clone()).sum().backward();
        let grads_b = (yb * upstream).sum().backward();
        let pairs = [("dx", xa.grad(&grads_a).unwrap(), xb.grad(&grads_b).unwrap())];
        for (name, ours, theirs) in pairs {
            assert!(close(ours, theirs), "{name} {shape}");
        }
        for (name, ours, theirs) in [
            (
                "dgamma",
                ga.grad(&grads_a).unwrap(),
                gb.grad(&grads_b).unwrap(),
            ),
            (
                "dbeta",
                ba.grad(&grads_a).unwrap(),
                bb.grad(&grads_b).unwrap(),
            ),
        ] {
            assert!(close(ours, theirs), "{name} {shape}");
        }
    }
}

#[test]
fn group_norm_matches_burns_composition_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // The U-Net's shapes (8 groups of 32 and 64 channels over 28×28 and
    // 7×7), odd sizes, one channel per group, an offset mean, and a
    // constant group (variance 0: eps decides); with and without SiLU.
    for (n, c, s, groups, mean, std) in [
        (4, 32, 784, 8, 0.0, 1.0),
        (3, 64, 49, 8, 2.0, 3.0),
        (2, 6, 37, 3, 0.0, 0.5),
        (2, 5, 1, 5, 1.0, 1.0),
        (1, 4, 3, 1, 0.0, 1.0),
    ] {
        let x = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], mean, std, &dev);
        // The last group constant in the first sample.
        let per_group = c / groups;
        let x = x.slice_assign(
            [0..1, c - per_group..c, 0..s],
            Tensor::ones([1, per_group, s], &dev) * 3.0,
        );
        let gamma = normal_tensor::<Ad, 1>(&mut rng, [c], 1.0, 0.5, &dev);
        let beta = normal_tensor::<Ad, 1>(&mut rng, [c], 0.0, 0.5, &dev);
        let upstream = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], 0.0, 1.0, &dev);
        for silu in [false, true] {
            let spec = GroupNormSpec {
                groups,
                eps: 1e-5,
                silu,
            };
            let inputs = || {
                (
                    x.clone().require_grad(),
                    gamma.clone().require_grad(),
                    beta.clone().require_grad(),
                )
            };
            let (xa, ga, ba) = inputs();
            let (xb, gb, bb) = inputs();
            let ya = group_norm(xa.clone(), ga.clone(), ba.clone(), spec);
            // burn's autodiff through the composition.
            let yb = {
                let (y, _, _) = composed_group_norm::<Ad>(
                    primitive(xb.clone()),
                    primitive(gb.clone()),
                    primitive(bb.clone()),
                    spec,
                );
                float::<Ad, 3>(y)
            };
            let case = format!("{n}x{c}x{s} groups {groups} silu {silu}");
            assert!(close(ya.clone().inner(), yb.clone().inner()), "y {case}");
            // Inference (no autodiff) takes the plain kernel.
            let plain = group_norm(
                x.clone().inner(),
                gamma.clone().inner(),
                beta.clone().inner(),
                spec,
            );
            assert!(close(plain, yb.clone().inner()), "y untracked {case}");
            let grads_a = (ya * upstream.clone()).sum().backward();
            let grads_b = (yb * upstream.clone()).sum().backward();
            // dx = rstd·(d − mean(d) − x̂·mean(d·x̂)) with d = γ·dz: in a
            // one-element group it is exactly 0, a difference of terms
            // of size rstd·|γ·dz| (316·|γ·dz| when eps decides) whose
            // f32 rounding is all that is left. dz ≤ 1.1·dy under SiLU.
            let (_, _, rstd) = composed_group_norm::<CpuBackend>(
                primitive(x.clone().inner()),
                primitive(gamma.clone().inner()),
                primitive(beta.clone().inner()),
                spec,
            );
            let rstd = float::<CpuBackend, 1>(rstd)
                .reshape([n, groups, 1])
                .expand([n, groups, per_group * s])
                .reshape([n, c, s]);
            let terms = (upstream.clone().inner().abs()
                * gamma.clone().inner().abs().reshape([1, c, 1])
                * rstd
                * 1.1)
                .max()
                .into_scalar();
            let (dx_a, dx_b) = (xa.grad(&grads_a).unwrap(), xb.grad(&grads_b).unwrap());
            assert!(close_with_terms(dx_a, dx_b, terms), "dx {case}");
            for (name, ours, theirs) in [
                (
                    "dgamma",
                    ga.grad(&grads_a).unwrap(),
                    gb.grad(&grads_b).unwrap(),
                ),
                (
                    "dbeta",
                    ba.grad(&grads_a).unwrap(),
                    bb.grad(&grads_b).unwrap(),
                ),
            ] {
                assert!(close(ours, theirs), "{name} {case}");
            }
        }
    }
}

#[test]
fn group_norm_backward_composition_matches_burns_autodiff() {
    // The composed backward (what other backends and nested autodiff
    // run) against burn differentiating the composed forward.
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    let (n, c, s, groups) = (3, 6, 10, 2);
    let x = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], 0.5, 2.0, &dev);
    let gamma = normal_tensor::<Ad, 1>(&mut rng, [c], 1.0, 0.5, &dev);
    let beta = normal_tensor::<Ad, 1>(&mut rng, [c], 0.0, 0.5, &dev);
    let upstream = normal_tensor::<CpuBackend, 3>(&mut rng, [n, c, s], 0.0, 1.0, &dev);
    for silu in [false, true] {
        let spec = GroupNormSpec {
            groups,
            eps: 1e-5,
            silu,
        };
        let (xa, ga, ba) = (
            x.clone().require_grad(),
            gamma.clone().require_grad(),
            beta.clone().require_grad(),
        );
        let (y, mean, rstd) = composed_group_norm::<Ad>(
            primitive(xa.clone()),
            primitive(ga.clone()),
            primitive(ba.clone()),
            spec,
        );
        let grads = (float::<Ad, 3>(y) * Tensor::from_inner(upstream.clone()))
            .sum()
            .backward();
        let inner = |t: FloatTensor<Ad>| float::<Ad, 1>(t).inner();
        let (dx, dgamma, dbeta) = composed_group_norm_backward::<CpuBackend>(
            primitive(x.clone().inner()),
            primitive(gamma.clone().inner()),
            primitive(beta.clone().inner()),
            primitive(inner(mean)),
            primitive(inner(rstd)),
            primitive(upstream.clone()),
            spec,
        );
        assert!(
            close(float::<CpuBackend, 3>(dx), xa.grad(&grads).unwrap()),
            "dx silu {silu}"
        );
        assert!(
            close(float::<CpuBackend, 1>(dgamma), ga.grad(&grads).unwrap()),
            "dgamma silu {silu}"
        );
        assert!(
            close(float::<CpuBackend, 1>(dbeta), ba.grad(&grads).unwrap()),
            "dbeta silu {silu}"
        );
    }
}

/// burn-flex is patched (third_party/burn-flex/GENZOO-PATCH.md) to run
/// element-wise ops on ≥ 2¹⁶ elements in parallel chunks: same-shape,
/// shared-row and per-row-scalar operands, in place and copied, must
/// give exactly the element-by-element result.
#[test]
fn large_element_wise_ops_match_element_by_element() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // 210,000 elements: rows of 1000 do not divide the 16,384 chunk.
    let (n, c, s) = (3, 70, 1000);
    let mut data = |dims: Vec<usize>| {
        let len = dims.iter().product::<usize>();
        normal_tensor::<CpuBackend, 1>(&mut rng, [len], 0.0, 1.0, &dev).into_data()
    };
    let (x, y) = (data(vec![n, c, s]), data(vec![n, c, s]));
    let (row, per_row) = (data(vec![s]), data(vec![n * c]));
    let v = |d: &TensorData| d.to_vec::<f32>().unwrap();
    let (xs, ys, rows, scalars) = (v(&x), v(&y), v(&row), v(&per_row));
    let fresh =
        |d: &TensorData| Tensor::<CpuBackend, 1>::from_data(d.clone(), &dev).reshape([n, c, s]);
    let check = |got: Tensor<CpuBackend, 3>, want: &dyn Fn(usize) -> f32, what: &str| {
        let got = got.into_data().to_vec::<f32>().unwrap();
        let bad = (0..got.len()).find(|&i| got[i] != want(i));
        assert!(bad.is_none(), "{what}: element {bad:?}");
    };
    for unique in [true, false] {
        let lhs = fresh(&x);
        // A second handle on the buffer forces the copying path.
        let keep = (!unique).then(|| lhs.clone());
        check(lhs + fresh(&y), &|i| xs[i] + ys[i], "same shape");
        let lhs = fresh(&x);
        let keep2 = (!unique).then(|| lhs.clone());
        let shared = Tensor::<CpuBackend, 1>::from_data(row.clone(), &dev).reshape([1, 1, s]);
        check(lhs * shared, &|i| xs[i] * rows[i % s], "shared row");
        let lhs = fresh(&x);
        let keep3 = (!unique).then(|| lhs.clone());
        let scalar = Tensor::<CpuBackend, 1>::from_data(per_row.clone(), &dev).reshape([n, c, 1]);
        check(lhs - scalar, &|i| xs[i] - scalars[i / s], "per-row scalar");
        drop((keep, keep2, keep3));
    }
}

#[test]
fn cat_channels_matches_burns_cat_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    let a = normal_tensor::<Ad, 4>(&mut rng, [2, 3, 4, 5], 0.0, 1.0, &dev);
    let b = normal_tensor::<Ad, 4>(&mut rng, [2, 5, 4, 5], 0.0, 1.0, &dev);
    let upstream = normal_tensor::<Ad, 4>(&mut rng, [2, 8, 4, 5], 0.0, 1.0, &dev);
    let run = |fused: bool| {
        let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
        let y = if fused {
            cat_channels(a.clone(), b.clone())
        } else {
            Tensor::cat(vec![a.clone(), b.clone()], 1)
        };
        // `a` also feeds another op: its two gradients are added.
        let loss = (y.clone() * upstream.clone()).sum() + (a.clone() * a.clone()).sum();
        let grads = loss.backward();
        (y.inner(), a.grad(&grads).unwrap(), b.grad(&grads).unwrap())
    };
    let (ours, theirs) = (run(true), run(false));
    assert_eq!(max_diff(ours.0, theirs.0), 0.0);
    assert!(max_diff(ours.1, theirs.1) < 1e-6);
    assert_eq!(max_diff(ours.2, theirs.2), 0.0);
    // Untracked: the plain backend's kernel, on a strided view and with
    // an empty part.
    let wide = normal_tensor::<CpuBackend, 4>(&mut rng, [2, 3, 4, 7], 0.0, 1.0, &dev);
    let view = wide.slice([0..2, 0..3, 0..4, 1..6]);
    let plain_b = b.clone().inner();
    let expected = Tensor::cat(vec![view.clone(), plain_b.clone()], 1);
    assert_eq!(max_diff(cat_channels(view, plain_b.clone()), expected), 0.0);
    let empty = Tensor::<CpuBackend, 4>::zeros([2, 0, 4, 5], &dev);
    assert_eq!(max_diff(cat_channels(empty, plain_b.clone()), plain_b), 0.0);
    // Splits at the edges: one part empty.
    let grad = primitive(upstream.inner());
    for first in [0, 8] {
        let (da, db) = <CpuBackend as FusedOps>::fused_split_channels(grad.clone(), first);
        assert_eq!(da.shape().dims::<4>(), [2, first, 4, 5]);
        assert_eq!(db.shape().dims::<4>(), [2, 8 - first, 4, 5]);
    }
}

#[test]
fn causal_attention_matches_burns_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // 150 and 129 cross the kernel's 64-row blocks (a partial last block);
    // small heads share a task (all of them, or 8 a task for [4, 4, 64,
    // 32]), heads of 256 × 16 have one each.
    for [b, h, t, d] in [
        [2, 3, 17, 8],
        [1, 2, 64, 32],
        [1, 1, 1, 4],
        [1, 2, 150, 8],
        [4, 4, 64, 32],
        [1, 2, 256, 16],
    ] {
        let mut input =
            || normal_tensor::<Ad, 4>(&mut rng, [b, h, t, d], 0.0, 1.5, &dev).require_grad();
        let (q, k, v) = (input(), input(), input());
        let upstream = normal_tensor::<Ad, 4>(&mut rng, [b, h, t, d], 0.0, 1.0, &dev);
        let ours = causal_attention(q.clone(), k.clone(), v.clone());
        // burn's decomposed attention with an explicit causal mask.
        let theirs = {
            let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) / (d as f64).sqrt();
            let future = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &dev)
                .unsqueeze::<4>()
                .expand([b, h, t, t]);
            activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3).matmul(v.clone())
        };
        assert!(max_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-4);
        let ga = (ours * upstream.clone()).sum().backward();
        let gb = (theirs * upstream).sum().backward();
        for x in [&q, &k, &v] {
            let (a, b) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
            assert!(max_diff(a, b) < 1e-4, "{t}x{d}");
        }
        // The composed default (what other backends' FusedOps run) agrees too.
        let (out, lse) = composed_causal_attention::<CpuBackend>(
            primitive(q.clone().inner()),
            primitive(k.clone().inner()),
            primitive(v.clone().inner()),
            1.0 / (d as f32).sqrt(),
        );
        let fused = causal_attention(q.inner(), k.inner(), v.inner());
        assert!(max_diff(float::<CpuBackend, 4>(out), fused) < 1e-4);
        assert_eq!(float::<CpuBackend, 3>(lse).dims(), [b, h, t]);
    }
}

/// Generation's attention over a cache: the last T queries of a causal
/// attention, computed from caches whose unfilled rows (NaN here) are
/// never read; the kernel and the composition other backends run.
#[test]
fn cached_attention_is_the_last_rows_of_causal_attention() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // [b, h, T, seen, capacity, d]: one new query and several after a
    // prefix; a head size that 16 does not divide; enough work for the
    // parallel path; a single position.
    for [b, h, t, seen, capacity, d] in [
        [2, 3, 1, 17, 20, 8],
        [1, 2, 3, 40, 64, 20],
        [4, 4, 2, 300, 310, 16],
        [1, 1, 1, 1, 1, 4],
    ] {
        let mut input =
            || normal_tensor::<CpuBackend, 4>(&mut rng, [b, h, seen, d], 0.0, 1.5, &dev);
        let (q, k, v) = (input(), input(), input());
        let expected = causal_attention(q.clone(), k.clone(), v.clone()).narrow(2, seen - t, t);
        let cache = |x: Tensor<CpuBackend, 4>| {
            Tensor::<CpuBackend, 4>::full([b, h, capacity, d], f32::NAN, &dev)
                .slice_assign([0..b, 0..h, 0..seen, 0..d], x)
        };
        let (key, value, q) = (cache(k), cache(v), q.narrow(2, seen - t, t));
        let ours = cached_attention(q.clone(), key.clone(), value.clone(), seen);
        assert_eq!(ours.dims(), [b, h, t, d]);
        assert!(
            max_diff(ours, expected.clone()) < 1e-5,
            "{b}x{h}x{t}x{seen}x{d}"
        );
        let composed = composed_cached_attention::<CpuBackend>(
            primitive(q),
            primitive(key),
            primitive(value),
            seen,
        );
        assert!(max_diff(float::<CpuBackend, 4>(composed), expected) < 1e-5);
    }
}

/// burn-flex is patched (third_party/burn-flex/GENZOO-PATCH.md) so that
/// `slice_assign` writes a tensor that holds its buffer alone in place
/// (a key/value cache grows by one position per step); a tensor that
/// shares its buffer is still copied first, leaving the other intact.
#[test]
fn slice_assign_writes_in_place_only_what_is_held_alone() {
    let dev = CpuDevice::default();
    let address = |x: &Tensor<CpuBackend, 2>| {
        primitive(x.clone()).as_slice::<f32>().unwrap().as_ptr() as usize
    };
    let row = || Tensor::<CpuBackend, 2>::from_floats([[7.0, 8.0, 9.0]], &dev);
    let buffer = Tensor::<CpuBackend, 2>::zeros([4, 3], &dev);
    let before = address(&buffer);
    let written = buffer.slice_assign([2..3, 0..3], row());
    assert_eq!(address(&written), before, "held alone: written in place");
    let shared = written.clone();
    let copied = written.slice_assign([0..1, 0..3], row());
    assert_ne!(address(&copied), before, "shared: copied");
    let rows = |x: Tensor<CpuBackend, 2>| x.into_data().to_vec::<f32>().unwrap();
    let (z, r) = ([0.0f32; 3], [7.0f32, 8.0, 9.0]);
    assert_eq!(
        rows(shared),
        [z, z, r, z].concat(),
        "the other handle is untouched"
    );
    assert_eq!(rows(copied), [r, z, r, z].concat());
}

/// An activation's backward writes over the incoming gradient when it holds
/// its buffer alone, and leaves a gradient that is shared intact.
#[test]
fn activation_backward_reuses_only_a_gradient_held_alone() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    let x = primitive(normal_tensor::<CpuBackend, 2>(
        &mut rng,
        [6, 50],
        0.0,
        1.0,
        &dev,
    ));
    let grad = || {
        primitive(normal_tensor::<CpuBackend, 2>(
            &mut host_rng(2, "test", 0),
            [6, 50],
            0.0,
            1.0,
            &dev,
        ))
    };
    let values = |t: &FloatTensor<Flex>| t.as_slice::<f32>().unwrap().to_vec();
    let address = |t: &FloatTensor<Flex>| t.as_slice::<f32>().unwrap().as_ptr() as usize;
    let expected: Vec<f32> = values(&x)
        .iter()
        .zip(values(&grad()))
        .map(|(&x, g)| if x < 0.0 { 0.2 * g } else { g })
        .collect();

    let alone = grad();
    let before = address(&alone);
    let written = Flex::fused_leaky_relu_backward(x.clone(), alone, 0.2);
    assert_eq!(address(&written), before, "held alone: written in place");
    assert_eq!(values(&written), expected);

    let shared = grad();
    let kept = values(&shared);
    let copied = Flex::fused_leaky_relu_backward(x, shared.clone(), 0.2);
    assert_ne!(address(&copied), address(&shared), "shared: a new buffer");
    assert_eq!(values(&copied), expected);
    assert_eq!(values(&shared), kept, "the other handle is untouched");
}

#[test]
fn packed_self_attention_matches_split_heads_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    for (b, t, n_head, head_size) in [(2, 17, 3, 8), (1, 64, 4, 32), (1, 1, 1, 4), (2, 129, 2, 8)] {
        let c = n_head * head_size;
        let qkv = normal_tensor::<Ad, 3>(&mut rng, [b, t, 3 * c], 0.0, 1.5, &dev).require_grad();
        let upstream = normal_tensor::<Ad, 3>(&mut rng, [b, t, c], 0.0, 1.0, &dev);
        let ours = causal_self_attention(qkv.clone(), n_head);
        // The heads split out, burn's decomposed attention with an
        // explicit mask, the heads merged back.
        let theirs = {
            let [q, k, v] = split_heads(qkv.clone(), n_head, 3);
            let scores = q.matmul(k.swap_dims(2, 3)) / (head_size as f64).sqrt();
            let future = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &dev)
                .unsqueeze::<4>()
                .expand([b, n_head, t, t]);
            merge_heads(
                activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3).matmul(v),
            )
        };
        assert_eq!(ours.dims(), [b, t, c]);
        assert!(max_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-4);
        let ga = (ours * upstream.clone()).sum().backward();
        let gb = (theirs * upstream).sum().backward();
        let (da, db) = (qkv.grad(&ga).unwrap(), qkv.grad(&gb).unwrap());
        assert!(max_diff(da, db) < 1e-4, "{t}x{c}");
    }
}

/// Dropout on the attention weights: the fused kernels (forward and the
/// backward through autodiff) and the composition other backends run,
/// against burn's written-out attention with the same multipliers.
#[test]
fn dropped_self_attention_matches_the_written_out_dropout() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(2, "test", 0);
    // [4, 64, 4, 32]: 16 heads, 8 a task (two tasks).
    for (b, t, n_head, head_size) in [(2, 17, 3, 8), (4, 64, 4, 32), (1, 1, 1, 4), (2, 129, 2, 8)] {
        let c = n_head * head_size;
        let qkv = normal_tensor::<Ad, 3>(&mut rng, [b, t, 3 * c], 0.0, 1.5, &dev).require_grad();
        let upstream = normal_tensor::<Ad, 3>(&mut rng, [b, t, c], 0.0, 1.0, &dev);
        let kept = normal_tensor::<Ad, 4>(&mut rng, [b, n_head, t, t], 0.0, 1.0, &dev)
            .greater_elem(-0.84) // about 80 % kept
            .float();
        let keep = kept * 1.25;
        let ours = causal_self_attention_dropped(qkv.clone(), keep.clone(), n_head);
        let theirs = {
            let [q, k, v] = split_heads(qkv.clone(), n_head, 3);
            let scores = q.matmul(k.swap_dims(2, 3)) / (head_size as f64).sqrt();
            let future = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &dev)
                .unsqueeze::<4>()
                .expand([b, n_head, t, t]);
            let weights = activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3);
            merge_heads((weights * keep.clone()).matmul(v))
        };
        assert_eq!(ours.dims(), [b, t, c]);
        assert!(max_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-4);
        let ga = (ours.clone() * upstream.clone()).sum().backward();
        let gb = (theirs * upstream.clone()).sum().backward();
        let (da, db) = (qkv.grad(&ga).unwrap(), qkv.grad(&gb).unwrap());
        assert!(close(da, db.clone()), "{t}x{c}");

        // The composition (wgpu, CUDA), forward and backward.
        let (qkv, keep) = (primitive(qkv.inner()), primitive(keep.inner()));
        let (out, lse) =
            composed_dropped_self_attention::<CpuBackend>(qkv.clone(), keep.clone(), n_head);
        let out3 = float::<CpuBackend, 3>(out.clone());
        assert!(max_diff(out3, ours.inner()) < 1e-4);
        let grad = primitive(upstream.inner());
        let dqkv = composed_dropped_self_attention_backward::<CpuBackend>(
            qkv, keep, out, lse, grad, n_head,
        );
        assert!(close(float::<CpuBackend, 3>(dqkv), db), "composed {t}x{c}");
    }
    // Nothing dropped: the plain attention, bit for bit.
    let qkv = normal_tensor::<CpuBackend, 3>(&mut rng, [2, 9, 3 * 8], 0.0, 1.0, &dev);
    let ones = Tensor::<CpuBackend, 4>::ones([2, 2, 9, 9], &dev);
    let dropped = causal_self_attention_dropped(qkv.clone(), ones, 2);
    assert_eq!(max_diff(dropped, causal_self_attention(qkv, 2)), 0.0);
}

#[test]
fn conv2d_matches_burns_in_values_and_gradients() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // (N, C_in, H, W, C_out, k, stride, padding): the U-Net's 3×3 convs,
    // its stride-2 downsampling, DCGAN's 4×4 stride 2, odd sizes.
    for (n, ci, h, w, co, k, s, p) in [
        (3, 4, 9, 7, 5, 3, 1, 1),
        (2, 3, 8, 8, 6, 3, 2, 1),
        (2, 2, 28, 28, 4, 4, 2, 1),
        (1, 1, 5, 6, 2, 1, 1, 0),
        (2, 3, 6, 5, 2, 3, 1, 0),
        (1, 2, 7, 9, 3, 5, 2, 2),
        (2, 1, 5, 5, 2, 3, 3, 2),
        // Stride 1 with more channels (the U-Net's shape of layer).
        (3, 9, 6, 7, 5, 3, 1, 1),
        (2, 8, 5, 5, 4, 3, 1, 0),
        (1, 8, 7, 6, 3, 5, 1, 2),
        // Stride 1 over ≥ 196 positions: the forward by kernel rows,
        // 'same' and 'valid' padding, and the U-Net's 28×28 layer.
        (2, 5, 14, 15, 3, 3, 1, 1),
        (1, 3, 16, 13, 4, 5, 1, 2),
        (1, 3, 18, 16, 2, 3, 1, 0),
        (2, 32, 28, 28, 32, 3, 1, 1),
    ] {
        let x = normal_tensor::<Ad, 4>(&mut rng, [n, ci, h, w], 0.0, 1.0, &dev).require_grad();
        let weight =
            normal_tensor::<Ad, 4>(&mut rng, [co, ci, k, k], 0.0, 0.5, &dev).require_grad();
        let bias = normal_tensor::<Ad, 1>(&mut rng, [co], 0.0, 0.5, &dev).require_grad();
        let geometry = ConvGeometry {
            stride: [s, s],
            padding: [p, p],
        };
        let ours = conv2d(x.clone(), weight.clone(), Some(bias.clone()), geometry);
        let theirs = burn::tensor::module::conv2d(
            x.clone(),
            weight.clone(),
            Some(bias.clone()),
            conv_options(geometry),
        );
        assert_eq!(ours.dims(), theirs.dims());
        assert!(max_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-4);
        let upstream = normal_tensor::<Ad, 4>(&mut rng, ours.dims(), 0.0, 1.0, &dev);
        let ga = (ours * upstream.clone()).sum().backward();
        let gb = (theirs * upstream).sum().backward();
        assert!(max_diff(x.grad(&ga).unwrap(), x.grad(&gb).unwrap()) < 1e-4);
        assert!(close(weight.grad(&ga).unwrap(), weight.grad(&gb).unwrap()));
        assert!(close(bias.grad(&ga).unwrap(), bias.grad(&gb).unwrap()));

        // The transposed convolution with the same geometry, from [n, co, ...] back up.
        let y =
            normal_tensor::<Ad, 4>(&mut rng, theirs_shape(n, co, h, w, k, s, p), 0.0, 1.0, &dev)
                .require_grad();
        let weight_t =
            normal_tensor::<Ad, 4>(&mut rng, [co, ci, k, k], 0.0, 0.5, &dev).require_grad();
        let bias_t = normal_tensor::<Ad, 1>(&mut rng, [ci], 0.0, 0.5, &dev).require_grad();
        let ours = conv_transpose2d(y.clone(), weight_t.clone(), Some(bias_t.clone()), geometry);
        let theirs = burn::tensor::module::conv_transpose2d(
            y.clone(),
            weight_t.clone(),
            Some(bias_t.clone()),
            conv_transpose_options(geometry),
        );
        assert_eq!(ours.dims(), theirs.dims());
        assert!(close(ours.clone().inner(), theirs.clone().inner()));
        let upstream = normal_tensor::<Ad, 4>(&mut rng, ours.dims(), 0.0, 1.0, &dev);
        let ga = (ours * upstream.clone()).sum().backward();
        let gb = (theirs * upstream).sum().backward();
        assert!(close(y.grad(&ga).unwrap(), y.grad(&gb).unwrap()));
        assert!(close(
            weight_t.grad(&ga).unwrap(),
            weight_t.grad(&gb).unwrap()
        ));
        assert!(close(bias_t.grad(&ga).unwrap(), bias_t.grad(&gb).unwrap()));
    }
}

#[test]
fn a_convolution_computes_only_the_gradients_of_tracked_inputs() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    let geometry = ConvGeometry {
        stride: [2, 2],
        padding: [1, 1],
    };
    // DCGAN's second convolution, small: [2, 3, 8, 8] → [2, 4, 4, 4].
    let x = normal_tensor::<CpuBackend, 4>(&mut rng, [2, 3, 8, 8], 0.0, 1.0, &dev);
    let weight = normal_tensor::<CpuBackend, 4>(&mut rng, [4, 3, 4, 4], 0.0, 0.5, &dev);
    let grad = normal_tensor::<CpuBackend, 4>(&mut rng, [2, 4, 4, 4], 0.0, 1.0, &dev);
    // The transposed convolution with the same weight ([C_in, C_out, k, k])
    // maps the output's shape back to the input's.
    let grad_t = normal_tensor::<CpuBackend, 4>(&mut rng, [2, 3, 8, 8], 0.0, 1.0, &dev);
    type Backward = fn(
        FloatTensor<CpuBackend>,
        FloatTensor<CpuBackend>,
        FloatTensor<CpuBackend>,
        ConvGeometry,
        ConvGrads,
    ) -> (
        Option<FloatTensor<CpuBackend>>,
        Option<FloatTensor<CpuBackend>>,
    );
    let cases: [(
        &str,
        Backward,
        &Tensor<CpuBackend, 4>,
        &Tensor<CpuBackend, 4>,
    ); 4] = [
        ("conv", CpuBackend::fused_conv2d_backward, &x, &grad),
        (
            "conv, composed",
            composed_conv2d_backward::<CpuBackend>,
            &x,
            &grad,
        ),
        (
            "transposed",
            CpuBackend::fused_conv_transpose2d_backward,
            &grad,
            &grad_t,
        ),
        (
            "transposed, composed",
            composed_conv_transpose2d_backward::<CpuBackend>,
            &grad,
            &grad_t,
        ),
    ];
    for (name, backward, input, upstream) in cases {
        let run = |wants_x: bool, wants_weight: bool| {
            let (dx, dw) = backward(
                primitive(input.clone()),
                primitive(weight.clone()),
                primitive(upstream.clone()),
                geometry,
                ConvGrads {
                    x: wants_x,
                    weight: wants_weight,
                },
            );
            (
                dx.map(float::<CpuBackend, 4>),
                dw.map(float::<CpuBackend, 4>),
            )
        };
        let (dx, dw) = run(true, true);
        let (dx, dw) = (dx.unwrap(), dw.unwrap());
        let (only_dx, none) = run(true, false);
        assert!(none.is_none(), "{name}: dW not asked for");
        assert_eq!(only_dx.unwrap().to_data(), dx.to_data(), "{name}: dX alone");
        let (none, only_dw) = run(false, true);
        assert!(none.is_none(), "{name}: dX not asked for");
        assert_eq!(only_dw.unwrap().to_data(), dw.to_data(), "{name}: dW alone");
        assert!(matches!(run(false, false), (None, None)), "{name}");
    }
    // Through autodiff: an untracked input (a batch of data) or weight (a
    // frozen network) leaves the other's gradient as it was.
    let tracked = |t: &Tensor<CpuBackend, 4>| Tensor::<Ad, 4>::from_inner(t.clone()).require_grad();
    let untracked = |t: &Tensor<CpuBackend, 4>| Tensor::<Ad, 4>::from_inner(t.clone());
    let upstream = Tensor::<Ad, 4>::from_inner(grad.clone());
    let gradients = |x: Tensor<Ad, 4>, w: Tensor<Ad, 4>| {
        let grads = (conv2d(x.clone(), w.clone(), None, geometry) * upstream.clone())
            .sum()
            .backward();
        (x.grad(&grads), w.grad(&grads))
    };
    let (dx, dw) = gradients(tracked(&x), tracked(&weight));
    let (only_dx, none) = gradients(tracked(&x), untracked(&weight));
    assert!(none.is_none());
    assert_eq!(only_dx.unwrap().to_data(), dx.unwrap().to_data());
    let (none, only_dw) = gradients(untracked(&x), tracked(&weight));
    assert!(none.is_none());
    assert_eq!(only_dw.unwrap().to_data(), dw.unwrap().to_data());
}

#[test]
fn a_convolutions_weight_gradient_is_the_same_in_every_run_and_on_any_threads() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    // The U-Net's 28×28 layer: one sample per chunk, 16 chunks to share
    // among the pool's threads, whose float sums must depend neither on
    // which thread took which nor on how many there are.
    let x = normal_tensor::<CpuBackend, 4>(&mut rng, [16, 32, 28, 28], 0.0, 1.0, &dev);
    let weight = normal_tensor::<CpuBackend, 4>(&mut rng, [32, 32, 3, 3], 0.0, 0.5, &dev);
    let grad = normal_tensor::<CpuBackend, 4>(&mut rng, [16, 32, 28, 28], 0.0, 1.0, &dev);
    let geometry = ConvGeometry {
        stride: [1, 1],
        padding: [1, 1],
    };
    let dw = || {
        let wanted = ConvGrads {
            x: false,
            weight: true,
        };
        let (_, dw) = CpuBackend::fused_conv2d_backward(
            primitive(x.clone()),
            primitive(weight.clone()),
            primitive(grad.clone()),
            geometry,
            wanted,
        );
        float::<CpuBackend, 4>(dw.unwrap()).into_data()
    };
    // Two at a time, so that the threads steal each other's work at
    // different moments in every run.
    let first = dw();
    for run in 1..10 {
        let (a, b) = rayon::join(dw, dw);
        assert_eq!(a, first, "run {run}");
        assert_eq!(b, first, "run {run}, beside another");
    }
    // And on other numbers of threads.
    for threads in [1, 3, 16] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert_eq!(pool.install(dw), first, "{threads} threads");
    }
}

/// The output shape of a convolution: the transposed one's input.
fn theirs_shape(
    n: usize,
    co: usize,
    h: usize,
    w: usize,
    k: usize,
    s: usize,
    p: usize,
) -> [usize; 4] {
    [n, co, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1]
}

#[test]
fn the_plain_backend_and_nested_autodiff_route_too() {
    let dev = CpuDevice::default();
    let mut rng = host_rng(1, "test", 0);
    let x = normal_tensor::<CpuBackend, 2>(&mut rng, [5, 33], 0.0, 2.0, &dev);
    assert!(max_diff(gelu(x.clone()), activation::gelu(x.clone())) < 1e-4);
    assert!(max_diff(silu(x.clone()), activation::silu(x.clone())) < 1e-4);
    // Second derivative of Σ silu(x) through nested autodiff (the fused
    // op's backward is differentiable): σ'(x)(2 + x(1 − 2σ(x))).
    type Ad2 = Autodiff<Autodiff<CpuBackend>>;
    let outer = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
    let inner = Tensor::<Ad2, 2>::from_inner(outer.clone()).require_grad();
    let grads = silu(inner.clone()).sum().backward();
    let first = inner.grad(&grads).unwrap(); // Tensor<Ad, 2>, tracked
    let second = outer.grad(&first.sum().backward()).unwrap();
    let s = activation::sigmoid(x.clone());
    let expected = s.clone() * (s.clone().neg() + 1.0) * (x * (s * -2.0 + 1.0) + 2.0);
    assert!(max_diff(second, expected) < 1e-4);
}
