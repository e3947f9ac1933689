//! Prometheus text format parsing, just enough for assertions.

use std::collections::BTreeMap;

/// Every series of metric `name` in `text`, as (labels, value).
pub fn parse_series(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        if &line[..name_end] != name {
            continue;
        }
        let rest = &line[name_end..];
        let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
            match parse_labels(body) {
                Some(parsed) => parsed,
                None => continue,
            }
        } else {
            (BTreeMap::new(), rest)
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        out.push((labels, value));
    }
    out
}

/// The sum of every series of `name` whose labels include all of `labels` (a subset match), or
/// `None` when no series matches.
pub fn parse_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_series(text, name)
        .into_iter()
        .filter(|(have, _)| {
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

/// Parses `a="x",b="y"} rest` into the labels and `rest`.
fn parse_labels(s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    let mut chars = s.char_indices().peekable();
    loop {
        // Skip separators.
        while let Some(&(_, c)) = chars.peek() {
            if c == ',' || c.is_whitespace() {
                chars.next();
            } else {
                break;
            }
        }
        let (start, c) = chars.next()?;
        if c == '}' {
            return Some((labels, &s[start + 1..]));
        }
        let mut key = String::from(c);
        loop {
            let (_, c) = chars.next()?;
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            let (_, c) = chars.next()?;
            match c {
                '"' => break,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                other => value.push(other),
            }
        }
        labels.insert(key.trim().to_string(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP spindle_requests_total Requests.
# TYPE spindle_requests_total counter
spindle_requests_total{listener="edge",code="200"} 12
spindle_requests_total{listener="edge",code="503"} 3
spindle_requests_total{listener="other",code="200"} 1 1700000000000
spindle_endpoint_ejected{cluster="api",endpoint="127.0.0.1:9001"} 1
spindle_up 1
weird{path="a \"quoted\" \\ value, with } brace"} 2.5
spindle_request_duration_seconds_bucket{listener="edge",le="+Inf"} 15
"#;

    #[test]
    fn sums_subset_matches() {
        assert_eq!(
            parse_metric(TEXT, "spindle_requests_total", &[("listener", "edge")]),
            Some(15.0)
        );
        assert_eq!(
            parse_metric(TEXT, "spindle_requests_total", &[]),
            Some(16.0)
        );
        assert_eq!(
            parse_metric(
                TEXT,
                "spindle_requests_total",
                &[("listener", "edge"), ("code", "503")]
            ),
            Some(3.0)
        );
        assert_eq!(
            parse_metric(TEXT, "spindle_requests_total", &[("code", "404")]),
            None
        );
        assert_eq!(parse_metric(TEXT, "spindle_up", &[]), Some(1.0));
        assert_eq!(parse_metric(TEXT, "spindle_missing", &[]), None);
    }

    #[test]
    fn name_must_match_exactly_and_escapes_are_read() {
        assert_eq!(parse_metric(TEXT, "spindle_requests", &[]), None);
        assert_eq!(
            parse_metric(
                TEXT,
                "weird",
                &[("path", "a \"quoted\" \\ value, with } brace")]
            ),
            Some(2.5)
        );
        assert_eq!(
            parse_metric(
                TEXT,
                "spindle_endpoint_ejected",
                &[("endpoint", "127.0.0.1:9001")]
            ),
            Some(1.0)
        );
        let series = parse_series(TEXT, "spindle_request_duration_seconds_bucket");
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].0["le"], "+Inf");
    }
}
