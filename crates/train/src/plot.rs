//! Loss curves as SVG figures: a run's `curves.svg`, `genzoo plot`'s
//! overlays of several runs, and the comparison's `report.svg`.
//!
//! A figure is a grid of [`Panel`]s, one per quantity (a loss), each with
//! its lines ([`Series`]): the training values logged every `log_every`
//! steps and the held-out values of every evaluation, against the step.
//!
//! ```no_run
//! use std::path::Path;
//! use genzoo_train::plot::{curve_panels, write_svg};
//! use genzoo_train::logger::read_jsonl;
//!
//! let a = read_jsonl(Path::new("runs/a/metrics.jsonl")).unwrap();
//! let b = read_jsonl(Path::new("runs/b/metrics.jsonl")).unwrap();
//! let panels = curve_panels(&[("a".into(), a), ("b".into(), b)]);
//! write_svg(&panels, Path::new("a-vs-b.svg")).unwrap();
//! ```

use std::ops::Range;
use std::path::Path;

use genzoo_core::{Error, Result};
use plotters::prelude::*;

use crate::RunDir;
use crate::logger::read_jsonl;

/// One logged record of `metrics.jsonl`.
pub type Record = serde_json::Map<String, serde_json::Value>;

/// One line of a panel: its legend label and its (step, value) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend label, e.g. `train` or `runs/a val`.
    pub label: String,
    /// (step, value) in step order.
    pub points: Vec<(f64, f64)>,
    /// Held-out values (one per evaluation): drawn with markers.
    pub held_out: bool,
}

/// One chart of a figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Caption: the quantity (`loss`, `neg_elbo`, `d_loss`, ...).
    pub title: String,
    /// Its lines.
    pub series: Vec<Series>,
}

/// The held-out splits' prefixes: image models evaluate on `test`,
/// language models on `val`.
const HELD_OUT: [&str; 2] = ["test", "val"];

/// The (step, value) points of `key` in `records`, skipping records without
/// it and non-finite values (written as `null`).
pub fn metric_points(records: &[Record], key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(key)?.as_f64()?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

/// The quantities [`curve_panels`] draws for one run, in name order: its
/// losses (every `train_<name>` whose name ends in `loss` or is
/// `neg_elbo`), a VAE's `loss` left out where it equals its −ELBO at every
/// step (β = 1: the same curve twice). A run that logs no loss (a custom
/// family's `mse`) gets every training metric but gradient norms.
fn default_names(records: &[Record]) -> Vec<String> {
    let trained = logged_names(records, &["train"]);
    let mut names: Vec<String> = trained
        .iter()
        .filter(|n| n.ends_with("loss") || *n == "neg_elbo")
        .cloned()
        .collect();
    let same = |a: &str, b: &str| {
        let (a, b) = (format!("train_{a}"), format!("train_{b}"));
        records.iter().all(|r| r.get(&a) == r.get(&b))
    };
    if names.iter().any(|n| n == "neg_elbo") && same("loss", "neg_elbo") {
        names.retain(|n| n != "loss");
    }
    if names.is_empty() {
        names = trained
            .into_iter()
            .filter(|n| !n.ends_with("grad_norm"))
            .collect();
    }
    names
}

/// The names (without the split's prefix) of the metrics logged under any
/// of `splits` (`train`, `test`, `val`), in name order.
pub fn logged_names(records: &[Record], splits: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for key in records.iter().flat_map(|r| r.keys()) {
        if let Some((split, name)) = key.split_once('_')
            && splits.contains(&split)
            && !names.iter().any(|n| n == name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    names
}

/// One panel per loss of any of the `runs` (label, records), with a
/// training line and a held-out line (`test_` or `val_`, where evaluated)
/// for each run that logged it. A run's losses are its `train_<name>`
/// metrics whose name ends in `loss` or is `neg_elbo` (a VAE's `loss` left
/// out when it is its −ELBO); a run without any shows its training metrics
/// but gradient norms. Labels are `train`/`test` for one run with an empty
/// label, `<label> train`/`<label> test` otherwise.
pub fn curve_panels(runs: &[(String, Vec<Record>)]) -> Vec<Panel> {
    let shown: Vec<Vec<String>> = runs.iter().map(|(_, r)| default_names(r)).collect();
    let mut names: Vec<&String> = Vec::new();
    for name in shown.iter().flatten() {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
        .into_iter()
        .map(|name| panel(runs, name, |run| shown[run].contains(name)))
        .collect()
}

/// One panel per named quantity (`kl`, `bits_per_dim`, ...: a metric's name
/// without its split prefix), with the lines of every run that logged it.
pub fn metric_panels(runs: &[(String, Vec<Record>)], names: &[String]) -> Vec<Panel> {
    names
        .iter()
        .map(|name| panel(runs, name, |_| true))
        .collect()
}

/// The panel of `name`: the training and held-out lines of the runs that
/// `include` takes (by index) and that logged it.
fn panel(runs: &[(String, Vec<Record>)], name: &str, include: impl Fn(usize) -> bool) -> Panel {
    let mut series = Vec::new();
    for (run, (label, records)) in runs.iter().enumerate() {
        if !include(run) {
            continue;
        }
        for split in std::iter::once("train").chain(HELD_OUT) {
            let points = metric_points(records, &format!("{split}_{name}"));
            if !points.is_empty() {
                let label = if label.is_empty() {
                    split.to_string()
                } else {
                    format!("{label} {split}")
                };
                series.push(Series {
                    label,
                    points,
                    held_out: split != "train",
                });
            }
        }
    }
    Panel {
        title: name.to_string(),
        series,
    }
}

/// Writes the run's `curves.svg` from its `metrics.jsonl` (the trainer
/// does at every checkpoint); nothing while it has logged no loss.
pub fn write_run_curves(run: &RunDir) -> Result<()> {
    let metrics = run.metrics_file();
    if !metrics.exists() {
        return Ok(());
    }
    let panels = curve_panels(&[(String::new(), read_jsonl(&metrics)?)]);
    if panels.is_empty() {
        return Ok(());
    }
    write_svg(&panels, &run.curves_file())
}

/// Width and height of one panel, in SVG pixels.
const PANEL_SIZE: (u32, u32) = (520, 340);

/// Panels per row of a figure.
const COLUMNS: usize = 3;

/// Draws `panels` into an SVG file at `path` (written whole, then renamed
/// into place): a grid of up to three panels a row, each with its axes
/// (step; the quantity), ticks and a legend. Refuses an empty figure.
pub fn write_svg(panels: &[Panel], path: &Path) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::Config(format!(
            "{}: nothing to plot (no losses logged yet)",
            path.display()
        )));
    }
    let columns = panels.len().min(COLUMNS);
    let rows = panels.len().div_ceil(columns);
    let size = (PANEL_SIZE.0 * columns as u32, PANEL_SIZE.1 * rows as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        let failed = |e: &dyn std::fmt::Display| Error::Other(format!("{}: {e}", path.display()));
        root.fill(&WHITE).map_err(|e| failed(&e))?;
        for (area, panel) in root.split_evenly((rows, columns)).iter().zip(panels) {
            draw_panel(area, panel).map_err(|e| failed(&e))?;
        }
        root.present().map_err(|e| failed(&e))?;
    }
    let tmp = path.with_extension("svg.tmp");
    std::fs::write(&tmp, svg).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult<'a> =
    std::result::Result<(), DrawingAreaErrorKind<<SVGBackend<'a> as DrawingBackend>::ErrorType>>;

fn draw_panel<'a>(area: &Area<'a>, panel: &Panel) -> DrawResult<'a> {
    let points = || panel.series.iter().flat_map(|s| &s.points);
    let (steps, values) = (
        padded(points().map(|p| p.0), 0.02),
        padded(points().map(|p| p.1), 0.05),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(steps.clone(), values.clone())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_labels(6)
        .x_label_formatter(&|step| match step.fract() {
            0.0 => format!("{step:.0}"),
            _ => format!("{step:.1}"),
        })
        .y_labels(6)
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()?;
    for (i, series) in panel.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                series.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(series.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        // Held-out values come every evaluation: marked, so that a single
        // evaluation (or a single logged step) shows.
        if series.held_out || series.points.len() == 1 {
            chart.draw_series(
                series
                    .points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
            )?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend_corner(panel, &steps, &values))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

/// The corner where the legend covers the least of the lines: the upper
/// right, unless a line runs there (a GAN's rising loss), then the
/// emptiest. Counts points along each line that fall in the legend's box
/// and its distance from the axes, sized from its labels (~7 px a
/// character and 55 px of key and padding, ~20 px a line and 26 px of
/// padding, in a plot area of ~436 × 260 px).
fn legend_corner(panel: &Panel, steps: &Range<f64>, values: &Range<f64>) -> SeriesLabelPosition {
    let longest = panel.series.iter().map(|s| s.label.chars().count());
    let width = (longest.max().unwrap_or(0) * 7 + 55) as f64 / 436.0;
    let height = (panel.series.len() * 20 + 26) as f64 / 260.0;
    let fraction = |v: f64, r: &Range<f64>| (v - r.start) / (r.end - r.start);
    // Points along every segment, so that a line between sparse points counts.
    let along = panel.series.iter().flat_map(|s| {
        let ends = s.points.windows(2).map(|w| (w[0], w[1]));
        let single = (s.points.len() == 1).then(|| (s.points[0], s.points[0]));
        ends.chain(single).flat_map(|((x0, y0), (x1, y1))| {
            (0..=8).map(move |i| {
                let t = i as f64 / 8.0;
                (x0 + t * (x1 - x0), y0 + t * (y1 - y0))
            })
        })
    });
    let covered = |right: bool, upper: bool| {
        along
            .clone()
            .filter(|&(x, y)| {
                let (fx, fy) = (fraction(x, steps), fraction(y, values));
                (if right {
                    fx >= 1.0 - width
                } else {
                    fx <= width
                }) && (if upper {
                    fy >= 1.0 - height
                } else {
                    fy <= height
                })
            })
            .count()
    };
    // The first of the emptiest, in order of preference.
    [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::LowerLeft, false, false),
    ]
    .into_iter()
    .min_by_key(|&(_, right, upper)| covered(right, upper))
    .map(|(corner, ..)| corner)
    .unwrap_or(SeriesLabelPosition::UpperRight)
}

/// The range of `values` widened by `margin` of its span on each side (a
/// single value gets a unit-wide range around it).
fn padded(values: impl Iterator<Item = f64>, margin: f64) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        return lo - 0.5..hi + 0.5;
    }
    lo - margin * span..hi + margin * span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(lines: &[&str]) -> Vec<Record> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn panels_pair_training_and_held_out_losses() {
        let vae = records(&[
            r#"{"step":1,"train_loss":3.0,"train_neg_elbo":3.0,"train_kl":0.5}"#,
            r#"{"step":2,"train_loss":2.0,"train_neg_elbo":2.0,"train_kl":0.6}"#,
            r#"{"step":2,"test_neg_elbo":2.5}"#,
        ]);
        let panels = curve_panels(&[(String::new(), vae)]);
        // β = 1: `loss` is the −ELBO, drawn once; `kl` is not a loss.
        assert_eq!(panels.len(), 1);
        assert_eq!(panels[0].title, "neg_elbo");
        let labels: Vec<_> = panels[0].series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["train", "test"]);
        assert_eq!(panels[0].series[0].points, [(1.0, 3.0), (2.0, 2.0)]);
        assert_eq!(panels[0].series[1].points, [(2.0, 2.5)]);

        // A β-VAE's loss differs from its −ELBO: both are drawn.
        let beta = records(&[r#"{"step":1,"train_loss":4.0,"train_neg_elbo":3.0}"#]);
        let titles: Vec<_> = curve_panels(&[(String::new(), beta)])
            .into_iter()
            .map(|p| p.title)
            .collect();
        assert_eq!(titles, ["loss", "neg_elbo"]);
    }

    #[test]
    fn several_runs_share_panels_and_skip_what_they_lack() {
        let gan = records(&[
            r#"{"step":1,"train_d_loss":1.4,"train_g_loss":0.8}"#,
            r#"{"step":2,"train_d_loss":null,"train_g_loss":0.9}"#,
        ]);
        let gpt = records(&[
            r#"{"step":1,"train_loss":4.1}"#,
            r#"{"step":1,"val_loss":4.0}"#,
        ]);
        let panels = curve_panels(&[("gan".into(), gan.clone()), ("gpt".into(), gpt.clone())]);
        let titles: Vec<_> = panels.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["d_loss", "g_loss", "loss"]);
        // The NaN written as null is skipped.
        assert_eq!(panels[0].series[0].points, [(1.0, 1.4)]);
        let labels: Vec<_> = panels[2].series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["gpt train", "gpt val"]);
        // A VAE's loss (its −ELBO) stays out of the GPT's loss panel.
        let vae = records(&[r#"{"step":1,"train_loss":3.0,"train_neg_elbo":3.0}"#]);
        let mixed = curve_panels(&[("gpt".into(), gpt), ("vae".into(), vae)]);
        assert_eq!(mixed[0].title, "loss");
        assert_eq!(mixed[0].series.len(), 2, "{:?}", mixed[0].series);
        assert_eq!(mixed[1].title, "neg_elbo");
        // The same run twice (two seeds) gives two lines a panel.
        let twice = curve_panels(&[("seed 0".into(), gan.clone()), ("seed 1".into(), gan)]);
        assert_eq!(twice[1].series.len(), 2);
    }

    #[test]
    fn a_run_without_losses_shows_its_metrics_and_any_metric_can_be_asked_for() {
        let custom = records(&[
            r#"{"step":1,"train_mse":0.5,"train_grad_norm":2.0,"lr":0.1}"#,
            r#"{"step":1,"test_mse":0.6}"#,
        ]);
        let titles: Vec<_> = curve_panels(&[(String::new(), custom.clone())])
            .into_iter()
            .map(|p| p.title)
            .collect();
        assert_eq!(titles, ["mse"]);
        assert_eq!(
            logged_names(&custom, &["train", "test"]),
            ["grad_norm", "mse"]
        );
        let asked = metric_panels(&[("a".into(), custom)], &["grad_norm".into(), "kl".into()]);
        assert_eq!(asked[0].series[0].points, [(1.0, 2.0)]);
        assert!(asked[1].series.is_empty());
    }

    #[test]
    fn the_figure_has_a_panel_per_loss_with_axes_and_legends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("curves.svg");
        let run = records(&[
            r#"{"step":10,"train_loss":2.0}"#,
            r#"{"step":20,"train_loss":1.5}"#,
            r#"{"step":20,"val_loss":1.7}"#,
            r#"{"step":10,"train_g_loss":0.7}"#,
        ]);
        write_svg(&curve_panels(&[(String::new(), run)]), &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        // Two panels side by side.
        assert!(svg.contains(r#"width="1040" height="340""#));
        let texts: Vec<&str> = svg
            .split("</text>")
            .filter_map(|part| Some(part.rsplit_once('>')?.1.trim()))
            .collect();
        for text in ["loss", "g_loss", "step", "train", "val", "1.5", "2.0"] {
            assert!(texts.contains(&text), "{text} missing from {texts:?}");
        }
        // The three lines and their legend keys (2 px wide; axes are 1 px),
        // the one evaluation and the single step of g_loss marked.
        assert_eq!(svg.matches(r#"stroke-width="2""#).count(), 6);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(!path.with_extension("svg.tmp").exists());

        let err = write_svg(&[], &path).unwrap_err().to_string();
        assert!(err.contains("nothing to plot"), "{err}");
    }

    #[test]
    fn the_legend_goes_where_no_line_runs() {
        let panel = |points: &[(f64, f64)]| Panel {
            title: "loss".into(),
            series: vec![
                Series {
                    label: "train".into(),
                    points: points.to_vec(),
                    held_out: false,
                },
                // A held-out line of two evaluations only: its segment counts.
                Series {
                    label: "val".into(),
                    points: vec![points[0], points[points.len() - 1]],
                    held_out: true,
                },
            ],
        };
        let corner = |points: &[(f64, f64)]| {
            let p = panel(points);
            let (steps, values) = (
                padded(p.series.iter().flat_map(|s| &s.points).map(|q| q.0), 0.02),
                padded(p.series.iter().flat_map(|s| &s.points).map(|q| q.1), 0.05),
            );
            legend_corner(&p, &steps, &values)
        };
        let falling: Vec<_> = (0..50)
            .map(|i| (i as f64, 2.0 - (i as f64 / 10.0).sqrt() / 3.0))
            .collect();
        let rising: Vec<_> = (0..50).map(|i| (i as f64, 0.5 + i as f64 / 50.0)).collect();
        assert_eq!(corner(&falling), SeriesLabelPosition::UpperRight);
        assert_eq!(corner(&rising), SeriesLabelPosition::UpperLeft);
        // Falling, then rising again to the top: only the bottom is free.
        let valley: Vec<_> = (0..50)
            .map(|i| (i as f64, (i as f64 - 25.0).abs()))
            .collect();
        assert_eq!(corner(&valley), SeriesLabelPosition::LowerRight);
    }

    #[test]
    fn ranges_pad_their_span_and_widen_a_single_value() {
        assert_eq!(padded([1.0, 3.0].into_iter(), 0.05), 0.9..3.1);
        assert_eq!(padded([2.0].into_iter(), 0.05), 1.5..2.5);
        assert_eq!(padded(std::iter::empty(), 0.05), 0.0..1.0);
    }
}
