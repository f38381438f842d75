//! The secure mode's own table and goal: `slim_secure` against plain Slim and the overlay, run
//! by run. The goal (issue 15, point 6): with the routers in secure mode, Slim's one-client
//! connection rate is at least 0.95x plain Slim's in the same run, and above the overlay's.

use crate::json::Json;
use crate::lab::Mode;
use crate::report::{cell_text, paired_text, ratio, write_table, Results};
use crate::workloads::Metric;

const SECURE: &str = "slim_secure";
/// The metric the goal is about.
pub const GOAL_METRIC: &str = "conn_rate_1";
/// Secure Slim against plain Slim, at least.
pub const MIN_TO_SLIM: f64 = 0.95;
pub const GOAL_TEXT: &str = "secure >= 0.95x slim and > overlay";

/// The secure mode's goal: (secure/slim, secure/overlay, pass), each judged by the median of
/// the run-by-run ratios (the ratio of medians where runs cannot be paired). None where a cell
/// is missing.
pub fn evaluate(r: &Results) -> (Option<f64>, Option<f64>, Option<bool>) {
    let to_slim = r.judged_ratio(GOAL_METRIC, SECURE, "slim");
    let to_overlay = r.judged_ratio(GOAL_METRIC, SECURE, "overlay");
    let pass = match (to_slim, to_overlay) {
        (Some(s), Some(o)) => Some(s >= MIN_TO_SLIM && o > 1.0),
        _ => None,
    };
    (to_slim, to_overlay, pass)
}

/// The table for stdout, after the main one; empty without mode slim_secure.
pub fn table(metrics: &[&Metric], modes: &[Mode], r: &Results) -> String {
    if !modes.iter().any(|m| m.key == SECURE) {
        return String::new();
    }
    let mut out = String::from(
        "\nSecure mode (routers --secure, host sockets restricted by slim_kern); ratios run by \
         run, median [min..max]:\n",
    );
    let header: Vec<String> = [
        "workload",
        "unit",
        "slim_secure",
        "secure/host",
        "secure/slim",
        "secure/overlay",
        "secure/slim (medians)",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|m| {
            vec![
                m.title.to_string(),
                m.unit.to_string(),
                cell_text(r.get(m.key, SECURE)),
                paired_text(r, m.key, SECURE, "host"),
                paired_text(r, m.key, SECURE, "slim"),
                paired_text(r, m.key, SECURE, "overlay"),
                ratio(r, m.key, SECURE, "slim")
                    .map(|x| format!("{x:.2}x"))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    write_table(&mut out, &header, &rows, &[0, 1]);
    if metrics.iter().any(|m| m.key == GOAL_METRIC) {
        let (to_slim, to_overlay, pass) = evaluate(r);
        let f = |x: Option<f64>| x.map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "goal, connections/s with 1 client: {GOAL_TEXT}: secure/slim {}, secure/overlay {}: \
             {}\n",
            f(to_slim),
            f(to_overlay),
            match pass {
                Some(true) => "pass",
                Some(false) => "MISS",
                None => "-",
            }
        ));
    }
    out
}

/// `goals.conn_rate_1_slim_secure` in the JSON, when the run had the cells for it.
pub fn add_goals(goals: &mut Json, modes: &[Mode], r: &Results) {
    if !modes.iter().any(|m| m.key == SECURE) || r.get(GOAL_METRIC, SECURE).is_none() {
        return;
    }
    let (to_slim, to_overlay, pass) = evaluate(r);
    goals.set(
        &format!("{GOAL_METRIC}_{SECURE}"),
        Json::obj()
            .with("goal", GOAL_TEXT)
            .with("judged_ratio_to_slim", to_slim)
            .with("judged_ratio_to_overlay", to_overlay)
            .with(
                "secure_ratio_to_slim",
                ratio(r, GOAL_METRIC, SECURE, "slim"),
            )
            .with(
                "secure_ratio_to_overlay",
                ratio(r, GOAL_METRIC, SECURE, "overlay"),
            )
            .with("pass", pass),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{HOST, OVERLAY, SLIM, SLIM_SECURE};
    use crate::workloads::metric;

    fn results(overlay: [f64; 3], slim: [f64; 3], secure: [f64; 3]) -> Results {
        let mut r = Results::default();
        r.cell(GOAL_METRIC, "host").runs = vec![1000.0, 1000.0, 1000.0];
        r.cell(GOAL_METRIC, "overlay").runs = overlay.to_vec();
        r.cell(GOAL_METRIC, "slim").runs = slim.to_vec();
        r.cell(GOAL_METRIC, SECURE).runs = secure.to_vec();
        r
    }

    #[test]
    fn the_goal_is_judged_round_by_round() {
        // Rounds drift together: 0.96 of slim in each round, above the overlay in each.
        let r = results(
            [700.0, 900.0, 800.0],
            [1000.0, 1200.0, 800.0],
            [960.0, 1152.0, 768.0],
        );
        let (s, o, pass) = evaluate(&r);
        assert!((s.unwrap() - 0.96).abs() < 1e-9, "{s:?}");
        assert!(o.unwrap() > 1.0);
        assert_eq!(pass, Some(true));
        // 0.90x slim: missed, although above the overlay.
        let r = results(
            [700.0, 700.0, 700.0],
            [1000.0, 1000.0, 1000.0],
            [900.0, 900.0, 900.0],
        );
        assert_eq!(evaluate(&r).2, Some(false));
        // At plain Slim's rate but not above the overlay: missed.
        let r = results(
            [1000.0, 1000.0, 1000.0],
            [1000.0, 1000.0, 1000.0],
            [1000.0, 1000.0, 1000.0],
        );
        assert_eq!(evaluate(&r).2, Some(false));
    }

    #[test]
    fn table_and_json() {
        let r = results(
            [700.0, 700.0, 700.0],
            [1000.0, 1000.0, 1000.0],
            [500.0, 600.0, 400.0],
        );
        let modes = [HOST, OVERLAY, SLIM, SLIM_SECURE];
        let m = metric(GOAL_METRIC);
        let text = table(&[m], &modes, &r);
        assert!(text.contains("0.50 [0.40..0.60]"), "{text}");
        assert!(text.contains("MISS"), "{text}");
        assert_eq!(table(&[m], &[HOST, OVERLAY, SLIM], &r), "");
        let mut goals = Json::obj();
        add_goals(&mut goals, &modes, &r);
        let g = goals.get("conn_rate_1_slim_secure").unwrap();
        assert_eq!(g.get("pass"), Some(&Json::Bool(false)));
        let Some(Json::Num(x)) = g.get("judged_ratio_to_slim") else {
            panic!("no judged_ratio_to_slim");
        };
        assert!((x - 0.5).abs() < 1e-9);
        let (res, _) = crate::report::results_json(&[m], &modes, &r);
        let cell = res.get(GOAL_METRIC).and_then(|w| w.get(SECURE)).unwrap();
        assert!(
            cell.get("paired_ratio_to_slim").is_some(),
            "{}",
            res.pretty()
        );
        assert!(cell.get("ratio_to_overlay").is_some(), "{}", res.pretty());
    }
}
