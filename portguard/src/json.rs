//! One JSON dialect for every `--json` output (`stats`, `status`, `check`, and each line of
//! `run --json`): a document carries `version` and the time it was made, times are given twice
//! (RFC 3339 in UTC, and whole seconds since the epoch, `_unix`), and "nothing" is an empty
//! list. The shapes are published as JSON Schemas in docs/schema/, generated from these types
//! (`cmd::schema`), and the tests validate every verb's output against them.

use serde::Serialize;

use crate::clock;

/// The version of the shapes. Within a version, fields are only ever added.
pub const VERSION: u32 = 1;

/// A document: the version and time stamp, then the verb's own fields.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Document<T> {
    /// The version of these shapes: fields are only ever added within a version.
    pub version: u32,
    /// When the document was made: RFC 3339, UTC ("2026-11-26T06:40:12Z").
    pub generated_at: String,
    /// The same instant in whole seconds since the Unix epoch.
    pub generated_at_unix: u64,
    #[serde(flatten)]
    pub body: T,
}

impl<T: Serialize> Document<T> {
    /// `body`, stamped now.
    pub fn now(body: T) -> Document<T> {
        let now = std::time::SystemTime::now();
        Document {
            version: VERSION,
            generated_at: clock::rfc3339(now),
            generated_at_unix: clock::unix(now),
            body,
        }
    }

    /// Indented, for one document on stdout.
    pub fn pretty(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// One line, for a stream of JSON lines.
    pub fn line(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}
