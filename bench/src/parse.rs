//! Reading the numbers out of each tool's output.

/// The number that follows the first `key` in `text` (spaces, tabs, `:` and `=` skipped).
pub fn number_after(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    let rest = text[at..].trim_start_matches([' ', '\t', ':', '=', '"']);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `bits_per_second` and `bytes` of the `sum_received` object of `iperf3 --json`.
pub fn iperf3_received(json: &str) -> Option<(f64, f64)> {
    let at = json.find("\"sum_received\"")?;
    let obj = &json[at..];
    let obj = &obj[..obj.find('}').unwrap_or(obj.len())];
    Some((
        number_after(obj, "\"bits_per_second\"")?,
        number_after(obj, "\"bytes\"")?,
    ))
}

/// iperf3's own error in its JSON report, if any (`"error": "..."`).
pub fn iperf3_error(json: &str) -> Option<String> {
    let at = json.find("\"error\"")?;
    let rest = &json[at + 7..];
    let start = rest.find('"')? + 1;
    let end = start + rest[start..].find('"')?;
    Some(rest[start..end].to_string())
}

/// `key=value` fields of the line starting with `tag ` (slim-testprog's `RR ...`, `CONN ...`).
pub fn fields(out: &str, tag: &str, key: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with(&format!("{tag} ")))?;
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

/// wrk: `Requests/sec:  80569.20`.
pub fn wrk_rate(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// wrk's complaints (`Socket errors: connect 0, read 3, ...`, `Non-2xx or 3xx responses: 5`).
pub fn wrk_problems(out: &str) -> Option<String> {
    let p: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Socket errors") || l.starts_with("Non-2xx"))
        .collect();
    (!p.is_empty()).then(|| p.join("; "))
}

/// memaslap (Debian's memcaslap): `Run time: 1.0s Ops: 116473 TPS: 116462 Net_rate: ...`.
pub fn memaslap_tps(out: &str) -> Option<f64> {
    let line = out.lines().rev().find(|l| l.contains("TPS:"))?;
    number_after(line, "TPS:")
}

/// redis-benchmark -q: `SET: 88888.89 requests per second, p50=...` (progress lines are
/// separated by `\r`; the result is the last).
pub fn redis_rps(out: &str, test: &str) -> Option<f64> {
    out.split(['\r', '\n'])
        .filter_map(|l| l.trim().strip_prefix(&format!("{test}: ")))
        .rfind(|l| l.contains("requests per second"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}

/// callgrind's output file: `totals: N` (or `summary: N`), the first event (Ir).
pub fn callgrind_total(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf3() {
        let j = r#"{"end": {"streams": [{"receiver": {"bytes": 5, "bits_per_second": 1}}],
            "sum_sent": {"bytes": 2400, "bits_per_second": 19.5e9},
            "sum_received":	{
                "start":	0,
                "end":	1.000628,
                "seconds":	1.000628,
                "bytes":	2334654464,
                "bits_per_second":	18665513769.352844,
                "sender":	true
            }}}"#;
        assert_eq!(iperf3_received(j), Some((18665513769.352844, 2334654464.0)));
        assert_eq!(iperf3_error(j), None);
        assert_eq!(
            iperf3_error(r#"{"start": {}, "error": "unable to connect to server"}"#).as_deref(),
            Some("unable to connect to server")
        );
    }

    #[test]
    fn testprog_lines() {
        let out =
            "noise\nRR transactions=18083 secs=1.000 rate=18082.7 p50_us=55.58 p99_us=73.02\n";
        assert_eq!(fields(out, "RR", "rate"), Some(18082.7));
        assert_eq!(fields(out, "RR", "p99_us"), Some(73.02));
        let out = "CONN count=15288 errors=0 secs=1.000 rate=15287.8\n";
        assert_eq!(fields(out, "CONN", "errors"), Some(0.0));
        assert_eq!(fields(out, "CONN", "count"), Some(15288.0));
        assert_eq!(fields(out, "RR", "rate"), None);
    }

    #[test]
    fn wrk() {
        let out = "  88586 requests in 1.10s, 106.79MB read\nRequests/sec:  80569.20\nTransfer/sec:     97.12MB\n";
        assert_eq!(wrk_rate(out), Some(80569.20));
        assert_eq!(wrk_problems(out), None);
        let bad = "  Socket errors: connect 0, read 2, write 0, timeout 0\nRequests/sec: 5.0\n";
        assert_eq!(
            wrk_problems(bad).as_deref(),
            Some("Socket errors: connect 0, read 2, write 0, timeout 0")
        );
    }

    #[test]
    fn memaslap() {
        let out = "cmd_get: 104819\n\nRun time: 1.0s Ops: 116473 TPS: 116462 Net_rate: 130.3M/s\n";
        assert_eq!(memaslap_tps(out), Some(116462.0));
    }

    #[test]
    fn redis() {
        let out = " SET: rps=0.0 (overall: -nan) avg_msec=-nan (overall: -nan)\r SET: 82644.62 requests per second, p50=0.207 msec\n GET: rps=44753.0 (overall: 81992.7)\r GET: 81300.81 requests per second, p50=0.207 msec\n\n";
        assert_eq!(redis_rps(out, "SET"), Some(82644.62));
        assert_eq!(redis_rps(out, "GET"), Some(81300.81));
        assert_eq!(redis_rps(out, "LPUSH"), None);
    }

    #[test]
    fn callgrind() {
        let out = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nsummary: 1234\n\nfl=(1) x\ntotals: 5678\n";
        assert_eq!(callgrind_total(out), Some(1234.0));
        assert_eq!(callgrind_total("totals: 99\n"), Some(99.0));
    }

    #[test]
    fn numbers() {
        assert_eq!(number_after("a: 1.5e3 b", "a"), Some(1500.0));
        assert_eq!(number_after("x=-2,", "x"), Some(-2.0));
        assert_eq!(number_after("nothing", "a:"), None);
    }
}
