//! Vacuum: removing what no version needs from a dataset on object storage. Publishing already deletes the files
//! the new version and its base no longer use; what stays behind is what no publish saw: attempts of sharded runs
//! that lost or were abandoned, files of runs that died before their commit, and old `_versions/` objects.
//!
//! Kept: the newest version and the one before it (a reader may be between the two), every version younger than
//! the age limit (a reader may be pinned to it), everything those versions use, and every object younger than the
//! age limit (a run may be uploading it now). Never touched: the indexes, the embedding cache, `_latest.json`.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::StoreError;
use super::docs::DOCS_DIR;
use super::failed::FAILED_DIR;
use super::remote::{Remote, VERSIONS_DIR, referenced};
use super::shard::RUNS_DIR;
use super::writer::DATA_DIR;

/// What a vacuum removed (or, dry, would remove).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Vacuumed {
    /// The newest version's generation.
    pub generation: u64,
    /// Version objects kept.
    pub versions_kept: usize,
    /// Objects removed (relative names), and their bytes.
    pub removed: Vec<String>,
    pub bytes: u64,
    /// Unused objects left because they are younger than the age limit.
    pub too_young: usize,
    pub dry_run: bool,
}

impl Remote {
    /// Removes the objects no kept version uses and older than `older_than`; with `dry_run`, only says which.
    pub async fn vacuum(&self, older_than: Duration, dry_run: bool) -> Result<Vacuumed, StoreError> {
        let Some(latest) = self.latest().await? else {
            return Err(StoreError::NotADataset { path: self.url.clone().into() });
        };
        let cutoff = SystemTime::now().checked_sub(older_than).unwrap_or(SystemTime::UNIX_EPOCH);
        let old = |modified: SystemTime| modified <= cutoff;
        let mut out = Vacuumed { generation: latest.generation, dry_run, ..Vacuumed::default() };

        // The versions kept, and what they use.
        let mut used: HashSet<String> = HashSet::new();
        let mut doomed: Vec<(String, u64)> = Vec::new();
        for (name, size, modified) in self.list_dated(VERSIONS_DIR).await? {
            let generation = name
                .strip_prefix(&format!("{VERSIONS_DIR}/"))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok());
            let Some(generation) = generation else { continue };
            if generation + 1 >= latest.generation || !old(modified) {
                let manifest = match self.read_version(generation).await? {
                    Some(m) => m,
                    None => continue,
                };
                used.extend(referenced(&manifest));
                out.versions_kept += 1;
            } else {
                doomed.push((name, size));
            }
        }
        used.extend(referenced(&latest));

        for dir in [DATA_DIR, DOCS_DIR, FAILED_DIR, RUNS_DIR] {
            for (name, size, modified) in self.list_dated(dir).await? {
                if used.contains(&name) || run_in_use(&name, &used) {
                    continue;
                }
                if old(modified) {
                    doomed.push((name, size));
                } else {
                    out.too_young += 1;
                }
            }
        }
        doomed.sort();
        for (name, size) in doomed {
            if !dry_run {
                self.delete_quietly(&name).await;
            }
            out.bytes += size;
            out.removed.push(name);
        }
        Ok(out)
    }
}

/// Whether `name` is the plan or a done marker of a run some kept version's files live in: kept with them, so
/// that `tars-index commit` and `runs status` keep answering for that run.
fn run_in_use(name: &str, used: &HashSet<String>) -> bool {
    let Some(rest) = name.strip_prefix(&format!("{RUNS_DIR}/")) else { return false };
    let Some((run, file)) = rest.split_once('/') else { return false };
    let bookkeeping = file == "plan.json" || file.starts_with("done/");
    bookkeeping && used.iter().any(|u| u.strip_prefix(&format!("{RUNS_DIR}/{run}/")).is_some())
}

/// `7d`, `12h`, `30m`, `45s` or a number of seconds.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not an age such as 7d, 12h, 30m or 45s"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not an age such as 7d, 12h, 30m or 45s")),
    };
    Ok(Duration::from_secs(n.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_write_them() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("7w").is_err() && parse_age("d").is_err() && parse_age("").is_err());
    }

    #[test]
    fn a_run_whose_files_a_version_uses_keeps_its_plan_and_markers() {
        let used: HashSet<String> = ["_runs/r1/shard-0000/a1/data/part-1.parquet".to_owned()].into();
        assert!(run_in_use("_runs/r1/plan.json", &used));
        assert!(run_in_use("_runs/r1/done/0000.json", &used));
        assert!(!run_in_use("_runs/r1/shard-0001/lost/data/part-2.parquet", &used));
        assert!(!run_in_use("_runs/r2/plan.json", &used));
    }
}
