//! `ditto bench ... --svg DIR`: the benchmarks' results as SVG charts (plotters, SVG backend
//! only), for docs/evaluation.md.
//!
//! - [`overhead_chart`]: `ditto bench pair`: a pair's extra time over a single VM per
//!   workload, det and follow, beside the thesis's figures for the same workloads.
//! - [`throughput_chart`]: `ditto bench servers`: requests per second (log scale) against worker
//!   threads (civetweb at 4, 8 and 16), one line per configuration.

use std::path::Path;

use plotters::prelude::*;

/// One workload's bars: ditto's overheads and the thesis's (percent; None where unknown).
#[derive(Clone, Debug, PartialEq)]
pub struct OverheadBars {
    /// The workload.
    pub workload: String,
    /// ditto: pair det against a single VM.
    pub det: Option<f64>,
    /// ditto: pair follow against a single VM.
    pub follow: Option<f64>,
    /// The thesis's det-mode figure against native.
    pub thesis_det: Option<f64>,
    /// The thesis's follow-mode figure against native.
    pub thesis_follow: Option<f64>,
}

/// A thesis figure such as `26.9%` or a range `1-2%` (its middle); None for `—` or text.
pub fn thesis_percent(s: &str) -> Option<f64> {
    let s = s.trim().trim_end_matches('%');
    let nums: Vec<f64> = s.split('-').filter_map(|p| p.trim().parse().ok()).collect();
    match nums.as_slice() {
        [v] => Some(*v),
        [a, b] => Some((a + b) / 2.0),
        _ => None,
    }
}

const SERIES: [(&str, RGBColor); 4] = [
    ("ditto pair det vs run", RGBColor(31, 111, 209)),
    ("ditto pair follow vs run", RGBColor(224, 123, 0)),
    ("thesis det vs native", RGBColor(140, 180, 230)),
    ("thesis follow vs native", RGBColor(240, 190, 120)),
];

fn err(e: impl std::fmt::Display) -> String {
    format!("chart: {e}")
}

/// Grouped bars, one group per workload, to `path`.
pub fn overhead_chart(path: &Path, title: &str, rows: &[OverheadBars]) -> Result<(), String> {
    let values = |r: &OverheadBars| [r.det, r.follow, r.thesis_det, r.thesis_follow];
    let top = rows
        .iter()
        .flat_map(values)
        .flatten()
        .fold(10.0f64, f64::max)
        * 1.15;
    let lowest = rows
        .iter()
        .flat_map(values)
        .flatten()
        .fold(0.0f64, f64::min);
    // Room under the bars for the workloads' names, inside the plot (axis labels of a
    // continuous axis fall where its key points do, not under each group).
    let bottom = lowest - (top - lowest) * 0.08;
    let width = (160 + 110 * rows.len().max(1)) as u32;
    let root = SVGBackend::new(path, (width.max(640), 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n, bottom..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("extra time, %")
        .draw()
        .map_err(err)?;
    let name_y = lowest - (top - lowest) * 0.05;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            Text::new(
                r.workload.clone(),
                (i as f64 + 0.1, name_y),
                ("sans-serif", 12).into_font(),
            )
        }))
        .map_err(err)?;
    for (s, (label, color)) in SERIES.iter().enumerate() {
        let bars: Vec<(f64, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| values(r)[s].map(|v| (i as f64, v)))
            .collect();
        let color = *color;
        chart
            .draw_series(bars.into_iter().map(move |(i, v)| {
                let x0 = i + 0.1 + 0.2 * s as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.18, v)], color.filled())
            }))
            .map_err(err)?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Lines of requests per second (log scale) against threads, to `path`.
pub fn throughput_chart(
    path: &Path,
    title: &str,
    series: &[(String, Vec<(u32, f64)>)],
) -> Result<(), String> {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let max_x = points.clone().map(|p| p.0).max().unwrap_or(1).max(1);
    let max_y = points.clone().map(|p| p.1).fold(1.0f64, f64::max) * 2.0;
    // A log scale: ditto and native differ by one to two orders of magnitude here.
    let min_y = points.map(|p| p.1).fold(f64::INFINITY, f64::min).max(1.0) / 2.0;
    let root = SVGBackend::new(path, (720, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0u32..max_x + 2, (min_y..max_y).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("worker threads")
        .y_desc("requests/s (log scale)")
        .draw()
        .map_err(err)?;
    let palette = [
        RGBColor(60, 60, 60),
        RGBColor(31, 111, 209),
        RGBColor(224, 123, 0),
        RGBColor(23, 140, 60),
    ];
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::MiddleRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thesis_figures_parse() {
        assert_eq!(thesis_percent("26.9%"), Some(26.9));
        assert_eq!(thesis_percent("1-2%"), Some(1.5));
        assert_eq!(thesis_percent("—"), None);
    }

    #[test]
    fn overhead_chart_draws_a_bar_per_known_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.svg");
        let rows = [
            OverheadBars {
                workload: "redis -c 16".into(),
                det: Some(64.0),
                follow: Some(126.0),
                thesis_det: Some(41.1),
                thesis_follow: Some(26.9),
            },
            OverheadBars {
                workload: "pbzip2".into(),
                det: Some(3.0),
                follow: None,
                thesis_det: None,
                thesis_follow: None,
            },
        ];
        overhead_chart(&path, "pair vs single VM", &rows).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"));
        for label in [
            "redis -c 16",
            "pbzip2",
            "pair vs single VM",
            "thesis det vs native",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        // 5 bars + 4 legend swatches + the background and the plot area.
        let filled_blue = svg.matches("fill=\"#1F6FD1\"").count();
        assert_eq!(filled_blue, 3, "two det bars and one legend swatch");
    }

    #[test]
    fn throughput_chart_draws_each_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        let series = vec![
            (
                "native".to_string(),
                vec![(4, 9000.0), (8, 9500.0), (16, 9400.0)],
            ),
            (
                "ditto run".to_string(),
                vec![(4, 600.0), (8, 620.0), (16, 610.0)],
            ),
        ];
        throughput_chart(&path, "civetweb", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(
            svg.contains("native") && svg.contains("ditto run") && svg.contains("worker threads")
        );
        assert_eq!(svg.matches("<circle").count(), 6);
    }
}
