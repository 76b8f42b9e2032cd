//! `--wait`: polling the controller's status until a service gets where a
//! command put it, with progress on stderr (stdout stays the result's).
//!
//! On a terminal a spinner shows the latest state; elsewhere (a pipe, CI)
//! each new state is one line, so a log reads as the story of the wait.
//! The controller being unreachable for a while is a state like any other:
//! it may be restarting. Only the deadline ends the wait (exit code 4).

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::connect::Controller;
use crate::exit::{fail, Code, Outcome};
use crate::status::{self, Row};

/// Time between two looks at the controller.
const POLL: Duration = Duration::from_millis(300);

/// What a look found: done (with the final word), or not yet (with why).
pub enum Step {
    Done(String),
    Waiting(String),
}

/// A new line for a detail that changed (an error naming another port)
/// at most this often; a new state prints at once.
const DETAIL_EVERY: Duration = Duration::from_secs(10);

/// Lines or a spinner on stderr.
struct Progress {
    bar: Option<ProgressBar>,
    last: String,
    printed: Option<(String, Instant)>,
}

impl Progress {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed:>3} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            last: String::new(),
            printed: None,
        }
    }

    /// `message` is the state, then optionally `; ` and details.
    fn show(&mut self, message: &str) {
        if message == self.last {
            return;
        }
        self.last = message.to_string();
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
            return;
        }
        let state = message.split("; ").next().unwrap_or(message);
        let due = match &self.printed {
            Some((printed, at)) => printed != state || at.elapsed() >= DETAIL_EVERY,
            None => true,
        };
        if due {
            eprintln!("{message}");
            self.printed = Some((state.to_string(), Instant::now()));
        }
    }

    fn finish(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => eprintln!("{message}"),
        }
    }

    fn abandon(&mut self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// Polls until `judge` says done, given the service's row (`None`: not
/// listed) or the reason the controller could not be asked.
pub async fn until<F>(
    controller: &Controller,
    name: &str,
    timeout: Duration,
    mut judge: F,
) -> Outcome
where
    F: FnMut(Result<Option<&Row>, String>) -> Step,
{
    let mut progress = Progress::new();
    let deadline = Instant::now() + timeout;
    let rounds = timeout.as_millis() / POLL.as_millis() + 2;
    for _ in 0..rounds {
        let look = match tokio::time::timeout_at(deadline, status::fetch(controller)).await {
            Ok(Ok(rows)) => judge(Ok(rows.iter().find(|r| r.name == name))),
            Ok(Err(err)) => judge(Err(err.to_string())),
            // Cut off by the deadline: what was last seen says more than
            // this look's own timeout.
            Err(_) if !progress.last.is_empty() => break,
            Err(_) => judge(Err("no answer before the deadline".into())),
        };
        match look {
            Step::Done(message) => {
                progress.finish(&message);
                return Ok(());
            }
            Step::Waiting(message) => progress.show(&message),
        }
        if Instant::now() + POLL > deadline {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    progress.abandon();
    Err(fail(
        Code::TimedOut,
        format!(
            "timed out after {} waiting for `{name}`: {}",
            humantime::format_duration(timeout),
            progress.last
        ),
    ))
}

/// A row's replicas in a few words: `0/1 ready (1 starting)`.
pub fn replicas(row: &Row) -> String {
    let mut text = format!("{}/{} ready", row.ready, row.desired);
    if row.starting > 0 {
        text.push_str(&format!(" ({} starting)", row.starting));
    }
    if let Some(error) = &row.last_error {
        text.push_str(&format!("; last error: {error}"));
    }
    text
}
