//! The admin listener's `/metrics`: read over HTTP and parsed (the
//! Prometheus text exposition), polled until a condition holds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::raw_exchange;

/// One sample line of the text exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` answer.
#[derive(Debug)]
pub struct Exposition {
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the Prometheus text format: `#` lines are comments (HELP and
    /// TYPE), every other non-empty line is one sample.
    pub fn parse(text: &str) -> Exposition {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|why| panic!("bad sample line {line:?}: {why}")))
            .collect();
        Exposition { samples }
    }

    /// The samples named `name` whose labels include `labels`.
    pub fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
    }

    /// The value of the one sample named `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .matching(name, labels)
            .filter(|sample| sample.labels.len() == labels.len())
            .collect();
        assert!(found.len() <= 1, "{name}{labels:?} appears {} times", found.len());
        found.first().map(|sample| sample.value)
    }

    /// Like [`Exposition::value`], 0 when there is no such sample (a
    /// counter no event has touched yet).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// Like [`Exposition::value`], failing the test when there is no such sample.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{}", self.names(name)))
    }

    /// The sum over the samples named `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|sample| sample.value).sum()
    }

    pub fn count(&self, name: &str) -> usize {
        self.matching(name, &[]).count()
    }

    /// Every sample of `name`, for failure messages.
    pub fn names(&self, name: &str) -> String {
        self.matching(name, &[])
            .map(|sample| format!("  {}{:?} {}\n", sample.name, sample.labels, sample.value))
            .collect()
    }
}

pub fn parse_sample(line: &str) -> Result<Sample, String> {
    let (series, value) = line.rsplit_once(' ').ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        value => value.parse::<f64>().map_err(|e| format!("value {value:?}: {e}"))?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Ok(Sample {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        });
    };
    let body = rest.strip_suffix('}').ok_or("labels not closed")?;
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if chars.next() != Some('"') {
            return Err(format!("label {key:?} without a quoted value"));
        }
        let mut label = String::new();
        loop {
            match chars.next().ok_or("value not closed")? {
                '"' => break,
                '\\' => match chars.next().ok_or("escape at the end")? {
                    'n' => label.push('\n'),
                    other => label.push(other),
                },
                c => label.push(c),
            }
        }
        labels.insert(key, label);
        match chars.next() {
            Some(',') | None => {}
            Some(c) => return Err(format!("unexpected {c:?} after a label")),
        }
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `GET /metrics` on the admin listener at `admin`, which must answer 200.
pub async fn scrape(admin: SocketAddr) -> Exposition {
    Exposition::parse(&scrape_text(admin).await)
}

/// The text of [`scrape`], as served.
pub async fn scrape_text(admin: SocketAddr) -> String {
    let response = raw_exchange(
        admin,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200, "/metrics: {}", response.body_text());
    response.body_text()
}

/// Scrapes every 20 ms until `ready` holds (tunnels record their metrics
/// as they end, a moment after the clients saw them close), for at most
/// `limit`; a failure quotes the `wsgate_` samples and `context()`.
pub async fn scrape_until(
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    ready: impl Fn(&Exposition) -> bool,
    context: impl Fn() -> String,
) -> Exposition {
    let deadline = Instant::now() + limit;
    loop {
        let text = scrape_text(admin).await;
        let exposition = Exposition::parse(&text);
        if ready(&exposition) {
            return exposition;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n--- metrics:\n{}\n{}",
            text.lines()
                .filter(|l| l.starts_with("wsgate_"))
                .collect::<Vec<_>>()
                .join("\n"),
            context()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
