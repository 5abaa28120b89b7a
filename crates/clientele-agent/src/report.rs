//! `--report <file.jsonl>`: one line per rejected row — its key, its row number and the hub's
//! problem object (or the agent's own, for rows that never reached the hub).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clientele_client::Problem;
use serde_json::json;

#[derive(Clone, Debug, Default)]
pub struct Report {
    file: Option<Arc<Mutex<std::io::BufWriter<std::fs::File>>>>,
}

impl Report {
    pub fn create(path: Option<&Path>) -> anyhow::Result<Report> {
        let Some(path) = path else {
            return Ok(Report::default());
        };
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create the report {}", path.display()))?;
        Ok(Report {
            file: Some(Arc::new(Mutex::new(std::io::BufWriter::new(file)))),
        })
    }

    pub fn rejected(&self, key: Option<&str>, row: Option<u64>, problem: &Problem) {
        let Some(file) = &self.file else { return };
        let line = json!({"key": key, "row": row, "problem": problem});
        if let Ok(mut file) = file.lock() {
            let _ = writeln!(file, "{line}");
        }
    }

    /// A row the agent refused itself (no key, the transform failed...), as a problem object.
    pub fn refused(&self, key: Option<&str>, row: Option<u64>, code: &str, message: &str) {
        self.rejected(key, row, &agent_problem(code, message));
    }

    pub fn flush(&self) {
        if let Some(file) = &self.file
            && let Ok(mut file) = file.lock()
        {
            let _ = file.flush();
        }
    }
}

pub fn agent_problem(code: &str, message: &str) -> Problem {
    Problem {
        kind: Some("about:blank".into()),
        title: Some("The agent could not use this row".into()),
        status: Some(422),
        detail: Some(message.to_owned()),
        code: Some(code.to_owned()),
        errors: Vec::new(),
    }
}
