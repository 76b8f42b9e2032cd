//! The SVG chart of the throughput part: median req/s and p99 per path,
//! with min–max whiskers over rounds.

use std::path::Path;

use anyhow::{anyhow, bail};

use super::report::{label, Summary, Throughput};
use super::TARGETS;

/// SVG chart: median req/s and p99 per path, with min–max over rounds.
pub(crate) fn chart(t: &Throughput, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let present: Vec<(&str, &Summary)> = TARGETS
        .iter()
        .filter_map(|&name| t.summary.get(name).map(|s| (name, s)))
        .collect();
    if present.is_empty() {
        bail!("nothing to chart");
    }
    let n = present.len() as f64;
    let color = |name: &str| match name {
        "direct" => RGBColor(150, 150, 150),
        "rouse" => RGBColor(214, 96, 32),
        "rouse-log" => RGBColor(240, 160, 90),
        "rouse-trace" => RGBColor(250, 200, 140),
        "nginx" => RGBColor(0, 150, 57),
        "floor" => RGBColor(120, 120, 200),
        _ => RGBColor(30, 100, 180),
    };
    let setup = |k: &str| t.setup.get(k).map_or("?", String::as_str);
    let title = format!(
        "{}, {} connections, {} × {} rounds, {} threads per proxy — bars: median, whiskers: min–max",
        setup("tool_version"),
        setup("connections"),
        setup("duration"),
        setup("rounds"),
        setup("threads"),
    );
    let root = SVGBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(&title, ("sans-serif", 16))
        .map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, 2));
    type Metric<'a> = (&'a str, &'a dyn Fn(&Summary) -> (f64, f64, f64), usize);
    let metrics: [Metric; 2] = [
        (
            "requests per second",
            &|s: &Summary| (s.rps, s.rps_min, s.rps_max),
            0,
        ),
        (
            "p99 latency (ms)",
            &|s: &Summary| (s.p99_ms, s.p99_min_ms, s.p99_max_ms),
            2,
        ),
    ];
    let names: Vec<&str> = present.iter().map(|(name, _)| label(name)).collect();
    for (panel, (caption, value, digits)) in panels.iter().zip(metrics) {
        let top = present
            .iter()
            .map(|(_, s)| value(s).2)
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(present.len() + 1)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    names
                        .get(i as usize)
                        .map_or(String::new(), |s| (*s).to_owned())
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.*}", digits.saturating_sub(1)))
            .draw()
            .map_err(|e| err(&e))?;
        let plot = chart.plotting_area();
        for (i, (target, summary)) in present.iter().enumerate() {
            let x = i as f64;
            let (median, min, max) = value(summary);
            plot.draw(&Rectangle::new(
                [(x - 0.35, median), (x + 0.35, 0.0)],
                color(target).filled(),
            ))
            .map_err(|e| err(&e))?;
            for (from, to) in [
                ((x, min), (x, max)),
                ((x - 0.08, min), (x + 0.08, min)),
                ((x - 0.08, max), (x + 0.08, max)),
            ] {
                plot.draw(&PathElement::new(vec![from, to], BLACK.stroke_width(2)))
                    .map_err(|e| err(&e))?;
            }
            plot.draw(&Text::new(
                format!("{median:.digits$}"),
                (x, max.max(median) + top * 0.015),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
