//! A small SVG line chart writer (no plotting dependency): one panel per
//! quantity, a logarithmic x axis (number of nodes), one polyline per
//! series with its points marked and labelled.

use std::fmt::Write as _;

/// A named series of (x, y) points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
    /// Stroke colour (any SVG colour).
    pub colour: &'static str,
    /// Dashed line (for reference data).
    pub dashed: bool,
}

/// A panel: a title, a y-axis label and its series.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Label of the y axis.
    pub y_label: String,
    /// The curves.
    pub series: Vec<Series>,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// Renders panels stacked vertically; x is logarithmic and labelled
/// `x_label`.
pub fn chart(panels: &[Panel], x_label: &str) -> String {
    let total = HEIGHT * panels.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{WIDTH}" height="{total}" fill="white"/>"#
    );
    for (i, panel) in panels.iter().enumerate() {
        panel_svg(&mut out, panel, x_label, HEIGHT * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

fn panel_svg(out: &mut String, panel: &Panel, x_label: &str, y0: f64) {
    let points = panel.series.iter().flat_map(|s| s.points.iter());
    let (mut xmin, mut xmax, mut ymax) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        xmin = xmin.min(x);
        xmax = xmax.max(x);
        ymax = ymax.max(y);
    }
    if xmin > xmax {
        return;
    }
    let (lx0, mut lx1) = (xmin.max(1.0).log10().floor(), xmax.max(1.0).log10().ceil());
    if lx1 <= lx0 {
        lx1 = lx0 + 1.0;
    }
    let ymax = nice(ymax);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + (x.max(1.0).log10() - lx0) / (lx1 - lx0) * plot_w;
    let py = |y: f64| y0 + TOP + plot_h - y / ymax * plot_h;
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        y0 + 22.0,
        escape(&panel.title)
    );
    // Axes, grid and ticks.
    let (bottom, top) = (py(0.0), py(ymax));
    let _ = writeln!(
        out,
        r#"<path d="M{LEFT} {top} V{bottom} H{}" stroke="black" fill="none"/>"#,
        WIDTH - RIGHT
    );
    let mut e = lx0;
    while e <= lx1 {
        let x = LEFT + (e - lx0) / (lx1 - lx0) * plot_w;
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{top}" x2="{x}" y2="{bottom}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 16.0,
            10f64.powf(e).round()
        );
        e += 1.0;
    }
    for k in 0..=4 {
        let v = ymax * f64::from(k) / 4.0;
        let y = py(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        bottom + 34.0,
        escape(x_label)
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        y0 + TOP + plot_h / 2.0,
        escape(&panel.y_label)
    );
    // Curves and legend.
    for (i, s) in panel.series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
            path.join(" "),
            s.colour
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="10">{}</text>"#,
                px(x),
                py(y),
                s.colour,
                px(x) + 5.0,
                py(y) - 5.0,
                short(y)
            );
        }
        let ly = y0 + TOP + 4.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            LEFT + 10.0,
            LEFT + 34.0,
            s.colour,
            LEFT + 40.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
}

/// The next round value above `v` (1, 2 or 5 times a power of ten).
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

fn short(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_rounds_up_to_1_2_5() {
        for (v, want) in [
            (0.0, 1.0),
            (0.7, 1.0),
            (1.5, 2.0),
            (3.2, 5.0),
            (7.0, 10.0),
            (120.0, 200.0),
        ] {
            assert_eq!(nice(v), want, "{v}");
        }
    }

    #[test]
    fn chart_has_one_polyline_per_series_and_escapes_text() {
        let panel = Panel {
            title: "a < b".into(),
            y_label: "hops".into(),
            series: vec![
                Series {
                    name: "x".into(),
                    points: vec![(100.0, 1.0), (1000.0, 2.0)],
                    colour: "red",
                    dashed: false,
                },
                Series {
                    name: "y".into(),
                    points: vec![(100.0, 1.5)],
                    colour: "blue",
                    dashed: true,
                },
            ],
        };
        let svg = chart(&[panel], "nodes");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt; b"));
        assert!(svg.contains("stroke-dasharray"));
    }
}
