//! From a source row to the customer item the hub receives, and the hashes that say whether it
//! changed: `[fields]` renames, columns named like hub fields, the optional transform, a
//! canonical JSON encoding of the item hashed with SHA-256 (the item hash), and the row hash:
//! the raw row's values hashed under the job's mapping identity, which is cheap enough to take
//! for every row and lets an unchanged row skip the mapping altogether.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::fields;
use crate::job::{HubKey, Job};
use crate::source::SourceRow;
use crate::transform::Transform;

/// Names the mapping code: bump it when renames, coercions or the item's encoding change, so
/// that every row hash changes with it and each row is mapped (and compared) again.
/// (2: an explicit `[fields]` mapping wins over a column named like its field, whatever order
/// the columns come in.)
const MAPPING_VERSION: &str = "clientele-agent mapping 3";

/// The hash of the raw row under one job's mapping: equal row hashes mean equal items.
pub type RowHash = [u8; 16];

/// A row that cannot become a customer item (it goes to the report, the run goes on).
#[derive(Debug, Clone)]
pub struct RowError {
    pub code: &'static str,
    pub message: String,
}

/// A row ready to send: the source key, the hub key's value, the item and its hash.
#[derive(Debug, Clone)]
pub struct MappedRow {
    pub key: String,
    pub hub_value: String,
    pub item: Map<String, Value>,
    pub hash: [u8; 16],
}

pub struct Mapper {
    source_key: String,
    hub_key: HubKey,
    /// Source column → the hub fields `[fields]` fills from it.
    renames: BTreeMap<String, Vec<String>>,
    /// The hub fields `[fields]` fills: a column named like one of them does not map by itself,
    /// the explicit mapping wins.
    mapped: BTreeSet<String>,
    transform: Option<Transform>,
    /// SHA-256 already fed with everything of the job that decides the item: every row hash
    /// starts from it, so editing the mapping or the transform changes every row hash.
    identity: Sha256,
}

impl Mapper {
    pub fn new(job: &Job, source_key: &str) -> Result<Mapper, String> {
        let mut renames: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (field, column) in &job.fields {
            renames
                .entry(column.clone())
                .or_default()
                .push(field.clone());
        }
        let mapped = job.fields.keys().cloned().collect();
        let transform = job
            .transform
            .as_deref()
            .map(Transform::compile)
            .transpose()?;
        let mut identity = Sha256::new();
        let description = serde_json::json!([
            MAPPING_VERSION,
            source_key,
            job.sync.key.field(),
            job.fields,
            job.transform,
        ]);
        identity.update(description.to_string().as_bytes());
        Ok(Mapper {
            source_key: source_key.to_owned(),
            hub_key: job.sync.key,
            renames,
            mapped,
            transform,
            identity,
        })
    }

    /// The source key of a raw row, as text (numbers are written out).
    pub fn key_of(&self, row: &SourceRow) -> Option<String> {
        key_text(row.get(&self.source_key)?)
    }

    /// The row hash: every column's name and value, in the source's order, under the job's
    /// mapping identity. `buffer` is scratch space, reused from row to row.
    pub fn row_hash(&self, row: &SourceRow, buffer: &mut Vec<u8>) -> RowHash {
        buffer.clear();
        for (name, value) in row.columns() {
            write_str(buffer, name);
            buffer.push(b':');
            write_canonical(buffer, value);
            buffer.push(b',');
        }
        let mut hasher = self.identity.clone();
        hasher.update(&buffer[..]);
        first_16(&hasher.finalize())
    }

    pub fn map(&self, row: SourceRow) -> Result<MappedRow, RowError> {
        let key = self.key_of(&row).ok_or_else(|| RowError {
            code: "missing_key",
            message: format!(
                "the row has no value in its key column `{}`",
                self.source_key
            ),
        })?;
        let row = row.into_map();
        // A transform reads the raw row too; without one the row is moved, not copied.
        let raw = self
            .transform
            .as_ref()
            .map(|transform| (transform, row.clone()));
        let mut item = self.rename(row);
        if let Some((transform, mut input)) = raw {
            // The program sees the raw columns and the renamed fields side by side.
            for (field, value) in &item {
                input.entry(field.clone()).or_insert_with(|| value.clone());
            }
            // Its output is laid over the mapped fields: `[fields]` beside a transform (as in
            // the contract's example job) still fills what the program does not set.
            match transform.apply(Value::Object(input)) {
                Ok(object) => {
                    for (field, value) in object {
                        let value = fields::coerce(&field, value);
                        item.insert(field, value);
                    }
                }
                Err(message) => {
                    return Err(RowError {
                        code: "transform_failed",
                        message,
                    });
                }
            }
        }
        let hub_field = self.hub_key.field();
        let hub_value = match item.get(hub_field) {
            Some(value) => key_text(value).ok_or_else(|| RowError {
                code: "missing_key",
                message: format!("`{hub_field}` must be a non-empty string"),
            })?,
            None => {
                item.insert(hub_field.to_owned(), Value::String(key.clone()));
                key.clone()
            }
        };
        let hash = hash_item(&item);
        Ok(MappedRow {
            key,
            hub_value,
            item,
            hash,
        })
    }

    fn rename(&self, row: Map<String, Value>) -> Map<String, Value> {
        let mut item = Map::new();
        for (column, value) in row {
            match self.renames.get(&column) {
                Some(targets) => {
                    for field in targets {
                        item.insert(field.clone(), fields::coerce(field, value.clone()));
                    }
                }
                None if fields::is_writable(&column) && !self.mapped.contains(&column) => {
                    let value = fields::coerce(&column, value);
                    item.insert(column, value);
                }
                None => {}
            }
        }
        item
    }
}

fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// SHA-256 (first 16 bytes) over a canonical encoding: object keys sorted at every level, no
/// whitespace, whatever order the source or the transform produced them in.
pub fn hash_item(item: &Map<String, Value>) -> [u8; 16] {
    let mut hasher = Sha256::new();
    let mut buffer = Vec::with_capacity(256);
    write_canonical_object(&mut buffer, item);
    hasher.update(&buffer);
    first_16(&hasher.finalize())
}

fn first_16(digest: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn write_canonical_object(out: &mut Vec<u8>, object: &Map<String, Value>) {
    let mut entries: Vec<(&String, &Value)> = object.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (index, (name, value)) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        write_canonical(out, value);
    }
    out.push(b'}');
}

pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(object) => write_canonical_object(out, object),
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    // Serializing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

fn write_scalar(out: &mut Vec<u8>, value: &Value) {
    // Serializing a scalar into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn job(extra: &str) -> Job {
        let text = format!(
            "[hub]\nurl = \"http://h\"\n[source]\nurl = \"a.csv\"\nkey = \"person_id\"\n[fields]\nfirst_name = \"fname\"\n{extra}"
        );
        Job::parse(&text, "job.toml", PathBuf::from(".")).expect("job")
    }

    fn object(value: Value) -> SourceRow {
        SourceRow::from_map(1, value.as_object().expect("object").clone())
    }

    #[test]
    fn the_row_hash_follows_the_values_and_the_job() {
        let mut buffer = Vec::new();
        let plain = Mapper::new(&job(""), "person_id").expect("mapper");
        let row = object(json!({"person_id": 7, "fname": "Ann"}));
        let hash = plain.row_hash(&row, &mut buffer);
        assert_eq!(hash, plain.row_hash(&row.clone(), &mut buffer));
        let changed = object(json!({"person_id": 7, "fname": "Anne"}));
        assert_ne!(hash, plain.row_hash(&changed, &mut buffer));
        // A value of another type is another value.
        let typed = object(json!({"person_id": "7", "fname": "Ann"}));
        assert_ne!(hash, plain.row_hash(&typed, &mut buffer));
        // Another mapping or transform makes every row hash another one.
        let renamed = Mapper::new(&job("last_name = \"fname\""), "person_id").expect("mapper");
        assert_ne!(hash, renamed.row_hash(&row, &mut buffer));
        let transformed =
            Mapper::new(&job("transform = '{ first_name: .fname }'"), "person_id").expect("mapper");
        assert_ne!(hash, transformed.row_hash(&row, &mut buffer));
        let other_key = Mapper::new(&job(""), "fname").expect("mapper");
        assert_ne!(hash, other_key.row_hash(&row, &mut buffer));
    }

    #[test]
    fn renames_keep_hub_named_columns_and_drop_the_rest() {
        let mapper = Mapper::new(&job(""), "person_id").expect("mapper");
        let row = mapper
            .map(object(json!({"person_id": 7, "fname": "Ann", "email": "a@x.example", "shoe_size": 40, "archived": 0})))
            .expect("maps");
        assert_eq!(row.key, "7");
        assert_eq!(row.hub_value, "7");
        assert_eq!(
            Value::Object(row.item),
            json!({"external_id": "7", "first_name": "Ann", "email": "a@x.example", "archived": false})
        );
    }

    #[test]
    fn an_explicit_mapping_wins_over_a_column_named_like_its_field() {
        // Whatever order the columns come in, before or after the mapped one.
        let mapper = Mapper::new(
            &job("note = \"company\"\nlast_name = \"fname\""),
            "person_id",
        )
        .expect("mapper");
        for row in [
            json!({"person_id": 7, "company": "ColCompany", "note": "ColNote", "fname": "Ann", "last_name": "Col"}),
            json!({"last_name": "Col", "note": "ColNote", "fname": "Ann", "company": "ColCompany", "person_id": 7}),
        ] {
            let item = mapper.map(object(row)).expect("maps").item;
            assert_eq!(item["note"], "ColCompany");
            assert_eq!(item["last_name"], "Ann");
            // One column may feed several fields (`first_name = "fname"` is in every job here).
            assert_eq!(item["first_name"], "Ann");
        }
    }

    #[test]
    fn the_hash_ignores_key_order_and_sees_every_change() {
        let item = |value: Value| value.as_object().expect("object").clone();
        let a = item(json!({"a": 1, "b": {"y": [1, 2], "x": null}}));
        let b = item(json!({"b": {"x": null, "y": [1, 2]}, "a": 1}));
        assert_eq!(hash_item(&a), hash_item(&b));
        let c = item(json!({"b": {"x": null, "y": [2, 1]}, "a": 1}));
        assert_ne!(hash_item(&a), hash_item(&c));
    }

    #[test]
    fn the_transform_sees_raw_columns_and_its_output_is_hashed() {
        let mapper = Mapper::new(
            &job("transform = '{ external_id: (\"P\" + (.person_id|tostring)), first_name: .first_name, tags: [.tag] }'"),
            "person_id",
        )
        .expect("mapper");
        let row = mapper
            .map(object(json!({"person_id": 3, "fname": "Bo", "tag": "vip"})))
            .expect("maps");
        assert_eq!(row.hub_value, "P3");
        assert_eq!(
            Value::Object(row.item.clone()),
            json!({"external_id": "P3", "first_name": "Bo", "tags": ["vip"]})
        );
        assert_eq!(row.hash, hash_item(&row.item));
    }

    /// The contract's example job: `[fields]` beside a transform that sets other fields.
    #[test]
    fn the_transform_is_laid_over_the_mapped_fields() {
        let mapper = Mapper::new(
            &job("external_id = \"person_id\"\n\
                  transform = '{ external_id: .person_id, email: (.email | ascii_downcase) }'"),
            "person_id",
        )
        .expect("mapper");
        let row = mapper
            .map(object(
                json!({"person_id": "p1", "fname": "Bo", "email": "BO@X.FI"}),
            ))
            .expect("maps");
        assert_eq!(
            Value::Object(row.item),
            json!({"external_id": "p1", "first_name": "Bo", "email": "bo@x.fi"})
        );
    }

    #[test]
    fn rows_without_a_key_are_refused() {
        let mapper = Mapper::new(&job(""), "person_id").expect("mapper");
        let error = mapper
            .map(object(json!({"fname": "Ann"})))
            .expect_err("refused");
        assert_eq!(error.code, "missing_key");
    }
}
