//! PNG charts of results with `plotters` (text through an embedded TrueType font read at run
//! time, so nothing needs fontconfig or freetype): latency CDFs of one or more runs
//! (`latency_cdf.png`), and for sweeps throughput (`sweep_throughput.png`) and TTFT / ITL
//! percentiles (`sweep_latency.png`) against the request rate. Reads results; measures nothing.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::bench::BenchError;
use crate::bench::report::BenchResult;

/// The font `--plot-font` defaults to (Debian's `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";
/// Most points drawn per CDF line (quantiles of the samples).
const CDF_POINTS: usize = 1000;

static FONT: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers the TrueType font at `path` for chart text (once per process; the first path wins).
pub fn load_font(path: &Path) -> Result<(), BenchError> {
    let loaded = FONT.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "cannot read the chart font {}: {e} (install Debian's fonts-dejavu-core or pass \
                 --plot-font FILE.ttf)",
                path.display()
            )
        })?;
        // plotters keeps fonts for the whole process; one font file is leaked once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType/OpenType font", path.display()))
    });
    loaded.clone().map_err(|reason| BenchError::Plot {
        name: "font".into(),
        reason,
    })
}

/// Latency samples of one run, in milliseconds, sorted.
struct LatencySamples {
    ttft: Vec<f64>,
    tpot: Vec<f64>,
    itl: Vec<f64>,
    e2el: Vec<f64>,
}

impl LatencySamples {
    fn of(run: &BenchResult) -> Self {
        let ok = || run.requests.iter().filter(|r| r.success);
        let sorted_ms = |mut v: Vec<f64>| {
            v.iter_mut().for_each(|x| *x *= 1000.0);
            v.sort_by(f64::total_cmp);
            v
        };
        Self {
            ttft: sorted_ms(ok().map(|r| r.ttft_s).collect()),
            tpot: sorted_ms(
                ok().filter(|r| r.output_len > 1)
                    .map(|r| (r.latency_s - r.ttft_s) / (r.output_len - 1) as f64)
                    .collect(),
            ),
            itl: sorted_ms(ok().flat_map(|r| r.itl_s.iter().copied()).collect()),
            e2el: sorted_ms(ok().map(|r| r.latency_s).collect()),
        }
    }
}

fn plot_err<E: std::fmt::Display>(name: &str) -> impl Fn(E) -> BenchError + '_ {
    move |e| BenchError::Plot {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}

/// Draws `latency_cdf.png` in `dir`: CDFs of TTFT, TPOT, ITL and E2E latency, one line per run.
pub fn latency_cdfs(runs: &[&BenchResult], dir: &Path) -> Result<PathBuf, BenchError> {
    let path = dir.join("latency_cdf.png");
    let name = "latency_cdf.png";
    let samples: Vec<(String, LatencySamples)> = runs
        .iter()
        .map(|r| (run_name(r), LatencySamples::of(r)))
        .collect();
    type Pick = fn(&LatencySamples) -> &Vec<f64>;
    let metrics: [(&str, Pick); 4] = [
        ("Time to first token", |s| &s.ttft),
        ("Time per output token", |s| &s.tpot),
        ("Inter-token latency", |s| &s.itl),
        ("End-to-end latency", |s| &s.e2el),
    ];
    {
        let root = BitMapBackend::new(&path, (1400, 1000)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err(name))?;
        let panels = root.split_evenly((2, 2));
        for (panel, (title, pick)) in panels.iter().zip(metrics) {
            let lines: Vec<(&str, &Vec<f64>)> =
                samples.iter().map(|(n, s)| (n.as_str(), pick(s))).collect();
            cdf_panel(panel, title, &lines).map_err(plot_err(name))?;
        }
        root.present().map_err(plot_err(name))?;
    }
    Ok(path)
}

fn cdf_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    lines: &[(&str, &Vec<f64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let x_max = lines
        .iter()
        .filter_map(|(_, v)| v.last().copied())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 24))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..x_max, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms")
        .y_desc("share of samples ≤ x")
        .x_label_formatter(&|x: &f64| tick(*x))
        .y_label_formatter(&|y: &f64| format!("{:.0}%", *y * 100.0))
        .label_style((FAMILY, 15))
        .draw()?;
    for (i, (label, values)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(cdf_points(values), color.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    Ok(())
}

/// An axis label: whole numbers from 10 up, else two significant decimals.
fn tick(v: f64) -> String {
    if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The empirical CDF of `sorted` as a staircase over at most [`CDF_POINTS`] evenly spaced
/// ranks: (value, share of samples < value) then (value, share ≤ value).
fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len();
    let step = n.div_ceil(CDF_POINTS).max(1);
    let mut ranks: Vec<usize> = (step - 1..n).step_by(step).collect();
    if n > 0 && ranks.last() != Some(&(n - 1)) {
        ranks.push(n - 1);
    }
    let mut below = 0.0;
    let mut points = Vec::with_capacity(2 * ranks.len());
    for i in ranks {
        let share = (i + 1) as f64 / n as f64;
        points.push((sorted[i], below));
        points.push((sorted[i], share));
        below = share;
    }
    points
}

/// One labelled sweep: its runs in order of request rate.
pub type Sweep<'a> = (&'a str, &'a [BenchResult]);

/// Draws `sweep_throughput.png` and `sweep_latency.png` in `dir`.
pub fn sweeps(sweeps: &[Sweep<'_>], dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    let rate_max = sweeps
        .iter()
        .flat_map(|(_, runs)| runs.iter().map(rate_of))
        .filter(|r| r.is_finite())
        .fold(0.0f64, f64::max);
    if rate_max <= 0.0 {
        return Err(BenchError::Plot {
            name: "sweep".into(),
            reason: "no run of the sweeps has a finite request rate".into(),
        });
    }
    let throughput_path = dir.join("sweep_throughput.png");
    let latency_path = dir.join("sweep_latency.png");
    throughput_chart(sweeps, &throughput_path, rate_max)?;
    latency_chart(sweeps, &latency_path, rate_max)?;
    Ok(vec![throughput_path, latency_path])
}

fn rate_of(r: &BenchResult) -> f64 {
    r.request_rate.unwrap_or(f64::NAN)
}

fn throughput_chart(sweeps: &[Sweep<'_>], path: &Path, rate_max: f64) -> Result<(), BenchError> {
    let rate = rate_of;
    let name = "sweep_throughput.png";
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(name))?;
    let series: Vec<(String, Vec<(f64, f64)>)> = sweeps
        .iter()
        .map(|(label, runs)| {
            let points = runs
                .iter()
                .map(|r| (rate(r), r.summary.output_throughput))
                .collect();
            (format!("{label} output tok/s"), points)
        })
        .collect();
    rate_panel(
        &root,
        "Output throughput vs request rate",
        "tok/s",
        rate_max,
        &series,
    )
    .map_err(plot_err(name))?;
    root.present().map_err(plot_err(name))
}

fn latency_chart(sweeps: &[Sweep<'_>], path: &Path, rate_max: f64) -> Result<(), BenchError> {
    let rate = rate_of;
    let name = "sweep_latency.png";
    let root = BitMapBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err(name))?;
    let panels = root.split_evenly((1, 2));
    type Pick = fn(&BenchResult) -> (f64, f64);
    let metrics: [(&str, Pick); 2] = [
        ("TTFT vs request rate", |r| {
            (r.summary.ttft_ms.median, r.summary.ttft_ms.p99)
        }),
        ("ITL vs request rate", |r| {
            (r.summary.itl_ms.median, r.summary.itl_ms.p99)
        }),
    ];
    for (panel, (title, pick)) in panels.iter().zip(metrics) {
        let mut series = Vec::new();
        for (label, runs) in sweeps {
            let points = |p99: bool| -> Vec<(f64, f64)> {
                runs.iter()
                    .map(|r| {
                        let (median, tail) = pick(r);
                        (rate(r), if p99 { tail } else { median })
                    })
                    .collect()
            };
            series.push((format!("{label} P99"), points(true)));
            series.push((format!("{label} median"), points(false)));
        }
        rate_panel(panel, title, "ms", rate_max, &series).map_err(plot_err(name))?;
    }
    root.present().map_err(plot_err(name))
}

fn rate_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    y_desc: &str,
    rate_max: f64,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 24))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..rate_max * 1.05, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("request rate (req/s)")
        .y_desc(y_desc)
        .x_label_formatter(&|x: &f64| tick(*x))
        .y_label_formatter(&|y: &f64| tick(*y))
        .label_style((FAMILY, 15))
        .draw()?;
    for (i, (label, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}

/// The name a run is shown under: its label, else its backend and rate.
fn run_name(r: &BenchResult) -> String {
    if !r.label.is_empty() {
        return r.label.clone();
    }
    match r.request_rate {
        Some(rate) => format!("{} @ {rate} req/s", r.model_id),
        None => format!("{} @ max", r.model_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_points_are_capped_and_end_at_one() {
        let v: Vec<f64> = (0..10_001).map(f64::from).collect();
        let p = cdf_points(&v);
        assert!(p.len() <= 2 * (CDF_POINTS + 1));
        assert_eq!(p.last(), Some(&(10_000.0, 1.0)));
        assert!(p.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(cdf_points(&[5.0]), vec![(5.0, 0.0), (5.0, 1.0)]);
        assert_eq!(
            cdf_points(&[1.0, 2.0]),
            vec![(1.0, 0.0), (1.0, 0.5), (2.0, 0.5), (2.0, 1.0)]
        );
        assert!(cdf_points(&[]).is_empty());
    }
}
