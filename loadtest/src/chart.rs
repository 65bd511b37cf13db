//! The comparison as an SVG bar chart. plotters' SVG backend writes text as
//! <text> elements and, without its ttf/ab_glyph features, sizes them with a
//! built-in estimate, so no font files or fontconfig are needed.

use std::path::Path;

use plotters::prelude::*;

/// One server's bar. The chart owns the shapes it draws from, so it depends
/// on no module that draws with it.
pub struct Bar<'a> {
    pub label: &'a str,
    pub msgs_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Bars of `unit` (messages or handshakes per second, the value in
/// `msgs_per_sec`), each labelled with its ratio to `base` when there is
/// one.
pub fn bars(
    path: &Path,
    title: &str,
    unit: &str,
    rows: &[Bar<'_>],
    base: Option<f64>,
) -> Result<(), String> {
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
        .y_desc(unit)
        // Handshake rates can be a few hundred a second; thousands read
        // best as "k" only from there up.
        .y_label_formatter(&|v| {
            if top >= 10_000.0 {
                format!("{:.0}k", v / 1000.0)
            } else {
                format!("{v:.0}")
            }
        })
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
                r.label.to_string(),
                (x + 0.17, top * 0.02),
                ("sans-serif", 15).into_font().color(&WHITE),
            )))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// One panel of a time chart: `(seconds, value)` points in `unit`.
pub struct Panel {
    pub title: &'static str,
    pub unit: &'static str,
    pub points: Vec<(f64, f64)>,
}

/// Panels stacked one above the other on a shared time axis, the span
/// `shade` (seconds) shaded in each and explained by `shade_note`.
pub fn timeline(
    path: &Path,
    panels: &[Panel],
    shade: (f64, f64),
    shade_note: &str,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("chart {}: {e}", path.display());
    let height = 310 * panels.len().max(1) as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let areas = root.split_evenly((panels.len().max(1), 1));
    let t_end = panels
        .iter()
        .flat_map(|p| p.points.iter().map(|(t, _)| *t))
        .fold(1.0f64, f64::max);
    let fill = RGBColor(255, 228, 200);
    for (area, panel) in areas.iter().zip(panels) {
        let top = panel.points.iter().map(|(_, v)| *v).fold(1.0f64, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{} ({shade_note})", panel.title),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..t_end, 0f64..top)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the server started")
            .y_desc(panel.unit)
            .draw()
            .map_err(|e| err(&e))?;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(shade.0, 0.0), (shade.1, top)],
                fill.filled(),
            )))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(LineSeries::new(
                panel.points.iter().copied(),
                RGBColor(200, 60, 40).stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
