//! Finds the line of a key in the YAML source.
//!
//! serde tells us *which* key is wrong (as a path such as
//! `services[1].scaling.drain_timeout`) but only sometimes *where*. Semantic
//! checks made after deserialising (two services sharing a host, say) know
//! only the path. This module walks the YAML event stream once, remembering
//! the line on which every key path starts, so every error can name its line.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line numbers (1-based) of key paths in one YAML document.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Indexes `source`. A document this parser refuses keeps the lines of
    /// the keys before the point of refusal: the deserialiser's parser is
    /// more lenient (it accepts a quoted scalar continued below its
    /// indentation, say), so it may accept the file, and the semantic
    /// checks then still need those lines.
    pub fn new(source: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(source);
        // The error itself is the deserialiser's to report, with its location.
        let _ = parser.load(&mut walker, false);
        Self {
            lines: walker.lines,
        }
    }

    /// The line of `path` (`a.b[2].c`), or of its nearest ancestor present.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut candidate = path;
        loop {
            if let Some(line) = self.lines.get(candidate) {
                return Some(*line);
            }
            let cut = candidate.rfind(['.', '['])?;
            candidate = &candidate[..cut];
        }
    }
}

enum Frame {
    /// Inside a mapping; `key` is the pending key once read, awaiting its value.
    Map { key: Option<String> },
    /// Inside a sequence; `index` counts the items seen.
    Seq { index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    /// Per open container: whether entering it pushed a path segment.
    pushed: Vec<bool>,
    /// Path segments of the node being read, in display form.
    path: Vec<String>,
    lines: HashMap<String, usize>,
}

impl Walker {
    fn joined(&self) -> String {
        let mut out = String::new();
        for segment in &self.path {
            if !segment.starts_with('[') && !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
        out
    }

    /// Called before a value node starts: pushes the segment naming it.
    fn enter_value(&mut self, mark: Marker) -> bool {
        match self.stack.last_mut() {
            Some(Frame::Seq { index }) => {
                let segment = format!("[{index}]");
                *index += 1;
                self.path.push(segment);
                let joined = self.joined();
                self.lines.entry(joined).or_insert(mark.line());
                true
            }
            Some(Frame::Map { key: Some(key) }) => {
                let segment = key.clone();
                self.path.push(segment);
                true
            }
            _ => false,
        }
    }

    /// Called after a value node ends.
    fn leave_value(&mut self, pushed: bool) {
        if pushed {
            self.path.pop();
        }
        if let Some(Frame::Map { key }) = self.stack.last_mut() {
            *key = None;
        }
    }

    /// Whether the next scalar in the current mapping is a key.
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None }))
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) if self.expecting_key() => {
                self.path.push(text.clone());
                let joined = self.joined();
                self.path.pop();
                self.lines.entry(joined).or_insert(mark.line());
                if let Some(Frame::Map { key }) = self.stack.last_mut() {
                    *key = Some(text);
                }
            }
            Event::Scalar(..) | Event::Alias(_) => {
                let pushed = self.enter_value(mark);
                self.leave_value(pushed);
            }
            Event::MappingStart(..) => {
                let pushed = self.enter_value(mark);
                self.stack.push(Frame::Map { key: None });
                self.pushed.push(pushed);
            }
            Event::SequenceStart(..) => {
                let pushed = self.enter_value(mark);
                self.stack.push(Frame::Seq { index: 0 });
                self.pushed.push(pushed);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                let pushed = self.pushed.pop().unwrap_or(false);
                self.leave_value(pushed);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
nats:
  url: nats://x
services:
  - name: a
    hosts: [a.example]
    scaling:
      min_replicas: 0
  - name: b
    hosts:
      - b.example
";

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        let index = LineIndex::new(DOC);
        assert_eq!(index.line_of("nats.url"), Some(2));
        assert_eq!(index.line_of("services"), Some(3));
        assert_eq!(index.line_of("services[0].name"), Some(4));
        assert_eq!(index.line_of("services[0].scaling.min_replicas"), Some(7));
        assert_eq!(index.line_of("services[1].name"), Some(8));
        assert_eq!(index.line_of("services[1].hosts"), Some(9));
        assert_eq!(index.line_of("services[1].hosts[0]"), Some(10));
    }

    #[test]
    fn keeps_the_keys_before_a_refusal() {
        // Found by the `config` fuzz target: the deserialiser accepts a
        // quoted scalar continued below its indentation, this parser does
        // not, and every semantic problem in such a file had no line.
        let source = "services:\n  - name: Bad\n    hosts: [a]\n    backend: {process: {command: [\"x\ny\"]}}\n";
        let index = LineIndex::new(source);
        assert_eq!(index.line_of("services[0].name"), Some(2));
    }

    #[test]
    fn falls_back_to_the_nearest_ancestor() {
        let index = LineIndex::new(DOC);
        assert_eq!(index.line_of("services[0].scaling.max_replicas"), Some(6));
        assert_eq!(index.line_of("nope"), None);
    }
}
