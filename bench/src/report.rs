//! The Markdown report and the charts (plotters, PNG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::Value;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .context("DejaVuSans.ttf (package fonts-dejavu-core) not found")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("bad font file {path}"))?;
    Ok(())
}

fn errors_of(cell: &Value) -> u64 {
    cell["failures"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

fn errors_text(cell: &Value) -> String {
    let Some(map) = cell["failures"].as_object() else {
        return "0".into();
    };
    if map.is_empty() {
        return "0".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Cells of one suite, grouped by strategy in first-seen order.
fn by_strategy<'a>(cells: &'a [Value], suite: &str) -> Vec<(String, Vec<&'a Value>)> {
    let mut order: Vec<String> = Vec::new();
    let mut map: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for cell in cells.iter().filter(|c| c["suite"] == suite) {
        let name = cell["strategy"].as_str().unwrap_or("?").to_owned();
        if !order.contains(&name) {
            order.push(name.clone());
        }
        map.entry(name).or_default().push(cell);
    }
    order
        .into_iter()
        .map(|name| {
            let mut v = map.remove(&name).unwrap_or_default();
            v.sort_by_key(|c| c["concurrency"].as_u64().unwrap_or(0));
            (name, v)
        })
        .collect()
}

fn table(out: &mut String, groups: &[(String, Vec<&Value>)], with_mysql: bool) {
    out.push_str(
        "| strategy | concurrency | ops/s | p50 ms | p99 ms | p99.9 ms | total s | errors | ",
    );
    out.push_str(if with_mysql {
        "peak MySQL conns |\n|---|---:|---:|---:|---:|---:|---:|---|---:|\n"
    } else {
        "\n|---|---:|---:|---:|---:|---:|---:|---|\n"
    });
    for (strategy, cells) in groups {
        for c in cells {
            let _ = write!(
                out,
                "| {strategy} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                c["concurrency"],
                c["throughput"].as_f64().unwrap_or(0.0),
                c["p50_ms"].as_f64().unwrap_or(0.0),
                c["p99_ms"].as_f64().unwrap_or(0.0),
                c["p999_ms"].as_f64().unwrap_or(0.0),
                c["total_s"].as_f64().unwrap_or(0.0),
                errors_text(c)
            );
            if with_mysql {
                let _ = write!(
                    out,
                    " {} |",
                    c["peak_mysql_connections"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
            out.push('\n');
        }
    }
}

fn chart(path: &str, title: &str, groups: &[(String, Vec<&Value>)]) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    let max_c = groups
        .iter()
        .flat_map(|(_, cs)| cs.iter())
        .filter_map(|c| c["concurrency"].as_u64())
        .max()
        .unwrap_or(10) as f64;
    let max_p99 = groups
        .iter()
        .flat_map(|(_, cs)| cs.iter())
        .filter_map(|c| c["p99_ms"].as_f64())
        .fold(1.0, f64::max);
    let max_err = groups
        .iter()
        .flat_map(|(_, cs)| cs.iter())
        .map(|c| errors_of(c))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];

    let mut p99 = ChartBuilder::on(&left)
        .caption(format!("{title}: p99 latency"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (8.0..max_c * 1.1).log_scale(),
            (0.1..max_p99 * 2.0).log_scale(),
        )?;
    p99.configure_mesh()
        .x_desc("concurrent callers")
        .y_desc("p99 ms (log)")
        .label_style(("sans-serif", 13))
        .draw()?;
    let mut errors = ChartBuilder::on(&right)
        .caption(format!("{title}: errors"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((8.0..max_c * 1.1).log_scale(), 0.0..max_err * 1.1)?;
    errors
        .configure_mesh()
        .x_desc("concurrent callers")
        .y_desc("failed operations")
        .label_style(("sans-serif", 13))
        .draw()?;

    for (i, (strategy, cells)) in groups.iter().enumerate() {
        let color = palette[i % palette.len()];
        let latency: Vec<(f64, f64)> = cells
            .iter()
            .filter(|c| c["ok"].as_u64().unwrap_or(0) > 0)
            .map(|c| {
                (
                    c["concurrency"].as_f64().unwrap_or(0.0),
                    c["p99_ms"].as_f64().unwrap_or(0.0).max(0.1),
                )
            })
            .collect();
        p99.draw_series(LineSeries::new(latency.clone(), color.stroke_width(2)))?
            .label(strategy.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        p99.draw_series(latency.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        let failed: Vec<(f64, f64)> = cells
            .iter()
            .map(|c| {
                (
                    c["concurrency"].as_f64().unwrap_or(0.0),
                    errors_of(c) as f64,
                )
            })
            .collect();
        errors.draw_series(LineSeries::new(failed.clone(), color.stroke_width(2)))?;
        errors.draw_series(failed.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
    }
    p99.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Reads the JSON lines in `input`; writes `<stem>.md` and the charts next to it.
pub fn write(
    input: &str,
    stem: &str,
    preamble: Option<&str>,
    appendix: Option<&str>,
) -> anyhow::Result<()> {
    register_font()?;
    let text = std::fs::read_to_string(input).with_context(|| format!("read {input}"))?;
    let cells: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let file_name = |suffix: &str| {
        format!(
            "{}{suffix}",
            std::path::Path::new(stem)
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("report")
        )
    };
    let mut md = String::new();
    if let Some(p) = preamble {
        md.push_str(&std::fs::read_to_string(p).unwrap_or_else(|_| p.to_owned()));
        md.push('\n');
    }
    for (suite, title) in [
        ("mysql", "Primary-key reads"),
        ("locks", "Lock acquire + release cycles"),
    ] {
        let groups = by_strategy(&cells, suite);
        if groups.is_empty() {
            continue;
        }
        let png = format!("{stem}-{suite}.png");
        chart(&png, title, &groups)?;
        let _ = writeln!(
            md,
            "## {title}\n\n![{title}]({})\n",
            file_name(&format!("-{suite}.png"))
        );
        table(&mut md, &groups, suite == "mysql");
        md.push('\n');
    }
    if let Some(a) = appendix {
        md.push_str(&std::fs::read_to_string(a).unwrap_or_else(|_| a.to_owned()));
        md.push('\n');
    }
    std::fs::write(format!("{stem}.md"), md)?;
    eprintln!("wrote {stem}.md");
    Ok(())
}
