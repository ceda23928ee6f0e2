//! SVG charts drawn with plotters: per op, the fraction of peak per shape and run (per layer
//! method, the time); per run with ceilings, a roofline of every op it timed; per run and weight
//! shape with compressed-weight products, their speedup over dense against N.

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::markdown::chart_value;
use super::payoff::{self, Shape};
use super::{params_of, trusted, Report, Run};
use crate::results::Record;

pub struct Chart {
    /// `op`, `roofline` or `payoff`.
    pub kind: &'static str,
    pub title: String,
    pub file: String,
    pub svg: String,
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

pub fn all(report: &Report) -> Vec<Chart> {
    let mut charts = Vec::new();
    for (i, run) in report.runs.iter().enumerate() {
        if let Some(svg) = roofline(run) {
            charts.push(Chart {
                kind: "roofline",
                title: format!("Roofline: {}", run.label),
                file: format!("roofline-{}-{}.svg", i + 1, slug(&run.label)),
                svg,
            });
        }
    }
    for (i, run) in report.runs.iter().enumerate() {
        for shape in payoff::shapes(run) {
            if let Some(svg) = speedups(run, &shape) {
                let title = payoff::chart_title(run, &shape);
                charts.push(Chart {
                    kind: "payoff",
                    file: format!(
                        "payoff-{}-{}-{}x{}.svg",
                        i + 1,
                        slug(&run.label),
                        shape.rows,
                        shape.cols
                    ),
                    title,
                    svg,
                });
            }
        }
    }
    for (op, keys) in &report.ops {
        let layer = op.starts_with("LAYER_");
        if let Some(svg) = bars(report, op, keys, layer) {
            charts.push(Chart {
                kind: "op",
                title: op.clone(),
                file: format!("op-{}.svg", slug(op)),
                svg,
            });
        }
    }
    charts
}

/// Grouped bars: x = parameter sets, one bar per run; y = % of peak (ops) or seconds (layers).
fn bars(report: &Report, op: &str, keys: &[String], layer: bool) -> Option<String> {
    let value = |r: &Record| -> Option<f64> {
        if layer {
            r.median_s.filter(|_| trusted(r))
        } else {
            chart_value(r).map(|f| 100.0 * f)
        }
    };
    let data: Vec<Vec<Option<f64>>> = keys
        .iter()
        .map(|k| {
            report
                .runs
                .iter()
                .map(|run| run.record(k).and_then(value))
                .collect()
        })
        .collect();
    let ymax = data.iter().flatten().flatten().cloned().fold(0.0, f64::max);
    if ymax <= 0.0 {
        return None;
    }
    let ymax = if layer {
        ymax * 1.15
    } else {
        ymax.max(100.0) * 1.1
    };
    let mut svg = String::new();
    {
        let width = (220 + 120 * keys.len()).clamp(600, 1400) as u32;
        let root = SVGBackend::with_string(&mut svg, (width, 420)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let n = keys.len();
        let labels: Vec<String> = keys.iter().map(|k| params_of(k).to_string()).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption(op, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n as f64, 0f64..ymax)
            .ok()?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(if layer {
                "seconds (prune stages)"
            } else {
                "% of measured peak"
            })
            .draw()
            .ok()?;
        // Category labels under each group of bars, placed in pixels (the f64 axis would
        // otherwise put its own round numbers there).
        let style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (i, label) in labels.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(label.clone(), (px, py + 6), style.clone()))
                .ok()?;
        }
        let runs = report.runs.len();
        let width = 0.8 / runs as f64;
        for (j, run) in report.runs.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            let rects: Vec<Rectangle<(f64, f64)>> = data
                .iter()
                .enumerate()
                .filter_map(|(i, row)| {
                    row[j].map(|y| {
                        let x0 = i as f64 + 0.1 + j as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width * 0.9, y)], color.filled())
                    })
                })
                .collect();
            chart
                .draw_series(rects)
                .ok()?
                .label(run.label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        if !layer {
            chart
                .draw_series(LineSeries::new(
                    [(0.0, 100.0), (n as f64, 100.0)],
                    BLACK.stroke_width(1),
                ))
                .ok()?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .ok()?;
        root.present().ok()?;
    }
    Some(svg)
}

/// Achieved GFLOP/s against arithmetic intensity, under the run's measured roofs.
fn roofline(run: &Run) -> Option<String> {
    let c = &run.file.ceilings;
    let (bw, peak) = (c.copy_gbps?, c.fma_tflops? * 1e3);
    let points: Vec<(f64, f64, String)> = run
        .file
        .records
        .iter()
        .filter(|r| {
            trusted(r) && r.flops > 0 && r.bytes > 0 && r.kind == crate::results::RecordKind::Op
        })
        .filter_map(|r| {
            let t = r.median_s?;
            Some((
                r.flops as f64 / r.bytes as f64,
                r.flops as f64 / t / 1e9,
                r.op.clone(),
            ))
        })
        .collect();
    if points.is_empty() {
        return None;
    }
    let xs = points.iter().map(|p| p.0);
    let (xmin, xmax) = (
        xs.clone().fold(f64::INFINITY, f64::min).min(0.1) / 2.0,
        xs.fold(0.0, f64::max).max(2.0 * peak / bw) * 2.0,
    );
    let ys = points.iter().map(|p| p.1);
    let (ymin, ymax) = (
        ys.clone().fold(f64::INFINITY, f64::min).min(bw * xmin) / 2.0,
        ys.fold(0.0, f64::max).max(peak) * 2.0,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 520)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        // The legend gets its own column, so it never hides a point.
        let (plot, legend) = root.split_horizontally(760);
        let mut chart = ChartBuilder::on(&plot)
            .caption(format!("Roofline: {}", run.label), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d((xmin..xmax).log_scale(), (ymin..ymax).log_scale())
            .ok()?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (flop/byte)")
            .y_desc("GFLOP/s")
            .draw()
            .ok()?;
        let roof: Vec<(f64, f64)> = (0..=200)
            .map(|i| {
                let x = xmin * (xmax / xmin).powf(i as f64 / 200.0);
                (x, (bw * x).min(peak))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(roof, BLACK.stroke_width(2)))
            .ok()?;
        let text = ("sans-serif", 12).into_font().color(&BLACK);
        let roof_label = format!("roof: {bw:.1} GB/s, {:.3} TFLOP/s", peak / 1e3);
        legend
            .draw(&PathElement::new(
                [(5, 50), (25, 50)],
                BLACK.stroke_width(2),
            ))
            .ok()?;
        legend
            .draw(&Text::new(roof_label, (32, 44), text.clone()))
            .ok()?;
        let mut ops: Vec<&String> = points.iter().map(|p| &p.2).collect();
        ops.sort();
        ops.dedup();
        for (j, op) in ops.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| &&p.2 == op)
                        .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
                )
                .ok()?;
            let y = 72 + 18 * j as i32;
            legend
                .draw(&Circle::new((15, y + 6), 4, color.filled()))
                .ok()?;
            legend
                .draw(&Text::new(op.to_string(), (32, y), text.clone()))
                .ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}

/// Speedup over dense against the token count N (log scale), a line per format and mask, and
/// each one's bandwidth bound S_max dashed in the same colour; y = 1 is dense.
fn speedups(run: &Run, shape: &Shape) -> Option<String> {
    type Points = Vec<(f64, f64)>;
    // Per line: the trusted speedups, and S_max, at each N.
    let lines: Vec<(Points, Points)> = shape
        .lines
        .iter()
        .map(|line| {
            let at = |f: &dyn Fn(&Record) -> Option<f64>| -> Points {
                line.by_n
                    .iter()
                    .filter_map(|(n, r)| f(r).map(|y| (*n as f64, y)))
                    .collect()
            };
            (
                at(&|r| payoff::trusted_speedup(run, r)),
                at(&|r| r.payoff.as_ref().map(|p| p.s_max)),
            )
        })
        .collect();
    if lines.iter().all(|(s, _)| s.is_empty()) {
        return None;
    }
    let ys = lines
        .iter()
        .flat_map(|(s, m)| s.iter().chain(m))
        .map(|p| p.1);
    let ymax = ys.fold(1.0, f64::max) * 1.1;
    let nmax = shape.tokens.last().copied().unwrap_or(1).max(256) as f64;
    let (xmin, xmax) = (0.8, nmax * 1.25);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 460)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        // The legend gets its own column, as on the roofline.
        let (plot, legend) = root.split_horizontally(760);
        let mut chart = ChartBuilder::on(&plot)
            .caption(payoff::chart_title(run, shape), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
            .ok()?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_desc("speedup over dense f16")
            .draw()
            .ok()?;
        // N labels at the token counts timed, placed in pixels (a log axis would put its own
        // round numbers there), with a light rule above each.
        let style = ("sans-serif", 12)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        for n in &shape.tokens {
            let x = *n as f64;
            chart
                .draw_series(LineSeries::new(
                    [(x, 0.0), (x, ymax)],
                    BLACK.mix(0.1).stroke_width(1),
                ))
                .ok()?;
            let (px, py) = chart.backend_coord(&(x, 0.0));
            plot.draw(&Text::new(format!("{n}"), (px, py + 6), style.clone()))
                .ok()?;
        }
        let (px, py) = chart.backend_coord(&(xmax.sqrt() * xmin.sqrt(), 0.0));
        plot.draw(&Text::new(
            "N (tokens)".to_string(),
            (px, py + 24),
            style.clone(),
        ))
        .ok()?;
        chart
            .draw_series(LineSeries::new(
                [(xmin, 1.0), (xmax, 1.0)],
                BLACK.stroke_width(1),
            ))
            .ok()?;
        let text = ("sans-serif", 12).into_font().color(&BLACK);
        legend
            .draw(&PathElement::new(
                [(5, 50), (25, 50)],
                BLACK.stroke_width(1),
            ))
            .ok()?;
        legend
            .draw(&Text::new("dense (1×)".to_string(), (32, 44), text.clone()))
            .ok()?;
        legend
            .draw(&DashedPathElement::new(
                [(5, 68), (25, 68)],
                4,
                3,
                BLACK.stroke_width(1),
            ))
            .ok()?;
        legend
            .draw(&Text::new(
                "S_max, the bandwidth bound".to_string(),
                (32, 62),
                text.clone(),
            ))
            .ok()?;
        for (j, (line, (speedup, s_max))) in shape.lines.iter().zip(&lines).enumerate() {
            let color = Palette99::pick(j).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    speedup.iter().copied(),
                    color.stroke_width(2),
                ))
                .ok()?;
            chart
                .draw_series(speedup.iter().map(|p| Circle::new(*p, 3, color.filled())))
                .ok()?;
            chart
                .draw_series(DashedLineSeries::new(
                    s_max.iter().copied(),
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .ok()?;
            let y = 90 + 18 * j as i32;
            legend
                .draw(&PathElement::new(
                    [(5, y + 6), (25, y + 6)],
                    color.stroke_width(2),
                ))
                .ok()?;
            legend
                .draw(&Text::new(line.label.clone(), (32, y), text.clone()))
                .ok()?;
        }
        root.present().ok()?;
    }
    Some(svg)
}
