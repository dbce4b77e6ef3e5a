//! genzoo's integration tests, as one test binary: each separate binary
//! compiled its own copy of the engine, the models and burn's autodiff
//! code for the CPU backend (release builds share no generic code between
//! crates), and seven of them took three times as long to build as this
//! one does.
//!
//! Tests that run models in this process hold [`support::rng_lock`];
//! those that run the `genzoo` binary need not.

mod cli;
mod data_parallel;
mod ddpm;
mod engine;
mod gan;
mod gpt;
mod latent;
mod support;
mod wgpu;
