//! Line and scatter charts of evaluation results (plotters), as SVG or PNG by the file
//! extension: elasticity curves (perplexity against width), quality against bits per weight
//! with the Pareto frontier, layer sensitivity.
//!
//! Text needs a TrueType font; plotters' pure-Rust renderer is given the first that exists of
//! `$COMPRESS_FONT` and the usual DejaVu Sans locations (Debian's `fonts-dejavu-core`). Without
//! one, plotting fails with an error naming the paths tried.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

/// One named series of `(x, y)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// Points, drawn in order and joined by lines unless the chart is a scatter.
    pub points: Vec<(f64, f64)>,
}

/// A chart's titles and axes.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic y axis (perplexities spanning orders of magnitude).
    pub log_y: bool,
    /// Join each series' points with lines (else points only).
    pub lines: bool,
}

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// No usable font.
    #[error(
        "no TrueType font found (tried {tried}); set COMPRESS_FONT or install fonts-dejavu-core"
    )]
    NoFont {
        /// The paths tried.
        tried: String,
    },
    /// The output extension is neither `.svg` nor `.png`.
    #[error("{}: plots are written as .svg or .png", .0.display())]
    Format(PathBuf),
    /// No finite points to draw.
    #[error("nothing to plot: no finite points")]
    Empty,
    /// The drawing backend failed.
    #[error("drawing {}: {message}", path.display())]
    Draw {
        /// The output file.
        path: PathBuf,
        /// The backend's message.
        message: String,
    },
}

const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
];

fn register_font() -> Result<(), PlotError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let mut tried: Vec<String> = Vec::new();
        let env = std::env::var("COMPRESS_FONT").ok();
        for p in env.iter().map(String::as_str).chain(FONT_PATHS) {
            tried.push(p.to_string());
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps registered fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font_bytes(bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(tried.join(", "))
    })
    .clone()
    .map_err(|tried| PlotError::NoFont { tried })
}

fn register_font_bytes(bytes: &'static [u8]) -> Result<(), ()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| ())
}

/// The points of `points` on the Pareto frontier when lower `x` and lower `y` are both better
/// (e.g. bits per weight and perplexity): no other point is at least as good in both and
/// better in one. Returned sorted by `x`.
pub fn pareto_frontier(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut p: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    p.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut out: Vec<(f64, f64)> = Vec::new();
    for q in p {
        if out.last().is_none_or(|last| q.1 < last.1) {
            out.push(q);
        }
    }
    out
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart,
    series: &[Series],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let finite = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!chart.log_y || y > 0.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(finite)
        .collect();
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = |a: f64, b: f64| {
        let d = if b > a {
            (b - a) * 0.05
        } else {
            a.abs().max(1.0) * 0.05
        };
        (a - d, b + d)
    };
    let (x0, x1) = pad(x0, x1);
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    macro_rules! body {
        ($c:expr) => {{
            let mut c = $c;
            c.configure_mesh()
                .x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, s) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(finite).collect();
                if chart.lines {
                    c.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                        .map_err(|e| e.to_string())?;
                }
                c.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
                    .map_err(|e| e.to_string())?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| Circle::new((x + 8, y), 4, color.filled()));
            }
            c.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    if chart.log_y {
        let (y0, y1) = (y0 / 1.1, y1 * 1.1);
        body!(builder
            .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
            .map_err(|e| e.to_string())?);
    } else {
        let (y0, y1) = pad(y0, y1);
        body!(builder
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?);
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws `series` into `path` (`.svg` or `.png`, 800 × 500).
pub fn plot(path: &Path, chart: &Chart, series: &[Series]) -> Result<(), PlotError> {
    let any = series
        .iter()
        .flat_map(|s| &s.points)
        .any(|(x, y)| x.is_finite() && y.is_finite());
    if !any {
        return Err(PlotError::Empty);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    register_font()?;
    let size = (800, 500);
    let result = match ext.as_deref() {
        Some("svg") => draw(
            SVGBackend::new(path, size).into_drawing_area(),
            chart,
            series,
        ),
        Some("png") => draw(
            BitMapBackend::new(path, size).into_drawing_area(),
            chart,
            series,
        ),
        _ => return Err(PlotError::Format(path.to_path_buf())),
    };
    result.map_err(|message| PlotError::Draw {
        path: path.to_path_buf(),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_keeps_only_undominated_points() {
        let p = [
            (4.0, 10.0),
            (3.0, 12.0),
            (4.5, 9.0),
            (3.5, 13.0),
            (8.0, 9.0),
            (2.0, f64::NAN),
        ];
        assert_eq!(
            pareto_frontier(&p),
            vec![(3.0, 12.0), (4.0, 10.0), (4.5, 9.0)]
        );
        assert!(pareto_frontier(&[]).is_empty());
    }

    #[test]
    fn charts_are_written_as_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart {
            title: "elasticity".into(),
            x_label: "width".into(),
            y_label: "perplexity".into(),
            log_y: true,
            lines: true,
        };
        let s = vec![Series {
            name: "nested".into(),
            points: vec![(0.25, 40.0), (0.5, 12.0), (1.0, 4.0)],
        }];
        if register_font().is_err() && std::env::var("CI").is_err() {
            eprintln!("skipped: no TrueType font on this machine");
            return;
        }
        for ext in ["svg", "png"] {
            let p = dir.path().join(format!("c.{ext}"));
            plot(&p, &chart, &s).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            assert!(bytes.len() > 1000, "{ext}: {} bytes", bytes.len());
            if ext == "svg" {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.contains("elasticity") && text.contains("nested"));
            } else {
                assert_eq!(&bytes[1..4], b"PNG");
            }
        }
        assert!(matches!(
            plot(&dir.path().join("c.txt"), &chart, &s),
            Err(PlotError::Format(_))
        ));
        let empty = vec![Series {
            name: "x".into(),
            points: vec![(f64::NAN, 1.0)],
        }];
        assert!(matches!(
            plot(&dir.path().join("e.svg"), &chart, &empty),
            Err(PlotError::Empty)
        ));
    }
}
