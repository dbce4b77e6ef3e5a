//! Latent-space walks (`genzoo_core::latent`) on the real families: a
//! decoded code is the image the sampler would draw from it (VAE, GAN, and
//! a DDPM's x_T through deterministic DDIM), grids are laid out row by row
//! with one class per row, traversals move one dimension per row, and a
//! VAE reconstructs from its posterior means.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use genzoo::core::latent::{self, interpolation_codes, linspace, traversal_codes};
use genzoo::core::noise;
use genzoo::core::seed::{derive, host_rng, normal_tensor};
use genzoo::core::{CpuDevice, Family, ImageBatch, SampleRequest, SamplerOptions};
use genzoo::data::synthetic;
use genzoo::models::ddpm::DdpmTrainer;
use genzoo::models::gan::{GanConfig, GanTrainer};
use genzoo::models::vae::{VaeConfig, VaeTrainer};

use crate::support::{max_diff, rng_lock, tiny_ddpm};

type B = Autodiff<Flex>;
type Inner = Flex;

fn values(t: Tensor<Inner, 4>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

/// A small VAE on 12×12 images, conditional on 3 classes when asked.
fn vae(classes: usize) -> VaeTrainer<B> {
    <Flex as Backend>::seed(&CpuDevice::default(), 3);
    let config = VaeConfig {
        height: 12,
        width: 12,
        hidden: 32,
        latent: 6,
        conditional: classes > 0,
        num_classes: classes,
        ..Default::default()
    };
    VaeTrainer::<B>::new(config, &CpuDevice::default())
}

/// `n` synthetic 12×12 test images in `[0, 1]` with labels 0..3.
fn images(n: usize) -> ImageBatch<Inner> {
    let (x, y) = synthetic::images(n, 12, 3, 9);
    let dev = CpuDevice::default();
    let pixels: Vec<f32> = x.iter().map(|&p| p as f32 / 255.0).collect();
    let labels: Vec<i64> = y.iter().map(|&l| l as i64).collect();
    ImageBatch {
        images: Tensor::from_data(TensorData::new(pixels, [n, 1, 12, 12]), &dev),
        labels: Tensor::from_data(TensorData::new(labels, [n]), &dev),
    }
}

fn labels(values: &[i64]) -> Tensor<Inner, 1, Int> {
    Tensor::from_data(
        TensorData::new(values.to_vec(), [values.len()]),
        &CpuDevice::default(),
    )
}

#[test]
fn a_vae_decodes_codes_as_it_samples_and_reconstructs_from_its_posterior_means() {
    let _guard = rng_lock();
    let dev = CpuDevice::default();
    for classes in [0, 3] {
        let vae = vae(classes);
        assert_eq!(vae.latent_dim(), Some(6));
        assert_eq!(Family::<B>::num_classes(&vae), classes);
        // The prior draw `sample_images` makes for seed 4, decoded by hand.
        let request = SampleRequest {
            n: 5,
            seed: 4,
            ..Default::default()
        };
        let z = {
            let _noise = noise::begin(derive(4, "vae-sample", 0));
            noise::normal_per_example::<Inner, 2>([5, 6], &dev)
        };
        let classes_in_turn: Vec<i64> = (0..5).map(|i| i % classes.max(1) as i64).collect();
        let decoded = vae
            .decode_latents(z, labels(&classes_in_turn), &SamplerOptions::default())
            .unwrap();
        assert_eq!(decoded.dims(), [5, 1, 12, 12]);
        assert_eq!(
            values(decoded),
            values(vae.sample_images(&request).unwrap())
        );

        let batch = images(7);
        let codes = vae
            .encode_images(batch.images.clone(), batch.labels.clone())
            .unwrap();
        assert_eq!(codes.dims(), [7, 6]);
        let rebuilt = latent::reconstruct(
            &vae,
            batch.images.clone(),
            batch.labels.clone(),
            &SamplerOptions::default(),
        )
        .unwrap();
        let autodiff_batch = ImageBatch::<B> {
            images: Tensor::from_inner(batch.images),
            labels: Tensor::from_inner(batch.labels),
        };
        assert_eq!(values(rebuilt), values(vae.reconstruct(&autodiff_batch)));

        // Past one chunk of 500, each image as in one call of them all.
        let batch = images(501);
        let chunked = latent::reconstruct(
            &vae,
            batch.images.clone(),
            batch.labels.clone(),
            &SamplerOptions::default(),
        )
        .unwrap();
        assert_eq!(chunked.dims(), [501, 1, 12, 12]);
        let autodiff_batch = ImageBatch::<B> {
            images: Tensor::from_inner(batch.images),
            labels: Tensor::from_inner(batch.labels),
        };
        let at_once = values(vae.reconstruct(&autodiff_batch));
        assert!(max_diff(&values(chunked), &at_once) < 1e-6);
    }
}

#[test]
fn grids_run_row_by_row_with_one_class_per_row() {
    let _guard = rng_lock();
    let dev = CpuDevice::default();
    let vae = vae(3);
    let none = SamplerOptions::default();
    let decode = |codes: Vec<f32>, label: &[i64]| {
        let n = label.len();
        let codes = Tensor::from_data(TensorData::new(codes, [n, 6]), &dev);
        values(vae.decode_latents(codes, labels(label), &none).unwrap())
    };

    // Interpolations: row r from one code to another, all of class r mod 3.
    let (rows, cols) = (4, 5);
    let grid = latent::interpolate(&vae, rows, cols, None, 11, &none, &dev).unwrap();
    assert_eq!(grid.dims(), [rows * cols, 1, 12, 12]);
    let row_classes: Vec<i64> = (0..rows * cols).map(|i| (i / cols % 3) as i64).collect();
    let expected = decode(interpolation_codes(rows, cols, 6, 11), &row_classes);
    assert_eq!(values(grid), expected);
    // A class for every row, and one the model does not know.
    let grid = latent::interpolate(&vae, 2, 3, Some(2), 11, &none, &dev).unwrap();
    assert_eq!(
        values(grid),
        decode(interpolation_codes(2, 3, 6, 11), &[2; 6])
    );
    let err = latent::interpolate(&vae, 2, 3, Some(3), 11, &none, &dev).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = latent::interpolate(&vae, 2, 1, None, 11, &none, &dev).unwrap_err();
    assert!(err.to_string().contains("two images per row"), "{err}");

    // Traversals: the image's own code with one dimension per row moved.
    let batch = images(3);
    let (image, label) = (batch.images.narrow(0, 2, 1), batch.labels.narrow(0, 2, 1));
    let class: i64 = label.clone().into_scalar().elem();
    let base: Vec<f32> = vae
        .encode_images(image.clone(), label.clone())
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let steps = linspace(-2.0, 2.0, 3);
    let grid =
        latent::traverse(&vae, image.clone(), label.clone(), &[4, 1], &steps, &none).unwrap();
    assert_eq!(grid.dims(), [6, 1, 12, 12]);
    let expected = decode(traversal_codes(&base, &[4, 1], &steps), &[class; 6]);
    assert_eq!(values(grid.clone()), expected);
    // Moving a dimension changes the image; each row's images differ.
    let flat = values(grid);
    let tile = |i: usize| &flat[i * 144..(i + 1) * 144];
    assert!(max_diff(tile(0), tile(2)) > 1e-4 && max_diff(tile(3), tile(5)) > 1e-4);
    let err = latent::traverse(&vae, image, label, &[6], &steps, &none).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn a_gan_decodes_its_noise_as_it_samples_and_has_no_encoder() {
    let _guard = rng_lock();
    let dev = CpuDevice::default();
    <Flex as Backend>::seed(&dev, 5);
    let gan = GanTrainer::<B>::new(
        GanConfig {
            height: 12,
            width: 12,
            conditional: true,
            num_classes: 4,
            ..Default::default()
        },
        &dev,
    );
    assert_eq!(gan.latent_dim(), Some(100));
    let request = SampleRequest {
        n: 6,
        seed: 2,
        ..Default::default()
    };
    let z = {
        let _noise = noise::begin(derive(2, "gan-sample", 0));
        gan.noise::<Inner>(6, &dev)
    };
    let decoded = gan
        .decode_latents(z, labels(&[0, 1, 2, 3, 0, 1]), &SamplerOptions::default())
        .unwrap();
    assert_eq!(
        values(decoded),
        values(gan.sample_images(&request).unwrap())
    );
    let batch = images(2);
    let err = gan.encode_images(batch.images, batch.labels).unwrap_err();
    assert!(err.to_string().contains("no encoder"), "{err}");
}

#[test]
fn a_ddpm_decodes_x_t_through_deterministic_ddim_only() {
    let _guard = rng_lock();
    let dev = CpuDevice::default();
    <Flex as Backend>::seed(&dev, 5);
    let ddpm = DdpmTrainer::<B>::new(tiny_ddpm(0), &dev);
    assert_eq!(ddpm.latent_dim(), Some(64));
    let ddim = SamplerOptions {
        method: Some("ddim".into()),
        steps: Some(5),
        eta: Some(0.0),
        ..Default::default()
    };
    let request = SampleRequest {
        n: 3,
        seed: 8,
        sampler: ddim.clone(),
        ..Default::default()
    };
    // The x_T the sampler draws for seed 8 (its first draw).
    let x_t: Tensor<Inner, 4> = normal_tensor(
        &mut host_rng(8, "ddpm-sample", 0),
        [3, 1, 8, 8],
        0.0,
        1.0,
        &dev,
    );
    let decoded = ddpm
        .decode_latents(x_t.reshape([3, 64]), labels(&[0; 3]), &ddim)
        .unwrap();
    assert_eq!(
        values(decoded),
        values(ddpm.sample_images(&request).unwrap())
    );

    let codes = || Tensor::<Inner, 2>::zeros([1, 64], &dev);
    for sampler in [
        SamplerOptions {
            method: Some("ddpm".into()),
            ..Default::default()
        },
        SamplerOptions {
            eta: Some(0.5),
            ..ddim.clone()
        },
    ] {
        let err = ddpm
            .decode_latents(codes(), labels(&[0]), &sampler)
            .unwrap_err();
        assert!(err.to_string().contains("deterministic"), "{err}");
    }
}
