//! Fixture helpers shared by the golden test files (`golden.rs`, `doors.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use filters::dialects::{self, Dialect};
use filters::stream_relay::OpenAiStreamRelay;

pub const CREATED: u64 = 1_700_000_000;

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// `UPDATE_GOLDEN=1` rewrites the expected files instead of comparing.
pub fn update() -> bool {
    std::env::var("UPDATE_GOLDEN").is_ok()
}

/// The fixtures in `golden/<sub>` whose names end in `suffix`, sorted; at least one.
pub fn files(sub: &str, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir().join(sub))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no {suffix} fixtures in {sub}");
    v
}

/// Compares `got` with the expected file (or writes it under `UPDATE_GOLDEN`).
pub fn check_text(expected_path: &Path, got: &str) {
    if update() {
        std::fs::write(expected_path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(expected_path).unwrap_or_else(|_| {
        panic!(
            "missing {} (run with UPDATE_GOLDEN=1)",
            expected_path.display()
        )
    });
    assert_eq!(got, want, "{}", expected_path.display());
}

/// Fixtures named `json_tool.*` answer a request whose `response_format` was emulated with the
/// forced tool `json_response`.
pub fn json_tool(input: &Path) -> Option<&'static str> {
    input
        .file_name()?
        .to_str()?
        .starts_with("json_tool.")
        .then_some("json_response")
}

/// The stream translator of a dialect's fixture (the OpenAI relay for the OpenAI dialect).
pub fn stream_translator(
    d: Dialect,
    input: &Path,
    include_usage: bool,
) -> Box<dyn dialects::StreamTranslator> {
    match d {
        Dialect::Openai => Box::new(OpenAiStreamRelay::new(!include_usage, 1 << 20)),
        _ => dialects::stream_translator_with(
            d,
            "requested-model",
            CREATED,
            include_usage,
            1 << 20,
            json_tool(input),
        ),
    }
}
