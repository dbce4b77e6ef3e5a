//! Autodiff's [`FusedOps`]: each fused forward recorded with its analytic
//! backward.

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::tensor::TensorMetadata;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatTensor;

use super::{ConvGeometry, ConvGrads, FusedOps, GroupNormSpec};

/// Records a unary op whose backward is `backward(input, grad)`: the state
/// kept for the backward pass is the input itself.
macro_rules! unary_with_backward {
    ($name:ident, $forward:ident, $backward:ident) => {
        fn $forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct $name;

            impl<B: FusedOps> Backward<B, 1> for $name {
                type State = FloatTensor<B>;

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let input = ops.state;
                    unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                        B::$backward(input, grad)
                    });
                }
            }

            match $name
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let output = B::$forward(x.primitive.clone());
                    prep.finish(x.primitive, output)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::$forward(x.primitive)),
            }
        }
    };
}

/// Records a convolution-like op of (x, weight) whose backward
/// `backward(x, weight, grad, geometry, wanted)` gives (dX, dW), each only
/// where its input is tracked.
macro_rules! conv_with_backward {
    ($name:ident, $forward:ident, $backward:ident) => {
        fn $forward(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            geometry: ConvGeometry,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct $name;

            impl<B: FusedOps> Backward<B, 2> for $name {
                /// x, the weight, the geometry.
                type State = (FloatTensor<B>, FloatTensor<B>, ConvGeometry);

                fn backward(
                    self,
                    ops: Ops<Self::State, 2>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [node_x, node_weight] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (x, weight, geometry) = ops.state;
                    let wanted = ConvGrads {
                        x: node_x.is_some(),
                        weight: node_weight.is_some(),
                    };
                    let (dx, dw) = B::$backward(x, weight, grad, geometry, wanted);
                    for (node, g) in [(node_x, dx), (node_weight, dw)] {
                        if let (Some(node), Some(g)) = (node, g) {
                            grads.register::<B>(node.id, g);
                        }
                    }
                }
            }

            let parents = [x.node.clone(), weight.node.clone()];
            match $name.prepare::<C>(parents).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let out = B::$forward(x.primitive.clone(), weight.primitive.clone(), geometry);
                    prep.finish((x.primitive, weight.primitive, geometry), out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::$forward(x.primitive, weight.primitive, geometry))
                }
            }
        }
    };
}

/// Autodiff records the fused forward with its analytic backward; the
/// backward itself is the composed default, so nested autodiff (a gradient
/// penalty) differentiates through it.
impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    unary_with_backward!(FusedGelu, fused_gelu, fused_gelu_backward);
    unary_with_backward!(FusedSilu, fused_silu, fused_silu_backward);
    unary_with_backward!(FusedSoftplus, fused_softplus, fused_softplus_backward);
    unary_with_backward!(
        FusedUpsampleNearest2,
        fused_upsample_nearest2,
        fused_upsample_nearest2_backward
    );

    fn fused_leaky_relu(x: FloatTensor<Self>, slope: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedLeakyRelu;

        impl<B: FusedOps> Backward<B, 1> for FusedLeakyRelu {
            /// The input and the slope.
            type State = (FloatTensor<B>, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (input, slope) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_leaky_relu_backward(input, grad, slope)
                });
            }
        }

        match FusedLeakyRelu
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::fused_leaky_relu(x.primitive.clone(), slope);
                prep.finish((x.primitive, slope), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_leaky_relu(x.primitive, slope)),
        }
    }

    fn fused_causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedCausalAttention;

        impl<B: FusedOps> Backward<B, 3> for FusedCausalAttention {
            /// q, k, v, the output, its log-sum-exp, the scale.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f32,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_q, node_k, node_v] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (q, k, v, out, lse, scale) = ops.state;
                let (dq, dk, dv) =
                    B::fused_causal_attention_backward(q, k, v, out, lse, grad, scale);
                for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let parents = [q.node.clone(), k.node.clone(), v.node.clone()];
        match FusedCausalAttention
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::fused_causal_attention_with_lse(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                    scale,
                );
                let state = (
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    out.clone(),
                    lse,
                    scale,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_causal_attention(
                q.primitive,
                k.primitive,
                v.primitive,
                scale,
            )),
        }
    }

    fn fused_causal_self_attention(qkv: FloatTensor<Self>, n_head: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedCausalSelfAttention;

        impl<B: FusedOps> Backward<B, 1> for FusedCausalSelfAttention {
            /// The packed input, the output, its log-sum-exp, the heads.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (qkv, out, lse, n_head) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_causal_self_attention_backward(qkv, out, lse, grad, n_head)
                });
            }
        }

        match FusedCausalSelfAttention
            .prepare::<C>([qkv.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) =
                    B::fused_causal_self_attention_with_lse(qkv.primitive.clone(), n_head);
                prep.finish((qkv.primitive, out.clone(), lse, n_head), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_causal_self_attention(qkv.primitive, n_head))
            }
        }
    }

    /// Recorded as an op of `qkv` alone: dropout's multipliers are a constant.
    fn fused_causal_self_attention_dropped(
        qkv: FloatTensor<Self>,
        keep: FloatTensor<Self>,
        n_head: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedDroppedSelfAttention;

        impl<B: FusedOps> Backward<B, 1> for FusedDroppedSelfAttention {
            /// The packed input, the multipliers, the output, its
            /// log-sum-exp, the heads.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                usize,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (qkv, keep, out, lse, n_head) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_causal_self_attention_dropped_backward(
                        qkv, keep, out, lse, grad, n_head,
                    )
                });
            }
        }

        match FusedDroppedSelfAttention
            .prepare::<C>([qkv.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::fused_causal_self_attention_dropped_with_lse(
                    qkv.primitive.clone(),
                    keep.primitive.clone(),
                    n_head,
                );
                prep.finish(
                    (qkv.primitive, keep.primitive, out.clone(), lse, n_head),
                    out,
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_causal_self_attention_dropped(
                qkv.primitive,
                keep.primitive,
                n_head,
            )),
        }
    }

    conv_with_backward!(FusedConv2d, fused_conv2d, fused_conv2d_backward);
    conv_with_backward!(
        FusedConvTranspose2d,
        fused_conv_transpose2d,
        fused_conv_transpose2d_backward
    );

    fn fused_normalize_rows(x: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedNormalizeRows;

        impl<B: FusedOps> Backward<B, 1> for FusedNormalizeRows {
            /// The output x̂ and each row's rstd.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (normed, rstd) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_normalize_rows_backward(normed, rstd, grad)
                });
            }
        }

        match FusedNormalizeRows
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (normed, rstd) = B::fused_normalize_rows_with_rstd(x.primitive, eps);
                prep.finish((normed.clone(), rstd), normed)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_normalize_rows(x.primitive, eps)),
        }
    }

    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct FusedBatchNorm;

        impl<B: FusedOps> Backward<B, 3> for FusedBatchNorm {
            /// x, the batch mean and variance, γ, eps.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f32,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, mean, var, gamma, eps) = ops.state;
                let (dx, dgamma, dbeta) =
                    B::fused_batch_norm_backward(x, mean, var, gamma, grad, eps);
                for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        // The statistics leave the graph: they only feed the running averages.
        let untracked = |t: FloatTensor<B>| <Self as AutodiffBackend>::from_inner(t);
        let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match FusedBatchNorm
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mean, var) = B::fused_batch_norm(
                    x.primitive.clone(),
                    gamma.primitive.clone(),
                    beta.primitive,
                    eps,
                );
                let stats = (untracked(mean.clone()), untracked(var.clone()));
                let state = (x.primitive, mean, var, gamma.primitive, eps);
                (prep.finish(state, y), stats.0, stats.1)
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, var) =
                    B::fused_batch_norm(x.primitive, gamma.primitive, beta.primitive, eps);
                (prep.finish(y), untracked(mean), untracked(var))
            }
        }
    }

    fn fused_cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedCatChannels;

        impl<B: FusedOps> Backward<B, 2> for FusedCatChannels {
            /// The first input's channels.
            type State = usize;

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_a, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (da, db) = B::fused_split_channels(grad, ops.state);
                for (node, g) in [(node_a, da), (node_b, db)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let first = a.primitive.shape()[1];
        match FusedCatChannels
            .prepare::<C>([a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish(first, B::fused_cat_channels(a.primitive, b.primitive))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_cat_channels(a.primitive, b.primitive))
            }
        }
    }

    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct FusedGroupNorm;

        impl<B: FusedOps> Backward<B, 3> for FusedGroupNorm {
            /// x, γ, β, the per-group mean and rstd, the spec.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                GroupNormSpec,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, beta, mean, rstd, spec) = ops.state;
                let (dx, dgamma, dbeta) =
                    B::fused_group_norm_backward(x, gamma, beta, mean, rstd, grad, spec);
                for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        // The statistics leave the graph: only the backward pass reads them.
        let untracked = |t: FloatTensor<B>| <Self as AutodiffBackend>::from_inner(t);
        let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match FusedGroupNorm
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mean, rstd) = B::fused_group_norm(
                    x.primitive.clone(),
                    gamma.primitive.clone(),
                    beta.primitive.clone(),
                    spec,
                );
                let stats = (untracked(mean.clone()), untracked(rstd.clone()));
                let state = (
                    x.primitive,
                    gamma.primitive,
                    beta.primitive,
                    mean,
                    rstd,
                    spec,
                );
                (prep.finish(state, y), stats.0, stats.1)
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, rstd) =
                    B::fused_group_norm(x.primitive, gamma.primitive, beta.primitive, spec);
                (prep.finish(y), untracked(mean), untracked(rstd))
            }
        }
    }
}
