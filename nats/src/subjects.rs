//! Names of every subject, bucket and stream rouse uses.
//!
//! Both sides build names here so a proxy and a controller configured with the
//! same prefix can never disagree on where a message goes.

/// KV bucket holding each service's endpoint set, keyed by service name.
pub const ENDPOINTS_BUCKET: &str = "rouse-endpoints";
/// Controllers' leases (leader election), one key per lease name.
pub const LEASES_BUCKET: &str = "rouse-leases";
/// Service definitions (the catalog), keyed by service name.
pub const SERVICES_BUCKET: &str = "rouse-services";
/// Replica counts fixed by an operator (`rouse scale --pin`), keyed by service.
pub const PINS_BUCKET: &str = "rouse-pins";
/// Removals a leading controller has begun and not finished (the
/// definition it drains), keyed by service, for a leader that takes over.
pub const REMOVALS_BUCKET: &str = "rouse-removals";
/// JetStream stream keeping `scaled` events.
pub const EVENTS_STREAM: &str = "ROUSE_EVENTS";

/// Subject builder for one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every subject starts with (`nats.prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn wake(&self, service: &str) -> String {
        format!("{}.wake.{service}", self.prefix)
    }

    pub fn load(&self, service: &str) -> String {
        format!("{}.load.{service}", self.prefix)
    }

    pub fn scaled(&self, service: &str) -> String {
        format!("{}.scaled.{service}", self.prefix)
    }

    pub fn all_wakes(&self) -> String {
        format!("{}.wake.*", self.prefix)
    }

    pub fn all_loads(&self) -> String {
        format!("{}.load.*", self.prefix)
    }

    /// Where proxy `proxy` sends its periodic report (see
    /// [`crate::messages::Report`]); the id is made a single subject token.
    pub fn report(&self, proxy: &str) -> String {
        format!("{}.report.{}", self.prefix, subject_token(proxy))
    }

    pub fn all_reports(&self) -> String {
        format!("{}.report.*", self.prefix)
    }

    /// The service named by the last token of a wake/load/scaled subject.
    pub fn service_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix('.')?;
        let (_kind, service) = rest.split_once('.')?;
        (!service.is_empty() && !service.contains('.')).then_some(service)
    }
}

/// `name` as one subject token: characters NATS gives a meaning to (`.`,
/// `*`, `>`, whitespace) become `_`; an empty name becomes `_`.
pub fn subject_token(name: &str) -> String {
    if name.is_empty() {
        return "_".into();
    }
    name.chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_subjects() {
        let s = Subjects::new("rouse");
        assert_eq!(s.wake("echo"), "rouse.wake.echo");
        assert_eq!(s.load("echo"), "rouse.load.echo");
        assert_eq!(s.service_of("rouse.load.echo"), Some("echo"));
        assert_eq!(s.service_of("other.load.echo"), None);
        assert_eq!(s.service_of("rouse.load."), None);
    }

    #[test]
    fn a_proxy_id_is_one_token_of_its_report_subject() {
        let s = Subjects::new("rouse");
        assert_eq!(s.report("web-1"), "rouse.report.web-1");
        assert_eq!(
            s.report("host.example.com-42"),
            "rouse.report.host_example_com-42"
        );
        assert_eq!(s.report("a b*>"), "rouse.report.a_b__");
        assert_eq!(s.report(""), "rouse.report._");
        assert_eq!(s.all_reports(), "rouse.report.*");
    }
}
