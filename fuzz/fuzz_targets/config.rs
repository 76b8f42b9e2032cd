//! The config file's parser and validator (`Config::parse`, what `--check`
//! runs) on arbitrary text. Never panics; a refused file names at least
//! one problem, each with the file, a reason, and a line inside the file,
//! and a line for every problem under a top-level key the file has; an
//! accepted config written back out as YAML (as `rouse-controller import`
//! writes services) is accepted again and reads back the same.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rouse_nats::config::{Config, ConfigError};

const FILE: &str = "rouse.yaml";

fuzz_target!(|data: &[u8]| {
    // The binaries read the file as UTF-8 and refuse anything else first.
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new(FILE), source) {
        Ok(config) => check_round_trip(&config),
        Err(err) => check_issues(source, &err),
    }
});

fn check_issues(source: &str, err: &ConfigError) {
    let ConfigError::Invalid(issues) = err else {
        panic!("parsing text cannot fail to read: {err}");
    };
    assert!(!issues.is_empty(), "refused without a reason");
    // serde may point one past the last line (end of input).
    let last_line = yaml_lines(source) + 1;
    let top_keys = top_level_keys(source);
    // A file that only the deserialiser's lenient parser reads has lines
    // for the keys before the point where the strict one gave up.
    let strict = yaml_rust2::YamlLoader::load_from_str(source).is_ok();
    for issue in issues {
        assert_eq!(issue.file, Path::new(FILE));
        assert!(!issue.reason.trim().is_empty(), "{issue:?}");
        if let Some(line) = issue.line {
            assert!(
                (1..=last_line).contains(&line),
                "line {line} of {last_line}: {issue:?}"
            );
        }
        let top = issue.key.split(['.', '[']).next().unwrap_or("");
        if strict && top_keys.iter().any(|k| k == top) {
            assert!(issue.line.is_some(), "no line for {issue:?} in {source:?}");
        }
    }
}

/// Lines as YAML counts them: CR, LF, CRLF, and NEL, LS, PS break lines.
fn yaml_lines(source: &str) -> usize {
    let text = source.replace("\r\n", "\n");
    text.chars()
        .filter(|c| matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count()
        + 1
}

/// The keys of the top-level mapping, when the text is one.
fn top_level_keys(source: &str) -> Vec<String> {
    match serde_norway::from_str::<serde_norway::Value>(source) {
        Ok(serde_norway::Value::Mapping(map)) => map
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn check_round_trip(config: &Config) {
    let written = match serde_norway::to_string(config) {
        Ok(written) => written,
        Err(err) => panic!("an accepted config does not serialise: {err}"),
    };
    let again = match Config::parse(Path::new(FILE), &written) {
        Ok(again) => again,
        Err(err) => panic!("an accepted config, written out, is refused:\n{err}\n---\n{written}"),
    };
    let rewritten = serde_norway::to_string(&again).unwrap_or_default();
    assert_eq!(rewritten, written, "reading back changed the config");
}
