//! The HTML report's charts: inline SVG drawn by plotters, each with an `id` and a `<title>`
//! so that a browser (and a test reading the rendered DOM) can find it; plus the pure
//! arithmetic behind them (histogram bins, cumulative steps), tested on its own.

use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::html::escape;

/// A chart plotters could not draw.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the {chart} chart")]
pub struct ChartError {
    chart: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

const WIDTH: u32 = 960;
const FONT: &str = "sans-serif";
/// The fine grid between labelled values: barely there.
const LIGHT_LINE: RGBColor = RGBColor(242, 242, 242);

/// The colour of an outcome kind, in the charts and in the page's legend.
pub(crate) fn kind_color(kind: &str) -> RGBColor {
    match kind {
        "migrated" => RGBColor(46, 139, 87),
        "skipped" => RGBColor(140, 140, 140),
        "blocked" => RGBColor(230, 145, 30),
        "rolled-back" => RGBColor(106, 90, 205),
        "parked" => RGBColor(200, 40, 40),
        "cancelled" => RGBColor(80, 80, 80),
        _ => RGBColor(70, 130, 180),
    }
}

/// Draws one chart into an inline `<svg id=…>` element titled `title`. The namespace
/// attribute plotters writes is dropped: HTML puts an inline `<svg>` in the SVG namespace by
/// itself, and the page then holds no URL at all.
/// The frame of a chart of counts (y, up to `top`) over seconds (x, up to `end`).
fn seconds_by_count<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
    end: f64,
    top: u64,
) -> Result<
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordu64>>,
    DrawingAreaErrorKind<std::io::Error>,
> {
    ChartBuilder::on(root)
        .caption(title, (FONT, 18))
        .margin(12)
        .margin_right(32)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..end, 0u64..top)
}

fn svg(
    id: &'static str,
    title: &str,
    (w, h): (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
) -> Result<String, ChartError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        root.fill(&WHITE)
            .and_then(|_| draw(&root))
            .and_then(|_| root.present())
            .map_err(|e| ChartError {
                chart: id,
                source: Box::new(e),
            })?;
    }
    let out = out.replacen(r#" xmlns="http://www.w3.org/2000/svg""#, "", 1);
    let body = out.strip_prefix("<svg").unwrap_or(&out);
    let title = escape(title);
    Ok(format!(
        r#"<svg id="{id}" role="img" aria-labelledby="{id}-title"{}"#,
        body.replacen(
            '>',
            &format!(r#"><title id="{id}-title">{title}</title>"#),
            1
        )
    ))
}

/// Histogram bins from zero, all `width_ms` wide, bin `i` holding values in
/// `[i·width, (i+1)·width)`. Values are taken to the millisecond (as the report rounds them)
/// and counted in whole milliseconds, so no value lands in a neighbour's bin by rounding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bins {
    pub(crate) width_ms: u64,
    pub(crate) counts: Vec<u64>,
}

impl Bins {
    /// At most `most` bins (at least one) of a 1-2-5 width; None for no values. Negative
    /// values count as zero.
    pub(crate) fn of(seconds: &[f64], most: usize) -> Option<Bins> {
        let max = seconds.iter().copied().map(to_ms).max()?;
        let most = most.max(1) as u64;
        let width_ms = (0..)
            .flat_map(|k| [1, 2, 5].map(|m| m * 10u64.saturating_pow(k)))
            .find(|w| max / w < most)
            .expect("a width of 10^19 ms fits any u64");
        let mut bins = Bins {
            width_ms,
            counts: vec![0; (max / width_ms + 1) as usize],
        };
        bins.counts = bins.count(seconds);
        Some(bins)
    }

    /// How many of `seconds` fall in each of these bins (a part of the values they were made
    /// for: larger values count in the last bin).
    pub(crate) fn count(&self, seconds: &[f64]) -> Vec<u64> {
        let mut counts = vec![0; self.counts.len()];
        let last = counts.len().saturating_sub(1);
        for v in seconds.iter().copied().map(to_ms) {
            counts[((v / self.width_ms) as usize).min(last)] += 1;
        }
        counts
    }

    fn width(&self) -> f64 {
        self.width_ms as f64 / 1000.0
    }

    /// `20 ms`, `5 s`.
    fn width_text(&self) -> String {
        if self.width_ms < 1000 {
            format!("{} ms", self.width_ms)
        } else {
            format!("{} s", self.width())
        }
    }
}

fn to_ms(seconds: f64) -> u64 {
    (seconds.max(0.0) * 1000.0).round() as u64
}

/// A cumulative count over time as a staircase from (0, 0): at each time the count steps up
/// by the values that fall there.
pub(crate) fn staircase(times: &[f64]) -> Vec<(f64, u64)> {
    let mut t: Vec<f64> = times.to_vec();
    t.sort_by(f64::total_cmp);
    let mut points = vec![(0.0, 0)];
    for (i, x) in t.into_iter().enumerate() {
        points.push((x, i as u64));
        points.push((x, i as u64 + 1));
    }
    points
}

/// A legend entry. Without a font of its own (no `ttf` feature) plotters sizes the legend
/// box by an estimate narrower than a browser's sans-serif: trailing spaces, which SVG does not
/// show, widen the box to hold the text.
fn legend(text: impl std::fmt::Display) -> String {
    format!("{text}   ")
}

/// Upper end of an axis showing values up to `max`: a little headroom, never empty.
fn axis_end(max: f64) -> f64 {
    if max > 0.0 {
        max * 1.05
    } else {
        1.0
    }
}

/// One line per outcome kind and one for all of them: how many targets had reached an
/// outcome by each second. `finished` holds each finished target's kind and time.
pub(crate) fn progress(
    finished: &[(&str, f64)],
    total: usize,
    x_desc: &str,
) -> Result<String, ChartError> {
    let mut kinds: Vec<&str> = finished.iter().map(|(k, _)| *k).collect();
    kinds.sort();
    kinds.dedup();
    let end = axis_end(finished.iter().map(|(_, t)| *t).fold(0.0, f64::max));
    let title = format!(
        "Progress: {} of {total} targets reached an outcome",
        finished.len()
    );
    svg("chart-progress", &title, (WIDTH, 380), |root| {
        let mut chart = seconds_by_count(root, &title, end, total.max(1) as u64)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("targets")
            .label_style((FONT, 13))
            .light_line_style(LIGHT_LINE)
            .draw()?;
        let mut line = |label: String, color: RGBColor, times: Vec<f64>| -> DrawResult {
            let mut points = staircase(&times);
            // The line runs on to the right edge: the count holds after the last outcome.
            if let Some(&(_, n)) = points.last() {
                points.push((end, n));
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(legend(label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            Ok(())
        };
        line(
            "any outcome".into(),
            RGBColor(30, 30, 30),
            finished.iter().map(|(_, t)| *t).collect(),
        )?;
        for k in &kinds {
            let times = finished
                .iter()
                .filter(|(kind, _)| kind == k)
                .map(|(_, t)| *t)
                .collect();
            line(k.to_string(), kind_color(k), times)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
    })
}

/// One horizontal bar per full outcome (`blocked:plan-subnet-limit` …), coloured by kind,
/// in the order given (top to bottom).
pub(crate) fn outcomes(bars: &[(&str, &str, u64)]) -> Result<String, ChartError> {
    let n = bars.len().max(1);
    let most = bars.iter().map(|b| b.2).max().unwrap_or(0);
    // Room for the longest label at the naive width plotters assumes for 13 px text.
    let label_px = bars.iter().map(|b| b.0.len()).max().unwrap_or(8) as u32 * 7 + 16;
    let title = "Outcomes by reason";
    svg(
        "chart-outcomes",
        title,
        (WIDTH, 70 + 30 * n as u32),
        |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(title, (FONT, 18))
                .margin(12)
                .margin_right(32)
                .x_label_area_size(36)
                .y_label_area_size(label_px.min(WIDTH / 2))
                .build_cartesian_2d(
                    0u64..(most + most / 8 + 1),
                    (0usize..n - 1).into_segmented(),
                )?;
            // Row 0 is drawn at the bottom: the first bar goes to the top row.
            let row = |i: usize| n - 1 - i;
            let label = |v: &SegmentValue<usize>| match v {
                SegmentValue::CenterOf(r) => bars
                    .get(n - 1 - r)
                    .map(|b| b.0.to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(n)
                .y_label_formatter(&label)
                .x_desc("targets")
                .label_style((FONT, 13))
                .light_line_style(LIGHT_LINE)
                .draw()?;
            chart.draw_series(
                Histogram::horizontal(&chart)
                    .style_func(|r, _| match r {
                        SegmentValue::Exact(r) | SegmentValue::CenterOf(r) => {
                            kind_color(bars.get(n - 1 - r).map_or("", |b| b.1)).filled()
                        }
                        SegmentValue::Last => BLACK.filled(),
                    })
                    .margin(4)
                    .data(bars.iter().enumerate().map(|(i, b)| (row(i), b.2))),
            )?;
            chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
                Text::new(
                    format!(" {}", b.2),
                    (b.2, SegmentValue::CenterOf(row(i))),
                    (FONT, 13).into_font().into_text_style(root).pos(
                        plotters::style::text_anchor::Pos::new(
                            plotters::style::text_anchor::HPos::Left,
                            plotters::style::text_anchor::VPos::Center,
                        ),
                    ),
                )
            }))?;
            Ok(())
        },
    )
}

/// The downtime histogram, its bars stacked by outcome kind (`stacks`: each kind's counts on
/// `bins`), with the percentiles marked; `unit` names the seconds (wall or simulated).
pub(crate) fn downtime(
    bins: &Bins,
    stacks: &[(&str, Vec<u64>)],
    marks: &[(&str, f64)],
    unit: &str,
) -> Result<String, ChartError> {
    let w = bins.width();
    let end = w * bins.counts.len() as f64;
    let top = bins.counts.iter().copied().max().unwrap_or(0);
    let top = top + top / 8 + 1;
    let title = format!(
        "Downtime per target ({} bins of {})",
        bins.counts.len(),
        bins.width_text()
    );
    svg("chart-downtime", &title, (WIDTH, 380), |root| {
        let mut chart = seconds_by_count(root, &title, end, top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_desc(format!("downtime ({unit})"))
            .y_desc("targets")
            .label_style((FONT, 13))
            .light_line_style(LIGHT_LINE)
            .draw()?;
        let mut base = vec![0u64; bins.counts.len()];
        for (kind, counts) in stacks {
            let color = kind_color(kind);
            let bars: Vec<_> = counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(i, &c)| {
                    let mut r = Rectangle::new(
                        [(i as f64 * w, base[i]), ((i + 1) as f64 * w, base[i] + c)],
                        color.filled(),
                    );
                    r.set_margin(0, 0, 1, 1);
                    base[i] += c;
                    r
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(legend(kind))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 18, y + 5)], color.filled())
                });
        }
        let palette = [
            RGBColor(40, 40, 160),
            RGBColor(200, 120, 0),
            RGBColor(200, 40, 40),
        ];
        for (i, (name, x)) in marks.iter().enumerate() {
            let color = palette[i % palette.len()];
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*x, 0), (*x, top)],
                    color.stroke_width(2),
                )))?
                .label(legend(format_args!("{name} {x:.3} s")))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_start_at_zero_with_a_1_2_5_width_and_keep_every_value() {
        assert_eq!(Bins::of(&[], 20), None);
        // 0.2 s is the largest: 20 ms bins give 11 (0..=10), within 20; 10 ms would need 21.
        let b = Bins::of(&[0.2, 0.15, 0.0], 20).unwrap();
        assert_eq!(b.width_ms, 20);
        assert_eq!(b.counts.len(), 11);
        assert_eq!((b.counts[0], b.counts[7], b.counts[10]), (1, 1, 1));
        assert_eq!(b.counts.iter().sum::<u64>(), 3);
        // A value on a bin's edge belongs to the bin it opens, whatever binary floats make of
        // 0.3 / 0.1.
        let edge = Bins::of(&[0.3, 0.1, 0.2, 0.7], 10).unwrap();
        assert_eq!(edge.width_ms, 100);
        assert_eq!(edge.counts, vec![0, 1, 1, 1, 0, 0, 0, 1]);
        // Seconds to minutes: widths grow by 1-2-5 steps.
        let long = Bins::of(&[0.5, 47.0, 301.2], 30).unwrap();
        assert_eq!(long.width_ms, 20_000);
        assert_eq!(long.counts.len(), 16);
        assert_eq!((long.counts[0], long.counts[2], long.counts[15]), (1, 1, 1));
        // All zero (or a clock that ran backwards): one bin of 1 ms.
        let zero = Bins::of(&[0.0, -0.004], 20).unwrap();
        assert_eq!((zero.width_ms, zero.counts), (1, vec![2]));
        // A part of the values, on the same bins.
        assert_eq!(long.count(&[47.0, 301.2, 999.0]).iter().sum::<u64>(), 3);
        assert_eq!(long.count(&[47.0])[2], 1);
        let one = Bins::of(&[1.0], 0).unwrap();
        assert_eq!(one.counts.iter().sum::<u64>(), 1);
        assert_eq!(one.counts.len(), 1);
    }

    #[test]
    fn staircase_steps_up_at_each_time_in_order() {
        assert_eq!(staircase(&[]), vec![(0.0, 0)]);
        assert_eq!(
            staircase(&[3.0, 1.0, 1.0]),
            vec![
                (0.0, 0),
                (1.0, 0),
                (1.0, 1),
                (1.0, 1),
                (1.0, 2),
                (3.0, 2),
                (3.0, 3)
            ]
        );
    }

    #[test]
    fn charts_are_inline_svg_with_an_id_a_title_and_no_url() {
        let charts = [
            progress(&[("migrated", 1.5), ("blocked", 0.2)], 3, "seconds").unwrap(),
            outcomes(&[
                ("migrated", "migrated", 5),
                ("blocked:drifted", "blocked", 2),
            ])
            .unwrap(),
            downtime(
                &Bins::of(&[0.2, 0.15], 20).unwrap(),
                &[("migrated", vec![1; 11])],
                &[("p50", 0.15), ("max", 0.2)],
                "seconds",
            )
            .unwrap(),
        ];
        for (svg, id) in charts
            .iter()
            .zip(["chart-progress", "chart-outcomes", "chart-downtime"])
        {
            assert!(
                svg.starts_with(&format!(r#"<svg id="{id}" role="img""#)),
                "{}",
                &svg[..120]
            );
            assert!(svg.contains(&format!(r#"<title id="{id}-title">"#)), "{id}");
            assert!(!svg.contains("http"), "{id}");
            assert!(svg.trim_end().ends_with("</svg>"), "{id}");
        }
        assert!(
            charts[1].contains(">\nblocked:drifted\n</text>"),
            "{}",
            charts[1]
        );
        assert!(charts[0].contains("2 of 3 targets"));
    }
}
