//! How an [`Entry`] reads as a line: JSON (one object, `serde_json`) or
//! nginx's `combined` format with rouse's own fields after it, as
//! `key=value` pairs that log tools split on their own.
//!
//! The path leaves out the query string unless `proxy.access_log.query` is
//! on: queries often carry tokens that do not belong in a log file.

use std::borrow::Cow;
use std::io::Write;

use http::header::HeaderValue;
use serde::Serialize;
use time::macros::format_description;
use time::OffsetDateTime;

use super::Entry;

/// How lines are rendered.
#[derive(Debug, Clone, Copy)]
pub struct Format {
    pub kind: rouse_nats::config::AccessLogFormat,
    pub query: bool,
}

/// The JSON object of one line.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    service: &'a str,
    method: &'a str,
    host: Cow<'a, str>,
    path: &'a str,
    status: u16,
    duration_ms: f64,
    bytes_sent: u64,
    bytes_received: u64,
    upstream: Option<&'a str>,
    cold_start_wait_ms: f64,
    client: String,
    protocol: &'static str,
    user_agent: Option<Cow<'a, str>>,
    referer: Option<Cow<'a, str>>,
}

impl Format {
    /// Appends `entry` and a newline to `out`.
    pub fn write(&self, entry: &Entry, out: &mut Vec<u8>) {
        match self.kind {
            rouse_nats::config::AccessLogFormat::Json => self.json(entry, out),
            rouse_nats::config::AccessLogFormat::Combined => self.combined(entry, out),
        }
        out.push(b'\n');
    }

    fn path<'e>(&self, entry: &'e Entry) -> &'e str {
        let uri = &entry.uri;
        match (self.query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => uri.path(),
        }
    }

    fn json(&self, entry: &Entry, out: &mut Vec<u8>) {
        let line = JsonLine {
            time: rfc3339(entry),
            service: entry.service.as_deref().unwrap_or("-"),
            method: entry.method.as_str(),
            host: entry.host.as_ref().map_or(Cow::Borrowed("-"), lossy),
            path: self.path(entry),
            status: entry.status,
            duration_ms: millis(entry.duration),
            bytes_sent: entry.bytes_sent,
            bytes_received: entry.received(),
            upstream: entry.upstream.as_deref(),
            cold_start_wait_ms: millis(entry.cold_start_wait),
            client: entry.client.to_string(),
            protocol: protocol(entry.version),
            user_agent: entry.user_agent.as_ref().map(lossy),
            referer: entry.referer.as_ref().map(lossy),
        };
        // Writing to a Vec fails only for a value that cannot be JSON;
        // every field here can.
        if serde_json::to_writer(&mut *out, &line).is_err() {
            out.extend_from_slice(b"{}");
        }
    }

    /// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent
    /// "$http_referer" "$http_user_agent"`, then rouse's fields.
    fn combined(&self, entry: &Entry, out: &mut Vec<u8>) {
        let _ = write!(out, "{} - - [{}] \"", entry.client, clf_time(entry));
        let request = format!(
            "{} {} {}",
            entry.method,
            self.path(entry),
            protocol(entry.version)
        );
        escape(request.as_bytes(), out);
        let _ = write!(out, "\" {} {} \"", entry.status, entry.bytes_sent);
        escape(header_bytes(entry.referer.as_ref()), out);
        out.extend_from_slice(b"\" \"");
        escape(header_bytes(entry.user_agent.as_ref()), out);
        out.push(b'"');
        let _ = write!(
            out,
            " service={} host=\"",
            entry.service.as_deref().unwrap_or("-")
        );
        escape(header_bytes(entry.host.as_ref()), out);
        let _ = write!(
            out,
            "\" upstream={} duration_ms={:.3} cold_start_wait_ms={:.3} bytes_received={}",
            entry.upstream.as_deref().unwrap_or("-"),
            millis(entry.duration),
            millis(entry.cold_start_wait),
            entry.received(),
        );
    }
}

fn millis(duration: std::time::Duration) -> f64 {
    // Microsecond precision: enough for a log, and short to read.
    (duration.as_micros() as f64) / 1000.0
}

fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn lossy(value: &HeaderValue) -> Cow<'_, str> {
    String::from_utf8_lossy(value.as_bytes())
}

fn header_bytes(value: Option<&HeaderValue>) -> &[u8] {
    value.map_or(b"-", HeaderValue::as_bytes)
}

fn rfc3339(entry: &Entry) -> String {
    let time = OffsetDateTime::from(entry.time);
    let description =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    time.format(&description).unwrap_or_default()
}

/// nginx's `$time_local`, in UTC.
fn clf_time(entry: &Entry) -> String {
    let time = OffsetDateTime::from(entry.time);
    let description =
        format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");
    time.format(&description).unwrap_or_default()
}

/// As nginx escapes a quoted field: `"`, `\` and bytes outside printable
/// ASCII become `\xHH`, so a line can always be split on its quotes.
fn escape(bytes: &[u8], out: &mut Vec<u8>) {
    for &byte in bytes {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            let _ = write!(out, "\\x{byte:02X}");
        } else {
            out.push(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use http::{Method, Version};
    use rouse_nats::config::AccessLogFormat;

    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            service: Some("api".into()),
            method: Method::POST,
            host: Some(HeaderValue::from_static("api.test")),
            uri: "/a/b?token=secret".parse().expect("uri"),
            version: Version::HTTP_11,
            client: IpAddr::from([127, 0, 0, 1]),
            user_agent: Some(HeaderValue::from_static("curl \"8\"")),
            referer: None,
            status: 201,
            duration: Duration::from_micros(12_345),
            bytes_sent: 10,
            bytes_received: Arc::new(AtomicU64::new(3)),
            upstream: Some("api-1".into()),
            cold_start_wait: Duration::ZERO,
        }
    }

    fn line(kind: AccessLogFormat, query: bool) -> String {
        let mut out = Vec::new();
        Format { kind, query }.write(&entry(), &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn json_has_every_field_and_no_query_by_default() {
        let text = line(AccessLogFormat::Json, false);
        assert!(text.ends_with('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["service"], "api");
        assert_eq!(value["path"], "/a/b");
        assert_eq!(value["status"], 201);
        assert_eq!(value["duration_ms"], 12.345);
        assert_eq!(value["bytes_received"], 3);
        assert_eq!(value["upstream"], "api-1");
        assert_eq!(value["cold_start_wait_ms"], 0.0);
        assert_eq!(value["protocol"], "HTTP/1.1");
        assert_eq!(value["user_agent"], "curl \"8\"");
        let text = line(AccessLogFormat::Json, true);
        assert!(text.contains("\"path\":\"/a/b?token=secret\""), "{text}");
    }

    #[test]
    fn combined_is_nginx_then_rouse_fields() {
        let text = line(AccessLogFormat::Combined, false);
        assert_eq!(
            text,
            "127.0.0.1 - - [14/Nov/2023:22:13:20 +0000] \"POST /a/b HTTP/1.1\" 201 10 \"-\" \
             \"curl \\x228\\x22\" service=api host=\"api.test\" upstream=api-1 \
             duration_ms=12.345 cold_start_wait_ms=0.000 bytes_received=3\n"
        );
    }
}
