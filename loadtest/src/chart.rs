//! The comparison as an SVG bar chart. plotters' SVG backend writes text as
//! <text> elements and, without its ttf/ab_glyph features, sizes them with a
//! built-in estimate, so no font files or fontconfig are needed.

use std::path::Path;

use plotters::prelude::*;

use crate::compare::Row;

pub fn bars(path: &Path, title: &str, rows: &[Row], base: Option<f64>) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let n = rows.len().max(1) as f64;
    let top = rows.iter().map(|r| r.msgs_per_sec).fold(1.0f64, f64::max) * 1.3;
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..n, 0f64..top)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("messages per second")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .draw()
        .map_err(|e| err(&e))?;
    let colours = [RGBColor(200, 60, 40), BLUE, GREEN, RGBColor(120, 120, 120)];
    for (i, r) in rows.iter().enumerate() {
        let x = i as f64;
        let colour = colours[i % colours.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, r.msgs_per_sec)],
                colour.filled(),
            )))
            .map_err(|e| err(&e))?;
        let ratio = base.map_or(String::new(), |b| format!(" ({:.2}×)", r.msgs_per_sec / b));
        let labels = [
            (format!("{:.0}{ratio}", r.msgs_per_sec), 0.10),
            (
                format!("p50 {:.0} µs, p99 {:.0} µs", r.p50_us, r.p99_us),
                0.05,
            ),
        ];
        for (text, lift) in labels {
            chart
                .draw_series(std::iter::once(Text::new(
                    text,
                    (x + 0.17, r.msgs_per_sec + top * lift),
                    ("sans-serif", 14),
                )))
                .map_err(|e| err(&e))?;
        }
        chart
            .draw_series(std::iter::once(Text::new(
                r.server.clone(),
                (x + 0.17, top * 0.02),
                ("sans-serif", 15).into_font().color(&WHITE),
            )))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
