//! Counters and histograms for `GET /metrics`, in the Prometheus text format. Labels
//! are routes, channels, providers, outcomes and kinds: never a phone, an e-mail, a chat
//! id or a code.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

/// Seconds; fine at the low end for store calls, wide enough for delivery latency.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0,
];

/// Every series otpd exports, with its help text; a name not listed here is a bug.
const FAMILIES: &[(&str, &str, &str)] = &[
    (
        "otpd_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
    ),
    (
        "otpd_sends_total",
        "counter",
        "Code creations by channel and outcome (accepted, limited, invalid).",
    ),
    (
        "otpd_checks_total",
        "counter",
        "Code checks by channel and outcome (ok, invalid_password, attempts_exceeded).",
    ),
    (
        "otpd_limit_rejections_total",
        "counter",
        "Requests refused by a limit, by channel and kind (ip, target, failed_lookup).",
    ),
    (
        "otpd_abuse_refusals_total",
        "counter",
        "Sends refused to protect the budget or an account, by channel and reason \
         (invalid_number, premium_rate, shared_cost, country_denied, country_not_allowed, \
         cooldown, daily_cap, daily_cap_country, failure_budget, ...).",
    ),
    (
        "otpd_pumping_suspected_total",
        "counter",
        "Sends the pumping detector found suspect, by channel, scope (country, ip) and mode (record, block).",
    ),
    (
        "otpd_deliveries_total",
        "counter",
        "Delivery jobs ended, by channel, provider and final state.",
    ),
    (
        "otpd_delivery_latency_seconds",
        "histogram",
        "From a code's creation to its message being sent, by channel.",
    ),
    (
        "otpd_delivery_queue_depth",
        "gauge",
        "Delivery jobs waiting or being sent, by channel.",
    ),
    (
        "otpd_delivery_oldest_job_age_seconds",
        "gauge",
        "Age of the oldest unfinished delivery job, by channel.",
    ),
    (
        "otpd_store_operation_seconds",
        "histogram",
        "Store operation latency, by operation.",
    ),
    (
        "otpd_target_lookup_failures_total",
        "counter",
        "Wrong or expired codes given to /target (a rise is someone guessing).",
    ),
];

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Per family, its series. Found by comparing labels in place, so that counting a
/// series that exists allocates nothing: every request counts two or three.
#[derive(Default)]
struct Series {
    counters: BTreeMap<&'static str, Vec<(Labels, u64)>>,
    histograms: BTreeMap<&'static str, Vec<(Labels, Histogram)>>,
}

/// The value of the series `pairs` names, made (zero) if new.
fn series<'a, T: Default>(
    family: &'a mut Vec<(Labels, T)>,
    pairs: &[(&'static str, &str)],
) -> &'a mut T {
    let same = |labels: &Labels| {
        labels.len() == pairs.len()
            && labels
                .iter()
                .zip(pairs)
                .all(|((k, v), (pk, pv))| k == pk && v == pv)
    };
    let index = match family.iter().position(|(labels, _)| same(labels)) {
        Some(i) => i,
        None => {
            family.push((labels(pairs), T::default()));
            family.len() - 1
        }
    };
    &mut family[index].1
}

#[derive(Default)]
pub struct Metrics {
    series: Mutex<Series>,
}

/// A gauge value computed at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub labels: Labels,
    pub value: f64,
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

impl Metrics {
    pub fn count(&self, name: &'static str, pairs: &[(&'static str, &str)]) {
        self.add(name, pairs, 1);
    }

    pub fn add(&self, name: &'static str, pairs: &[(&'static str, &str)], n: u64) {
        if let Ok(mut all) = self.series.lock() {
            *series(all.counters.entry(name).or_default(), pairs) += n;
        }
    }

    pub fn observe(&self, name: &'static str, pairs: &[(&'static str, &str)], took: Duration) {
        let secs = took.as_secs_f64();
        if let Ok(mut all) = self.series.lock() {
            let h = series(all.histograms.entry(name).or_default(), pairs);
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.buckets[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    /// The exposition: every family's help and type, then its series.
    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::new();
        let Ok(series) = self.series.lock() else {
            return out;
        };
        for (family, kind, help) in FAMILIES {
            let _ = writeln!(out, "# HELP {family} {help}");
            let _ = writeln!(out, "# TYPE {family} {kind}");
            let name = *family;
            let mut counters: Vec<_> = series.counters.get(name).into_iter().flatten().collect();
            counters.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, value) in counters {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
            let mut histograms: Vec<_> =
                series.histograms.get(name).into_iter().flatten().collect();
            histograms.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, h) in histograms {
                for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                    let le = format!("{bound}");
                    let _ = writeln!(out, "{name}_bucket{} {n}", render_labels(labels, Some(&le)));
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    render_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", render_labels(labels, None), h.sum);
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    render_labels(labels, None),
                    h.count
                );
            }
            for gauge in gauges.iter().filter(|g| g.name == *family) {
                let _ = writeln!(
                    out,
                    "{}{} {}",
                    gauge.name,
                    render_labels(&gauge.labels, None),
                    gauge.value
                );
            }
        }
        out
    }
}

fn render_labels(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_histograms_and_gauges_render_in_the_text_format() {
        let m = Metrics::default();
        m.count(
            "otpd_sends_total",
            &[("channel", "sms"), ("outcome", "accepted")],
        );
        m.count(
            "otpd_sends_total",
            &[("channel", "sms"), ("outcome", "accepted")],
        );
        m.observe(
            "otpd_store_operation_seconds",
            &[("operation", "create_code")],
            Duration::from_millis(3),
        );
        let text = m.render(&[Gauge {
            name: "otpd_delivery_queue_depth",
            labels: vec![("channel", "email".into())],
            value: 4.0,
        }]);
        assert!(text.contains("otpd_sends_total{channel=\"sms\",outcome=\"accepted\"} 2\n"));
        assert!(text.contains(
            "otpd_store_operation_seconds_bucket{operation=\"create_code\",le=\"0.005\"} 1\n"
        ));
        assert!(text.contains(
            "otpd_store_operation_seconds_bucket{operation=\"create_code\",le=\"0.0025\"} 0\n"
        ));
        assert!(text.contains("otpd_store_operation_seconds_count{operation=\"create_code\"} 1\n"));
        assert!(text.contains("otpd_delivery_queue_depth{channel=\"email\"} 4\n"));
        assert!(text.contains("# TYPE otpd_delivery_latency_seconds histogram\n"));
    }
}
