//! `--stages`: each stage's median and mean over a run's `Server-Timing`
//! answers, in the order Switchyard reports them, and `outside`: the
//! client's time less Switchyard's `total` (the client, the kernel's
//! loopback and hyper reading the request's head and writing the answer).

use serde_json::{Value, json};

/// `samples`: each request's client time (ms) and `Server-Timing` value.
pub(crate) fn summary(samples: &[(f64, &str)]) -> anyhow::Result<Value> {
    let mut order: Vec<String> = Vec::new();
    let mut values: Vec<Vec<f64>> = Vec::new();
    let mut outside = Vec::new();
    for (client_ms, timing) in samples {
        anyhow::ensure!(
            !timing.is_empty(),
            "an answer without Server-Timing: is this Switchyard, with x-switchyard-timing?"
        );
        for entry in timing.split(',') {
            let (name, dur) = entry
                .trim()
                .split_once(";dur=")
                .ok_or_else(|| anyhow::anyhow!("unreadable Server-Timing entry '{entry}'"))?;
            let dur: f64 = dur.parse()?;
            let i = match order.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    order.push(name.to_owned());
                    values.push(Vec::new());
                    order.len() - 1
                }
            };
            values[i].push(dur);
            if name == "total" {
                outside.push(client_ms - dur);
            }
        }
    }
    order.push("outside".to_owned());
    values.push(outside);
    let mut out = Vec::new();
    for (name, mut v) in order.into_iter().zip(values) {
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len().max(1) as f64;
        out.push(json!({
            "stage": name,
            "p50_ms": crate::round(crate::pct(&v, 0.5)),
            "mean_ms": crate::round(mean),
        }));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_keep_their_order_and_outside_is_the_clients_time_less_the_total() {
        let s = summary(&[
            (1.5, "auth;dur=0.010, queue;dur=0.400, total;dur=1.000"),
            (2.0, "auth;dur=0.030, queue;dur=0.600, total;dur=1.200"),
            (1.6, "auth;dur=0.020, queue;dur=0.500, total;dur=1.100"),
        ])
        .unwrap();
        let names: Vec<&str> = s
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["stage"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["auth", "queue", "total", "outside"]);
        assert_eq!(s[1]["p50_ms"], 0.5);
        assert_eq!(s[0]["mean_ms"], 0.02);
        assert_eq!(s[3]["p50_ms"], 0.5);
    }

    #[test]
    fn an_answer_without_timings_is_an_error() {
        assert!(summary(&[(1.0, "")]).is_err());
        assert!(summary(&[(1.0, "auth=3")]).is_err());
    }
}
