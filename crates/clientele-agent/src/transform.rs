//! The job's optional jq program (run with jaq): a row object in, a customer object out.

use jaq_core::compile::Undefined;
use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde_json::Value;

type Filter = jaq_core::Filter<data::JustLut<Val>>;

/// A compiled jq program.
pub struct Transform {
    filter: Filter,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transform")
    }
}

impl Transform {
    /// Parses and compiles `program`; the error says what is wrong with it.
    pub fn compile(program: &str) -> Result<Transform, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(
                &arena,
                File {
                    code: program,
                    path: (),
                },
            )
            .map_err(|errors| {
                let described: Vec<String> = errors
                    .iter()
                    .flat_map(|(_, error)| load_errors(program, error))
                    .collect();
                format!("the jq program does not parse: {}", described.join("; "))
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let described: Vec<String> = errors
                    .iter()
                    .flat_map(|(_, undefined)| undefined)
                    .map(|(name, kind)| {
                        let shown = match kind {
                            Undefined::Filter(arity) => format!("{name}/{arity}"),
                            _ => (*name).to_owned(),
                        };
                        format!("undefined {} `{shown}`{}", kind.as_str(), at(program, name))
                    })
                    .collect();
                format!("the jq program does not compile: {}", described.join("; "))
            })?;
        Ok(Transform { filter })
    }

    /// Runs the program on one row: it must give exactly one object.
    pub fn apply(&self, row: Value) -> Result<serde_json::Map<String, Value>, String> {
        let input: Val = serde_json::from_value(row).map_err(|error| error.to_string())?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut outputs = self.filter.id.run((ctx, input)).map(unwrap_valr);
        let first = match outputs.next() {
            Some(Ok(value)) => value,
            Some(Err(error)) => return Err(format!("the transform failed: {error}")),
            None => return Err("the transform gave no output for this row".into()),
        };
        if outputs.next().is_some() {
            return Err("the transform gave more than one output for this row".into());
        }
        let value: Value = serde_json::from_str(&first.to_string())
            .map_err(|error| format!("the transform gave a value that is not JSON: {error}"))?;
        match value {
            Value::Object(object) => Ok(object),
            other => Err(format!(
                "the transform must give an object, it gave {other}"
            )),
        }
    }
}

/// What the loader found wrong, each with where in the program.
fn load_errors(program: &str, error: &load::Error<&str>) -> Vec<String> {
    match error {
        load::Error::Io(errors) => errors
            .iter()
            .map(|(path, message)| format!("cannot load `{path}`: {message}"))
            .collect(),
        load::Error::Lex(errors) => errors
            .iter()
            .map(|(expected, found)| {
                format!("expected {}{}", expected.as_str(), at(program, found))
            })
            .collect(),
        load::Error::Parse(errors) => errors
            .iter()
            .map(|(expected, found)| {
                let found_text = if found.is_empty() {
                    "the end of the program".to_owned()
                } else {
                    format!("`{found}`")
                };
                format!(
                    "expected {}{}, found {found_text}",
                    expected.as_str(),
                    at(program, found)
                )
            })
            .collect(),
    }
}

/// ` at line L, column C` for a piece of the program (the parser's errors point into it), or
/// nothing when it does not.
fn at(program: &str, piece: &str) -> String {
    let start = program.as_ptr() as usize;
    let offset = (piece.as_ptr() as usize).wrapping_sub(start);
    if offset > program.len() {
        return String::new();
    }
    let before = &program[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before[before.rfind('\n').map_or(0, |newline| newline + 1)..]
        .chars()
        .count()
        + 1;
    format!(" at line {line}, column {column}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_example_runs() {
        let program = r#"                     # optional: a jq program, row object in, customer object out
{ external_id: .person_id, email: (.email | ascii_downcase),
  addresses: [{title: "Primary address", kind: "billing", line1: .street, postal_code: .zip, country: "FI"}] }
"#;
        let transform = Transform::compile(program).expect("compiles");
        let out = transform
            .apply(json!({"person_id": "p1", "email": "Ann@X.EXAMPLE", "street": "Main 1", "zip": "00100"}))
            .expect("runs");
        assert_eq!(
            Value::Object(out),
            json!({"external_id": "p1", "email": "ann@x.example", "addresses": [{"title": "Primary address",
                "kind": "billing", "line1": "Main 1", "postal_code": "00100", "country": "FI"}]})
        );
    }

    #[test]
    fn bad_programs_and_bad_outputs_are_errors() {
        assert_eq!(
            Transform::compile("{ a: ").expect_err("refused"),
            "the jq program does not parse: expected closing brace at line 1, column 6"
        );
        assert_eq!(
            Transform::compile("{ a: 1 }\n| nosuchfunction(1) | $x").expect_err("refused"),
            "the jq program does not compile: undefined filter `nosuchfunction/1` at line 2, \
             column 3; undefined variable `$x` at line 2, column 23"
        );
        assert_eq!(
            Transform::compile("1 +").expect_err("refused"),
            "the jq program does not parse: expected term at line 1, column 4, found the end of \
             the program"
        );
        let transform = Transform::compile(".[]").expect("compiles");
        assert!(transform.apply(json!({"a": 1, "b": 2})).is_err());
        let transform = Transform::compile(".a").expect("compiles");
        assert!(transform.apply(json!({"a": 1})).is_err());
        let transform = Transform::compile("error(\"no\")").expect("compiles");
        assert!(transform.apply(json!({})).is_err());
    }
}
