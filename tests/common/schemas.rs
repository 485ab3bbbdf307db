//! The published JSON Schemas (`schemas/`), compiled for validating messages in tests.
#![allow(dead_code)]

use serde_json::Value;

pub fn load_schema(file: &str) -> Value {
    let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// A validator for a schema file, with `format` assertions on (`date-time` is checked).
pub fn validator(file: &str) -> jsonschema::Validator {
    let schema = load_schema(file);
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("{file} is not a valid JSON Schema: {e}");
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{file} does not compile: {e}"))
}

/// The errors of an instance, one line each (empty when valid).
pub fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path)).collect()
}

/// The validators of the output messages.
pub struct OutputSchemas {
    pub notice: jsonschema::Validator,
    pub held: jsonschema::Validator,
    pub dlq_headers: jsonschema::Validator,
}

impl OutputSchemas {
    pub fn load() -> Self {
        OutputSchemas {
            notice: validator("reset-notice.v1.schema.json"),
            held: validator("held-record.v1.schema.json"),
            dlq_headers: validator("dlq-record.v1.schema.json"),
        }
    }
}
