//! Results: cells (one metric in one mode), their summary, the goals, the table on stdout, the
//! JSON file and the chart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::json::Json;
use crate::lab::Mode;
use crate::procs;
use crate::workloads::{Goal, Metric};

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Ok,
    /// Not reported: the machine was busy with something else.
    Refused(String),
    /// A run failed.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub runs: Vec<f64>,
    pub state: State,
    /// With the load check overridden: the highest load seen before this cell's runs.
    pub loaded: Option<f64>,
}

impl Default for Cell {
    fn default() -> Self {
        Cell {
            runs: Vec::new(),
            state: State::Ok,
            loaded: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(runs: &[f64]) -> Option<Summary> {
    if runs.is_empty() {
        return None;
    }
    let mut v = runs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

impl Cell {
    pub fn summary(&self) -> Option<Summary> {
        match self.state {
            State::Ok => summarize(&self.runs),
            _ => None,
        }
    }
}

/// All cells of the run, by (metric, mode).
#[derive(Default)]
pub struct Results {
    cells: HashMap<(&'static str, &'static str), Cell>,
}

impl Results {
    pub fn cell(&mut self, metric: &'static str, mode: &'static str) -> &mut Cell {
        self.cells.entry((metric, mode)).or_default()
    }

    pub fn get(&self, metric: &str, mode: &str) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|((k, m), _)| *k == metric && *m == mode)
            .map(|(_, c)| c)
    }

    pub fn median(&self, metric: &str, mode: &str) -> Option<f64> {
        self.get(metric, mode)?.summary().map(|s| s.median)
    }

    /// `a / b` run by run: the i-th runs of two modes come from the same round of the
    /// interleaving (A B C A B C ...), seconds apart, so a drift of the machine that lifts or
    /// lowers both cancels in their ratio where it does not in a ratio of medians. None unless
    /// both cells hold the same number of runs.
    pub fn paired(&self, metric: &str, a: &str, b: &str) -> Option<Summary> {
        let (x, y) = (self.get(metric, a)?, self.get(metric, b)?);
        if x.summary().is_none() || y.summary().is_none() || x.runs.len() != y.runs.len() {
            return None;
        }
        let ratios: Option<Vec<f64>> = x
            .runs
            .iter()
            .zip(&y.runs)
            .map(|(p, q)| (*q > 0.0).then(|| p / q))
            .collect();
        summarize(&ratios?)
    }

    /// The ratio a goal is judged by: the median of the run-by-run ratios, or the ratio of the
    /// medians where runs cannot be paired.
    pub fn judged_ratio(&self, metric: &str, a: &str, b: &str) -> Option<f64> {
        match self.paired(metric, a, b) {
            Some(p) => Some(p.median),
            None => ratio(self, metric, a, b),
        }
    }
}

/// Slim against the goal: (pass, the goal as text). None when a needed cell is missing.
pub fn evaluate(metric: &Metric, r: &Results) -> (String, Option<bool>) {
    let ratio = r.judged_ratio(metric.key, "slim", "host");
    match metric.goal {
        Goal::NearHost(tol) if metric.higher_is_better => (
            format!(">= {:.2}x host", 1.0 - tol),
            ratio.map(|x| x >= 1.0 - tol),
        ),
        Goal::NearHost(tol) => (
            format!("<= {:.2}x host", 1.0 + tol),
            ratio.map(|x| x <= 1.0 + tol),
        ),
        Goal::AtLeastOverlay { aim } => (
            format!(">= overlay (aim {aim}x host)"),
            r.judged_ratio(metric.key, "slim", "overlay")
                .map(|x| x >= 1.0),
        ),
        Goal::AtMostHost(x) => (format!("<= {x}x host"), ratio.map(|r| r <= x)),
        Goal::AtLeastHost(x) => (format!(">= {x}x host"), ratio.map(|r| r >= x)),
        Goal::Info => (String::new(), None),
    }
}

/// A number with about 3-4 significant digits.
pub fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

pub(crate) fn cell_text(c: Option<&Cell>) -> String {
    let Some(c) = c else {
        return "-".into();
    };
    match &c.state {
        State::Refused(_) => "refused".into(),
        State::Error(_) => "error".into(),
        State::Ok => match c.summary() {
            Some(s) => format!("{} [{}..{}]", num(s.median), num(s.min), num(s.max)),
            None => "-".into(),
        },
    }
}

/// The run-by-run ratios `a / b`: median [min..max].
pub(crate) fn paired_text(r: &Results, metric: &str, a: &str, b: &str) -> String {
    match r.paired(metric, a, b) {
        Some(p) => format!("{:.2} [{:.2}..{:.2}]", p.median, p.min, p.max),
        None => "-".into(),
    }
}

fn ratio_text(r: &Results, metric: &str, a: &str, b: &str) -> String {
    match ratio(r, metric, a, b) {
        Some(x) => format!("{x:.2}x"),
        None => "-".into(),
    }
}

/// The table for stdout.
pub fn table(metrics: &[&Metric], modes: &[Mode], r: &Results) -> String {
    let mut out = String::new();
    let has = |k: &str| modes.iter().any(|m| m.key == k);
    let header: Vec<String> = [
        "workload",
        "unit",
        "host",
        "overlay",
        "slim",
        "slim/host",
        "per run",
        "slim/overlay",
        "goal (slim)",
        "",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|m| {
            let (goal, pass) = evaluate(m, r);
            let mark = match pass {
                Some(true) => "pass",
                Some(false) => "MISS",
                None if goal.is_empty() => "",
                None => "-",
            };
            vec![
                m.title.to_string(),
                m.unit.to_string(),
                cell_text(r.get(m.key, "host")),
                cell_text(r.get(m.key, "overlay")),
                cell_text(r.get(m.key, "slim")),
                ratio_text(r, m.key, "slim", "host"),
                paired_text(r, m.key, "slim", "host"),
                ratio_text(r, m.key, "slim", "overlay"),
                goal,
                mark.to_string(),
            ]
        })
        .collect();
    write_table(&mut out, &header, &rows, &[0, 1, 8, 9]);
    let (slim, overlay) = (has("slim_same_host"), has("overlay_same_host"));
    if slim || overlay {
        // Same-host traffic never leaves h1: its fair baseline is h1 -> h1 when it was measured,
        // else the two-host host network.
        let base = if has("host_same_host") {
            "host_same_host"
        } else {
            "host"
        };
        out.push_str(&format!(
            "\nSame host (c1 -> c3, both containers on h1; ratios to {base}):\n"
        ));
        let mut header = vec!["workload".to_string(), "unit".to_string()];
        // (mode, None): its cell; (a, Some(b)): the ratio a/b.
        let mut cols: Vec<(&str, Option<&str>)> = Vec::new();
        if base == "host_same_host" {
            cols.push((base, None));
        }
        if slim {
            cols.push(("slim_same_host", None));
        }
        if overlay {
            cols.push(("overlay_same_host", None));
            cols.push(("overlay_same_host", Some(base)));
        }
        if slim {
            cols.push(("slim_same_host", Some(base)));
        }
        if slim && overlay {
            cols.push(("slim_same_host", Some("overlay_same_host")));
        }
        header.extend(cols.iter().map(|(a, b)| match b {
            None => a.to_string(),
            Some(b) => format!("{a}/{b}"),
        }));
        let rows: Vec<Vec<String>> = metrics
            .iter()
            .map(|m| {
                let mut row = vec![m.title.to_string(), m.unit.to_string()];
                row.extend(cols.iter().map(|(a, b)| match b {
                    None => cell_text(r.get(m.key, a)),
                    Some(b) => ratio_text(r, m.key, a, b),
                }));
                row
            })
            .collect();
        write_table(&mut out, &header, &rows, &[0, 1]);
    }
    out
}

/// Columns listed in `text` are left-aligned, the others (numbers) right-aligned.
pub(crate) fn write_table(
    out: &mut String,
    header: &[String],
    rows: &[Vec<String>],
    text: &[usize],
) {
    let mut w = vec![0usize; header.len()];
    for row in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in row.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |out: &mut String, row: &[String]| {
        let mut s = String::new();
        for (i, c) in row.iter().enumerate() {
            if text.contains(&i) {
                let _ = write!(s, "{c:<width$}  ", width = w[i]);
            } else {
                let _ = write!(s, "{c:>width$}  ", width = w[i]);
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, header);
    let total: usize = w.iter().sum::<usize>() + 2 * (w.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in rows {
        line(out, row);
    }
}

/// `results.<workload>.<mode>` and the goals.
pub fn results_json(metrics: &[&Metric], modes: &[Mode], r: &Results) -> (Json, Json) {
    let mut results = Json::obj();
    let mut goals = Json::obj();
    for m in metrics {
        let w = results.entry(m.key);
        for mode in modes {
            let Some(c) = r.get(m.key, mode.key) else {
                continue;
            };
            let mut j = Json::obj()
                .with("unit", m.unit)
                .with("higher_is_better", m.higher_is_better);
            match (&c.state, c.summary()) {
                (State::Refused(why), _) => j.set("refused", why.as_str()),
                (State::Error(why), _) => j.set("error", why.as_str()),
                (State::Ok, Some(s)) => {
                    j.set("median", s.median);
                    j.set("min", s.min);
                    j.set("max", s.max);
                    j.set("runs", c.runs.clone());
                    if mode.key != "host" {
                        if let Some(h) = r.median(m.key, "host").filter(|h| *h > 0.0) {
                            j.set("ratio_to_host", s.median / h);
                        }
                    }
                    // Each Slim mode against the overlay between the same two containers.
                    let overlay = match mode.key {
                        "slim" | "slim_secure" => Some("overlay"),
                        "slim_same_host" => Some("overlay_same_host"),
                        _ => None,
                    };
                    // And each same-host mode against the host network's same-host path.
                    if mode.key.ends_with("_same_host") && mode.key != "host_same_host" {
                        if let Some(v) = r.median(m.key, "host_same_host").filter(|v| *v > 0.0) {
                            j.set("ratio_to_host_same_host", s.median / v);
                        }
                    }
                    if let Some(o) = overlay {
                        if let Some(v) = r.median(m.key, o).filter(|v| *v > 0.0) {
                            j.set(&format!("ratio_to_{o}"), s.median / v);
                        }
                    }
                    // Secure mode also against plain Slim, the same round's run.
                    let bases: &[&str] = match mode.key {
                        "slim" => &["host", "overlay"],
                        "slim_secure" => &["host", "overlay", "slim"],
                        _ => &[],
                    };
                    if mode.key == "slim_secure" {
                        if let Some(v) = r.median(m.key, "slim").filter(|v| *v > 0.0) {
                            j.set("ratio_to_slim", s.median / v);
                        }
                    }
                    for base in bases {
                        if let Some(p) = r.paired(m.key, mode.key, base) {
                            j.set(
                                &format!("paired_ratio_to_{base}"),
                                Json::obj()
                                    .with("median", p.median)
                                    .with("min", p.min)
                                    .with("max", p.max),
                            );
                        }
                    }
                }
                (State::Ok, None) => j.set("error", "no run"),
            }
            if let Some(pct) = c.loaded {
                j.set(
                    "loaded",
                    format!("measured on a loaded machine ({pct:.0}% CPU busy before a run)"),
                );
            }
            w.set(mode.key, j);
        }
        let (goal, pass) = evaluate(m, r);
        if !goal.is_empty() {
            goals.set(
                m.key,
                Json::obj()
                    .with("goal", goal)
                    .with("slim_ratio_to_host", ratio(r, m.key, "slim", "host"))
                    .with("slim_ratio_to_overlay", ratio(r, m.key, "slim", "overlay"))
                    .with("judged_ratio", r.judged_ratio(m.key, "slim", goal_base(m)))
                    .with("pass", pass),
            );
        }
    }
    (results, goals)
}

/// The mode a goal compares Slim with.
fn goal_base(m: &Metric) -> &'static str {
    match m.goal {
        Goal::AtLeastOverlay { .. } => "overlay",
        _ => "host",
    }
}

pub(crate) fn ratio(r: &Results, metric: &str, a: &str, b: &str) -> Option<f64> {
    match (r.median(metric, a), r.median(metric, b)) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    }
}

/// Writes `contents` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, contents).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// matplotlib: Slim/host and overlay/host (and same-host) ratios of the medians per workload.
const CHART: &str = r##"
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

src, dst = sys.argv[1], sys.argv[2]
d = json.load(open(src))
res = d["results"]
# Same-host modes are shown against the host network's own same-host path when it was measured.
same_base = "host_same_host" if any(
    isinstance(c, dict) and (c.get("host_same_host") or {}).get("median")
    for c in res.values()) else "host"
base_name = "host, same host" if same_base == "host_same_host" else "host"
series = [("overlay", "VXLAN overlay / host", "#999999"),
          ("slim", "Slim / host", "#1f77b4"),
          ("overlay_same_host", "VXLAN overlay, same host / " + base_name, "#d9d9d9"),
          ("slim_same_host", "Slim, same host / " + base_name, "#9ecae1")]
rows = []
for w, cells in res.items():
    if not isinstance(cells, dict) or "host" not in cells:
        continue
    h = cells["host"].get("median")
    if not h:
        continue
    hib = cells["host"].get("higher_is_better", True)
    vals = []
    for key, _, _ in series:
        c = cells.get(key) or {}
        m = c.get("median")
        b = h
        if key.endswith("_same_host"):
            b = (cells.get(same_base) or {}).get("median")
        vals.append(m / b if m is not None and b else None)
    label = w + ("" if hib else "  (lower is better)")
    rows.append((label, vals))
if not rows:
    # Keep the chart in step with the JSON: say there is nothing to show.
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, "no ratios to show: every host cell was refused or failed\n%s" %
            d.get("date", ""), ha="center", va="center")
    fig.savefig(dst, format="png", dpi=110)
    sys.exit(0)
present = [i for i in range(len(series)) if any(r[1][i] is not None for r in rows)]
n = len(present)
height = 0.8 / max(n, 1)
fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.8))
for j, i in enumerate(present):
    key, name, color = series[i]
    ys = [k + (j - (n - 1) / 2) * height for k in range(len(rows))]
    xs = [r[1][i] if r[1][i] is not None else 0 for r in rows]
    bars = ax.barh(ys, xs, height=height, label=name, color=color)
    for y, x, r in zip(ys, xs, rows):
        if r[1][i] is not None:
            ax.text(x + 0.01, y, "%.2f" % x, va="center", fontsize=7)
ax.axvline(1.0, color="black", linewidth=0.8)
top = max([v for r in rows for v in r[1] if v is not None] + [1.0])
ax.set_xlim(0, top * 1.1)
ax.set_yticks(range(len(rows)))
ax.set_yticklabels([r[0] for r in rows], fontsize=8)
ax.invert_yaxis()
ax.set_xlabel("ratio of medians to the host network (1.0 = host; same-host bars: to %s)" % base_name)
title = "Slim vs VXLAN overlay vs host network, %s, commit %s%s" % (
    d.get("date", "?"), (d.get("commit") or "?")[:10], ", quick run" if d.get("quick") else "")
if any("loaded machine" in n for n in d.get("notes", [])):
    title += "\n(measured on a loaded machine)"
ax.set_title(title, fontsize=9)
ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06 - 1.5 / fig.get_figheight() / 10),
          ncol=2, frameon=False)
fig.tight_layout()
fig.savefig(dst, format="png", dpi=110)
"##;

/// Runs the chart script with `python` on the JSON file, writing `png` (through a temporary
/// file).
pub fn chart(python: &Path, json: &Path, png: &Path) -> Result<()> {
    let tmp = png.with_extension("png.tmp");
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(CHART).arg(json).arg(&tmp);
    let f = procs::run(cmd, Duration::from_secs(120))?;
    if !f.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let hint = if f.stderr.contains("No module named") {
            " (python3-matplotlib is missing: `make deps`)"
        } else {
            ""
        };
        bail!(
            "{} could not draw the chart{hint}: {}",
            python.display(),
            procs::tail(&f.stderr, 1500)
        );
    }
    std::fs::rename(&tmp, png)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), png.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{HOST, OVERLAY, SLIM};
    use crate::workloads::metric;

    #[test]
    fn summaries() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
    }

    fn results(metric: &'static str, host: f64, overlay: f64, slim: f64) -> Results {
        let mut r = Results::default();
        r.cell(metric, "host").runs = vec![host];
        r.cell(metric, "overlay").runs = vec![overlay];
        r.cell(metric, "slim").runs = vec![slim];
        r
    }

    #[test]
    fn goals() {
        let t = metric("tcp_throughput_1");
        assert_eq!(evaluate(t, &results(t.key, 10.0, 8.0, 9.8)).1, Some(true));
        assert_eq!(evaluate(t, &results(t.key, 10.0, 8.0, 9.6)).1, Some(false));
        let c = metric("cpu_s_per_gb");
        assert_eq!(evaluate(c, &results(c.key, 1.0, 1.4, 1.02)).1, Some(true));
        assert_eq!(evaluate(c, &results(c.key, 1.0, 1.4, 1.05)).1, Some(false));
        let k = metric("conn_rate_1");
        assert_eq!(evaluate(k, &results(k.key, 30.0, 20.0, 21.0)).1, Some(true));
        assert_eq!(
            evaluate(k, &results(k.key, 30.0, 20.0, 19.0)).1,
            Some(false)
        );
        let u = metric("cpu_us_per_conn");
        assert_eq!(evaluate(u, &results(u.key, 10.0, 12.0, 15.0)).1, Some(true));
        assert_eq!(
            evaluate(u, &results(u.key, 10.0, 12.0, 15.1)).1,
            Some(false)
        );
        let n = metric("nginx_close");
        assert_eq!(evaluate(n, &results(n.key, 10.0, 6.0, 8.0)).1, Some(true));
        let mut r = results(t.key, 10.0, 8.0, 9.8);
        r.cell(t.key, "slim").state = State::Refused("busy".into());
        assert_eq!(evaluate(t, &r).1, None);
    }

    /// redis GET in the full run at 4b5b5fa: the host network's runs swung by 16% and its
    /// median fell on a fast round, so the medians said 0.95x where the rounds said 0.99x.
    #[test]
    fn goals_are_judged_by_the_rounds() {
        let g = metric("redis_get");
        let mut r = Results::default();
        r.cell(g.key, "host").runs = vec![82270.7, 75930.1, 77942.3, 84530.9, 88300.2];
        r.cell(g.key, "overlay").runs = vec![57920.7, 55975.4, 57537.4, 60386.5, 63411.5];
        r.cell(g.key, "slim").runs = vec![78431.4, 75103.3, 82135.5, 84210.5, 77851.3];
        let by_medians = ratio(&r, g.key, "slim", "host").unwrap();
        assert!((by_medians - 0.9533).abs() < 1e-3, "{by_medians}");
        let p = r.paired(g.key, "slim", "host").unwrap();
        assert!((p.median - 0.9891).abs() < 1e-3, "{p:?}");
        assert!((p.min - 77851.3 / 88300.2).abs() < 1e-9, "{p:?}");
        assert_eq!(evaluate(g, &r).1, Some(true));
        let text = table(&[g], &[HOST, OVERLAY, SLIM], &r);
        assert!(text.contains("0.95x"), "{text}");
        assert!(text.contains("0.99 [0.88..1.05]"), "{text}");
        // Runs that cannot be paired (a cell with fewer runs): the medians judge.
        r.cell(g.key, "host").runs.remove(1);
        assert_eq!(r.paired(g.key, "slim", "host"), None);
        assert_eq!(evaluate(g, &r).1, Some(false));
    }

    #[test]
    fn json_and_table() {
        let t = metric("tcp_throughput_1");
        let mut r = results(t.key, 10.0, 8.0, 9.8);
        r.cell(t.key, "host").runs = vec![10.0, 9.0, 11.0];
        let (res, goals) = results_json(&[t], &[HOST, OVERLAY, SLIM], &r);
        let slim = res.get(t.key).and_then(|w| w.get("slim")).unwrap();
        assert_eq!(slim.get("median"), Some(&Json::Num(9.8)));
        let Some(Json::Num(ratio)) = slim.get("ratio_to_host") else {
            panic!("no ratio_to_host");
        };
        assert!((ratio - 0.98).abs() < 1e-9);
        assert_eq!(
            goals.get(t.key).and_then(|g| g.get("pass")),
            Some(&Json::Bool(true))
        );
        let text = table(&[t], &[HOST, OVERLAY, SLIM], &r);
        assert!(text.contains("10.00 [9.000..11.00]"), "{text}");
        assert!(text.contains("0.98x"), "{text}");
        assert!(text.contains("pass"), "{text}");
    }

    #[test]
    fn same_host_modes_are_compared_with_the_same_host_baseline() {
        use crate::lab::{HOST_SAME_HOST, SLIM_SAME_HOST};
        let t = metric("tcp_throughput_4");
        let mut r = results(t.key, 48.0, 24.0, 47.0);
        r.cell(t.key, "slim_same_host").runs = vec![30.0];
        let modes = [HOST, OVERLAY, SLIM, SLIM_SAME_HOST];
        // Without h1 -> h1, the two-host host network is the only baseline there is.
        let text = table(&[t], &modes, &r);
        assert!(text.contains("slim_same_host/host\n"), "{text}");
        assert!(text.contains("0.62x"), "{text}");
        r.cell(t.key, "host_same_host").runs = vec![32.0];
        let modes = [HOST, OVERLAY, SLIM, SLIM_SAME_HOST, HOST_SAME_HOST];
        let text = table(&[t], &modes, &r);
        assert!(text.contains("slim_same_host/host_same_host"), "{text}");
        assert!(text.contains("0.94x"), "{text}");
        let (res, _) = results_json(&[t], &modes, &r);
        let same = res
            .get(t.key)
            .and_then(|w| w.get("slim_same_host"))
            .unwrap();
        let Some(Json::Num(ratio)) = same.get("ratio_to_host_same_host") else {
            panic!("no ratio_to_host_same_host");
        };
        assert!((ratio - 30.0 / 32.0).abs() < 1e-9);
    }
}
