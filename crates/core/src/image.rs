//! Tensor ↔ image helpers: sample grids as PNG files.

use std::path::Path;

use burn::prelude::*;

use crate::error::{Error, Result};

/// Tiles `images` (`[n, channels, height, width]`, values in `[0, 1]`,
/// channels 1 or 3) into one 8-bit image with `columns` per row and a
/// 2-pixel border. Values outside `[0, 1]` are clamped.
pub fn grid<B: Backend>(images: Tensor<B, 4>, columns: usize) -> Result<::image::DynamicImage> {
    let [n, c, h, w] = images.dims();
    if n == 0 {
        return Err(Error::Other("cannot draw a grid of zero images".into()));
    }
    let data = drawable_values(images)?;
    let columns = columns.clamp(1, n);
    let rows = n.div_ceil(columns);
    let pad = 2;
    let (gw, gh) = (columns * (w + pad) + pad, rows * (h + pad) + pad);
    let mut out = ::image::RgbImage::new(gw as u32, gh as u32);
    for i in 0..n {
        let (row, col) = (i / columns, i % columns);
        let (x0, y0) = (pad + col * (w + pad), pad + row * (h + pad));
        for y in 0..h {
            for x in 0..w {
                let px = |ch: usize| {
                    let v = data[((i * c + ch) * h + y) * w + x];
                    (v * 255.0).round() as u8
                };
                let rgb = if c == 1 {
                    [px(0); 3]
                } else {
                    [px(0), px(1), px(2)]
                };
                out.put_pixel((x0 + x) as u32, (y0 + y) as u32, ::image::Rgb(rgb));
            }
        }
    }
    Ok(::image::DynamicImage::ImageRgb8(out))
}

/// The values of images with 1 or 3 channels, clamped to `[0, 1]`.
fn drawable_values<B: Backend>(images: Tensor<B, 4>) -> Result<Vec<f32>> {
    let c = images.dims()[1];
    if c != 1 && c != 3 {
        return Err(Error::Other(format!(
            "cannot draw images with {c} channels (1 or 3 expected)"
        )));
    }
    images
        .clamp(0.0, 1.0)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| Error::Other(format!("cannot read images: {e:?}")))
}

/// Writes a grid of `images` (see [`grid`]) as a PNG file, creating parent directories.
pub fn save_grid<B: Backend>(images: Tensor<B, 4>, columns: usize, path: &Path) -> Result<()> {
    let img = grid(images, columns)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    img.save_with_format(path, ::image::ImageFormat::Png)
        .map_err(|e| Error::Other(format!("{}: cannot write PNG: {e}", path.display())))
}

/// A square-ish column count for `n` images (8 for 64).
pub fn default_columns(n: usize) -> usize {
    ((n as f64).sqrt().ceil() as usize).max(1)
}

/// Writes each of `images` (`[n, channels, height, width]`, values in
/// `[0, 1]`, clamped; channels 1 or 3) as its own PNG file in `dir`, named by
/// its index from `first` ([`image_file_name`]), at its own size, without a
/// border (see [`save_pixels`]). This is the layout tools outside genzoo read
/// (pytorch-fid, clean-fid, torch-fidelity).
pub fn save_images<B: Backend>(images: Tensor<B, 4>, dir: &Path, first: usize) -> Result<()> {
    let [n, c, h, w] = images.dims();
    let bytes: Vec<u8> = drawable_values(images)?
        .into_iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    for (i, pixels) in bytes.chunks_exact(c * h * w).enumerate().take(n) {
        save_pixels(pixels, (c, h, w), &dir.join(image_file_name(first + i)))?;
    }
    Ok(())
}

/// The file name of image `index` in a folder of images: `000042.png`.
pub fn image_file_name(index: usize) -> String {
    format!("{index:06}.png")
}

/// Writes one 8-bit image, channel-major `[channels, height, width]`, as a
/// PNG file: grey for one channel, RGB for three.
pub fn save_pixels(pixels: &[u8], (c, h, w): (usize, usize, usize), path: &Path) -> Result<()> {
    let image = match c {
        1 => {
            let img = ::image::GrayImage::from_raw(w as u32, h as u32, pixels.to_vec());
            img.map(::image::DynamicImage::ImageLuma8)
        }
        3 => {
            // Channel-major planes → interleaved RGB.
            let plane = h * w;
            let bytes = (0..plane)
                .flat_map(|p| (0..3).map(move |ch| pixels[ch * plane + p]))
                .collect();
            let img = ::image::RgbImage::from_raw(w as u32, h as u32, bytes);
            img.map(::image::DynamicImage::ImageRgb8)
        }
        _ => {
            return Err(Error::Other(format!(
                "cannot write images with {c} channels (1 or 3 expected)"
            )));
        }
    }
    .ok_or_else(|| {
        Error::Other(format!(
            "{} values are not a {c}×{h}×{w} image",
            pixels.len()
        ))
    })?;
    image
        .save_with_format(path, ::image::ImageFormat::Png)
        .map_err(|e| Error::Other(format!("{}: cannot write PNG: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuBackend, CpuDevice};

    #[test]
    fn grid_has_expected_size_and_pixels() {
        let dev = CpuDevice::default();
        let imgs = Tensor::<CpuBackend, 4>::ones([3, 1, 4, 5], &dev);
        let g = grid(imgs, 2).unwrap().to_rgb8();
        assert_eq!((g.width(), g.height()), (2 * 7 + 2, 2 * 6 + 2));
        assert_eq!(g.get_pixel(2, 2).0, [255, 255, 255]);
        assert_eq!(g.get_pixel(0, 0).0, [0, 0, 0]);
    }

    #[test]
    fn images_are_written_one_file_each_at_their_own_size() {
        let dev = CpuDevice::default();
        let dir = tempfile::tempdir().unwrap();
        // Two 2×3 colour images: image i's channel ch at (y, x) is (i + ch + y + x) / 8.
        let values: Vec<f32> = (0..2 * 3 * 2 * 3)
            .map(|k| {
                let (i, ch, y, x) = (k / 18, k / 6 % 3, k / 3 % 2, k % 3);
                (i + ch + y + x) as f32 / 8.0
            })
            .collect();
        let images =
            Tensor::<CpuBackend, 4>::from_data(TensorData::new(values, [2, 3, 2, 3]), &dev);
        save_images(images, dir.path(), 7).unwrap();
        let second = ::image::open(dir.path().join("000008.png"))
            .unwrap()
            .to_rgb8();
        assert_eq!((second.width(), second.height()), (3, 2));
        let px = |i: usize, ch: usize, y: usize, x: usize| {
            ((i + ch + y + x) as f32 / 8.0 * 255.0).round() as u8
        };
        assert_eq!(
            second.get_pixel(2, 1).0,
            [px(1, 0, 1, 2), px(1, 1, 1, 2), px(1, 2, 1, 2)]
        );
        assert!(dir.path().join("000007.png").exists() && !dir.path().join("000009.png").exists());
        // One channel: a grey PNG.
        let grey = Tensor::<CpuBackend, 4>::ones([1, 1, 4, 5], &dev) * 0.5;
        save_images(grey, dir.path(), 0).unwrap();
        let img = ::image::open(dir.path().join("000000.png")).unwrap();
        assert_eq!(img.color(), ::image::ColorType::L8);
        assert_eq!(img.to_luma8().get_pixel(4, 3).0, [128]);
    }
}
