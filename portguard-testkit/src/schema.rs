//! Validation of every `--json` output against the published schemas in docs/schema/, by a
//! maintained validator (python3-jsonschema, installed by `cargo xtask setup`) that shares no
//! code with the Rust types the schemas were generated from. One validator process serves the
//! whole test binary: tests that poll `stats --json` validate every document they read.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::Mutex,
};

use serde_json::Value;

/// Reads "NAME<TAB>DOCUMENT" lines; answers "ok" or the first error, on one line.
const VALIDATOR: &str = r#"
import json, sys
from jsonschema import Draft202012Validator
schemas = {}
for line in sys.stdin:
    name, doc = line.rstrip("\n").split("\t", 1)
    if name not in schemas:
        with open(sys.argv[1] + "/" + name + ".schema.json") as f:
            s = json.load(f)
        Draft202012Validator.check_schema(s)
        schemas[name] = Draft202012Validator(s)
    errors = sorted(schemas[name].iter_errors(json.loads(doc)), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        print("at /" + "/".join(map(str, e.path)) + ": " + e.message.replace("\n", " "), flush=True)
    else:
        print("ok", flush=True)
"#;

struct Validator {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

static VALIDATOR_PROCESS: Mutex<Option<Validator>> = Mutex::new(None);

/// Where the schemas are published.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema")
}

/// Panics unless `doc` is valid against docs/schema/`name`.schema.json.
pub fn validate(name: &str, doc: &Value) {
    let mut guard = VALIDATOR_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let v = guard.get_or_insert_with(|| {
        let mut child = Command::new("python3")
            .args(["-c", VALIDATOR])
            .arg(dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with jsonschema (cargo xtask setup installs python3-jsonschema)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Validator { _child: child, stdin, stdout }
    });
    writeln!(v.stdin, "{name}\t{doc}").expect("writing to the schema validator");
    v.stdin.flush().unwrap();
    let mut answer = String::new();
    v.stdout.read_line(&mut answer).expect("reading the schema validator's answer");
    let answer = answer.trim();
    assert_eq!(
        answer, "ok",
        "{name} document does not match docs/schema/{name}.schema.json: {doc}"
    );
}

/// The schema a verb's `--json` output follows, by its arguments.
pub fn name_for(args: &[&str]) -> Option<&'static str> {
    if !args.contains(&"--json") {
        return None;
    }
    match args.first() {
        Some(&"stats") => Some("stats"),
        Some(&"status") => Some("status"),
        Some(&"check") => Some("check"),
        _ => None,
    }
}
