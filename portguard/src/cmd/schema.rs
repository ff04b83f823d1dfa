//! The JSON Schemas published in docs/schema/, one per verb that prints JSON, generated from
//! the very types that print it. The test below fails when a type changed and the published
//! schema did not; `PORTGUARD_WRITE_SCHEMA=1 cargo test -p portguard schema` rewrites them.
//! The integration tests validate each verb's real output against these files.

use std::path::PathBuf;

use portguard::{
    check::Report,
    json::Document,
    report::{Event, StatsJson},
};
use schemars::schema_for;
use serde_json::Value;

use super::status::StatusJson;

/// Each document's file name and schema.
fn all() -> Vec<(&'static str, Value)> {
    let mut out = vec![
        ("stats", titled(schema_for!(Document<StatsJson>), "portguard stats --json")),
        ("status", titled(schema_for!(Document<StatusJson>), "portguard status --json")),
        ("check", titled(schema_for!(Document<Report>), "portguard check --json")),
        ("run", titled(schema_for!(Document<Event>), "one line of portguard run --json")),
    ];
    for (_, s) in &mut out {
        s["$comment"] = "Generated from portguard's types (portguard/src/cmd/schema.rs).".into();
    }
    out
}

fn titled(s: schemars::Schema, title: &str) -> Value {
    let mut v = s.to_value();
    v["title"] = title.into();
    v
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
}

#[test]
fn published_schemas_are_current() {
    let write = std::env::var_os("PORTGUARD_WRITE_SCHEMA").is_some();
    for (name, schema) in all() {
        let path = dir().join(format!("{name}.schema.json"));
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if write {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == text,
            "{} is out of date: PORTGUARD_WRITE_SCHEMA=1 cargo test -p portguard schema",
            path.display()
        );
    }
}
