//! `corelog-bench plot A.json [B.json ...]`: a latency-percentile chart (log-scale
//! percentile axis, as HdrHistogram plots draw it) and a throughput-over-time chart, each
//! as SVG and PNG, every run one line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;

use crate::run::RunResult;

#[derive(ClapArgs)]
pub struct Args {
    /// Result files written by `run --json` or `compare --json`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Output prefix: writes PREFIX-latency.{svg,png} and PREFIX-throughput.{svg,png}.
    #[arg(long, default_value = "corelog-bench")]
    pub out: PathBuf,
}

const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];
const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// Loads runs from result files: a single run, or `{"runs": [...]}` from `compare`.
pub fn load_runs(files: &[PathBuf]) -> Result<Vec<RunResult>, String> {
    let mut runs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        let list = match v.get("runs") {
            Some(serde_json::Value::Array(a)) => {
                a.iter().filter_map(|r| r.get("result").cloned()).collect()
            }
            _ => vec![v],
        };
        for r in list {
            runs.push(serde_json::from_value(r).map_err(|e| format!("{}: {e}", f.display()))?);
        }
    }
    Ok(runs)
}

pub fn run(args: Args) -> Result<(), String> {
    let runs = load_runs(&args.files)?;
    if runs.is_empty() {
        return Err("no runs in the given files".into());
    }
    let latency = latency_svg(&runs);
    let throughput = throughput_svg(&runs);
    for (name, svg) in [("latency", latency), ("throughput", throughput)] {
        let base = format!("{}-{name}", args.out.display());
        let svg_path = PathBuf::from(format!("{base}.svg"));
        std::fs::write(&svg_path, &svg).map_err(|e| format!("{}: {e}", svg_path.display()))?;
        let png_path = PathBuf::from(format!("{base}.png"));
        render_png(&svg, &png_path)?;
        println!("wrote {} and {}", svg_path.display(), png_path.display());
    }
    Ok(())
}

/// One colour per system and workload; later rounds of `compare` dashed in the same colour.
fn stroke(runs: &[RunResult], i: usize) -> String {
    let key = |r: &RunResult| (r.system.clone(), r.workload.name.clone());
    let mut seen = Vec::new();
    for r in &runs[..=i] {
        if !seen.contains(&key(r)) {
            seen.push(key(r));
        }
    }
    let colour = seen
        .iter()
        .position(|k| *k == key(&runs[i]))
        .map_or(COLORS[0], |n| COLORS[n % COLORS.len()]);
    let dash = match runs[i].round {
        0 | 1 => "",
        2 => r#" stroke-dasharray="8,4""#,
        _ => r#" stroke-dasharray="2,3""#,
    };
    format!(r#"stroke="{colour}"{dash}"#)
}

fn label(r: &RunResult) -> String {
    if r.round > 0 {
        format!("{} · {} · round {}", r.system, r.workload.name, r.round)
    } else {
        format!("{} · {}", r.system, r.workload.name)
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Frame, title, legend; returns the SVG so far.
fn chart(title: &str, x_label: &str, y_label: &str, runs: &[RunResult]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>
<text x="{}" y="{}" text-anchor="middle">{}</text>
<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>
<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#333"/>
"##,
        (LEFT + W - RIGHT) / 2.0,
        escape(title),
        (LEFT + W - RIGHT) / 2.0,
        H - 15.0,
        escape(x_label),
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label),
        W - LEFT - RIGHT,
        H - TOP - BOTTOM,
    );
    for (i, r) in runs.iter().enumerate() {
        let y = TOP + 10.0 + 20.0 * i as f64;
        let c = stroke(runs, i);
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" {c} stroke-width="2.5"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 36.0,
            W - RIGHT + 42.0,
            y + 4.0,
            escape(&label(r))
        );
    }
    s
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn y_ticks(s: &mut String, max: f64) {
    let ph = H - TOP - BOTTOM;
    for i in 0..=5 {
        let v = max * i as f64 / 5.0;
        let y = H - BOTTOM - ph * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.0}", v)
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v}")
    }
}

/// The x position of a percentile on the log scale: 90% -> 1, 99% -> 2, 99.9% -> 3 ...
fn percentile_x(p: f64) -> f64 {
    let tail = (1.0 - p / 100.0).max(1e-5);
    -tail.log10()
}

pub fn latency_svg(runs: &[RunResult]) -> String {
    let mut s = chart(
        "Publish latency by percentile",
        "percentile",
        "latency (ms)",
        runs,
    );
    let values = || {
        runs.iter()
            .flat_map(|r| r.publish_spectrum.iter().map(|(_, ms)| *ms))
    };
    let max = values().fold(0.0, f64::max);
    let min = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    // Systems that differ a hundredfold (a peer compared with corelog) on a linear axis
    // would flatten the fast one onto zero: then the latency axis is logarithmic.
    let y_of: Box<dyn Fn(f64) -> f64> = if max / min > 100.0 {
        let lo = min.log10().floor();
        let hi = max.log10().ceil();
        for d in lo as i32..=hi as i32 {
            let y = H - BOTTOM - ph * (d as f64 - lo) / (hi - lo);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(10f64.powi(d))
            );
        }
        Box::new(move |ms: f64| {
            let t = (ms.max(10f64.powf(lo)).log10() - lo) / (hi - lo);
            H - BOTTOM - ph * t.min(1.0)
        })
    } else {
        let max = nice_max(max * 1.05);
        y_ticks(&mut s, max);
        Box::new(move |ms: f64| H - BOTTOM - ph * (ms / max).min(1.0))
    };
    for (i, name) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = LEFT + pw * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{TOP}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{name}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let pts: Vec<String> = r
            .publish_spectrum
            .iter()
            .map(|&(p, ms)| {
                let x = LEFT + pw * percentile_x(p) / 5.0;
                let y = y_of(ms);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" {} stroke-width="2.5" points="{}"/>"#,
            stroke(runs, i),
            pts.join(" ")
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn throughput_svg(runs: &[RunResult]) -> String {
    let mut s = chart(
        "Acknowledged messages per second",
        "time (s)",
        "messages/s",
        runs,
    );
    let max = runs
        .iter()
        .flat_map(|r| r.throughput_series.iter().map(|(_, v)| *v))
        .fold(0.0, f64::max);
    let max = nice_max(max * 1.05);
    let t_max = runs
        .iter()
        .flat_map(|r| r.throughput_series.iter().map(|(t, _)| *t))
        .fold(1.0, f64::max);
    y_ticks(&mut s, max);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    for i in 0..=5 {
        let t = t_max * i as f64 / 5.0;
        let x = LEFT + pw * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{:.0}</text>"#,
            H - BOTTOM + 18.0,
            t
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let pts: Vec<String> = r
            .throughput_series
            .iter()
            .map(|&(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + pw * t / t_max,
                    H - BOTTOM - ph * (v / max).min(1.0)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" {} stroke-width="2" points="{}"/>"#,
            stroke(runs, i),
            pts.join(" ")
        );
    }
    s.push_str("</svg>\n");
    s
}

fn render_png(svg: &str, path: &Path) -> Result<(), String> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| format!("svg: {e}"))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height()).ok_or("empty chart")?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
        .save_png(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_land_on_log_scale_ticks() {
        assert!((percentile_x(90.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_x(100.0), 5.0);
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(0.7), 1.0);
    }
}
