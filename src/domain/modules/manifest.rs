//! A module's manifest: free-form JSON whose `jobs` and `hooks` keys the
//! control plane reads and checks; every other key is kept as it is.

use serde_json::Value;

use crate::{
    domain::{jobs, validate},
    error::AppError,
};

/// Largest manifest, as JSON.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// The transitions a hook can carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Install,
    Update,
    Remove,
}

impl HookKind {
    /// The key in `hooks`, and the job's `hook` column.
    pub fn key(self) -> &'static str {
        match self {
            Self::Install => "install",
            Self::Update => "update",
            Self::Remove => "remove",
        }
    }

    /// The kind of a `hook` column value.
    pub fn from_key(key: &str) -> Option<Self> {
        Some(match key {
            "install" => Self::Install,
            "update" => Self::Update,
            "remove" => Self::Remove,
            _ => return None,
        })
    }
}

/// One job type a module declares, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDeclaration {
    pub name: String,
    pub priority: Option<i32>,
    pub max_attempts: Option<i32>,
}

/// A checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest as given.
    pub raw: Value,
    /// The job types it declares (empty: any).
    pub jobs: Vec<JobDeclaration>,
    install: Option<String>,
    update: Option<String>,
    remove: Option<String>,
}

impl Manifest {
    /// Checks a manifest sent by a client; errors name the field under
    /// `field` (`manifest`, `module.manifest`).
    pub fn parse(field: &str, raw: Value) -> Result<Self, AppError> {
        if !raw.is_object() {
            return Err(AppError::invalid(field, "must be a JSON object"));
        }
        validate::json_document(field, &raw, MAX_MANIFEST_BYTES)?;
        Self::read(field, raw)
    }

    /// Reads a stored manifest, which was checked when it was stored (or
    /// written by the platform's existing backend: then anything the checks
    /// would refuse is ignored rather than blocking the module).
    pub fn from_stored(raw: Value) -> Self {
        Self::read("manifest", raw.clone()).unwrap_or(Self {
            raw,
            jobs: Vec::new(),
            install: None,
            update: None,
            remove: None,
        })
    }

    fn read(field: &str, raw: Value) -> Result<Self, AppError> {
        let mut jobs = Vec::new();
        match raw.get("jobs") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    let at = format!("{field}.jobs[{index}]");
                    let name = item
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| AppError::invalid(format!("{at}.name"), "is required"))?;
                    let name = validate::job_name(&format!("{at}.name"), name)?;
                    if jobs.iter().any(|j: &JobDeclaration| j.name == name) {
                        return Err(AppError::invalid(
                            format!("{at}.name"),
                            format!("declares '{name}' twice"),
                        ));
                    }
                    let integer =
                        // `maxAttempts` too: people write grpcurl JSON in
                        // camelCase.
                        |key: &str, range: std::ops::RangeInclusive<i32>| match item
                            .get(key)
                            .or_else(|| item.get(snake_to_camel(key)))
                        {
                            None | Some(Value::Null) => Ok(None),
                            Some(value) => value
                                .as_i64()
                                .and_then(|v| i32::try_from(v).ok())
                                .filter(|v| range.contains(v))
                                .map(Some)
                                .ok_or_else(|| {
                                    AppError::invalid(
                                        format!("{at}.{key}"),
                                        format!(
                                            "must be a whole number within {}..{}",
                                            range.start(),
                                            range.end()
                                        ),
                                    )
                                }),
                        };
                    jobs.push(JobDeclaration {
                        priority: integer("priority", jobs::PRIORITY_RANGE)?,
                        max_attempts: integer("max_attempts", 1..=jobs::MAX_ATTEMPTS_LIMIT)?,
                        name,
                    });
                }
            }
            Some(_) => {
                return Err(AppError::invalid(
                    format!("{field}.jobs"),
                    "must be a list of job declarations",
                ));
            }
        }
        let mut manifest = Self {
            raw,
            jobs,
            install: None,
            update: None,
            remove: None,
        };
        match manifest.raw.get("hooks").cloned() {
            None | Some(Value::Null) => {}
            Some(Value::Object(hooks)) => {
                for (key, value) in hooks {
                    let at = format!("{field}.hooks.{key}");
                    let kind = HookKind::from_key(&key).ok_or_else(|| {
                        AppError::invalid(&at, "is not a hook: expected install, update or remove")
                    })?;
                    let job = value
                        .as_str()
                        .ok_or_else(|| AppError::invalid(&at, "must name a job type"))?;
                    if !manifest.jobs.iter().any(|j| j.name == job) {
                        return Err(AppError::invalid(
                            &at,
                            format!("names '{job}', which {field}.jobs does not declare"),
                        ));
                    }
                    let slot = match kind {
                        HookKind::Install => &mut manifest.install,
                        HookKind::Update => &mut manifest.update,
                        HookKind::Remove => &mut manifest.remove,
                    };
                    *slot = Some(job.to_owned());
                }
            }
            Some(_) => {
                return Err(AppError::invalid(
                    format!("{field}.hooks"),
                    "must be an object: {\"install\": \"<job type>\", ...}",
                ));
            }
        }
        Ok(manifest)
    }

    /// The job type that carries out `kind`, if the manifest declares one.
    pub fn hook(&self, kind: HookKind) -> Option<&JobDeclaration> {
        let job = match kind {
            HookKind::Install => self.install.as_deref(),
            HookKind::Update => self.update.as_deref(),
            HookKind::Remove => self.remove.as_deref(),
        }?;
        self.job(job)
    }

    /// Whether `other` declares the same hooks (changing them changes what
    /// code a transition runs, which needs `modules:execute`).
    pub fn same_hooks(&self, other: &Manifest) -> bool {
        (&self.install, &self.update, &self.remove)
            == (&other.install, &other.update, &other.remove)
    }

    /// The declaration of job type `name`.
    pub fn job(&self, name: &str) -> Option<&JobDeclaration> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

fn snake_to_camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn jobs_and_hooks_are_read_and_other_keys_kept() {
        let raw = json!({
            "jobs": [{"name": "backup.install", "max_attempts": 2}, {"name": "backup.run", "priority": 5}],
            "hooks": {"install": "backup.install"},
            "routes": ["/backup"],
        });
        let manifest = Manifest::parse("manifest", raw.clone()).unwrap();
        assert_eq!(manifest.raw, raw);
        assert_eq!(
            manifest.hook(HookKind::Install).unwrap().max_attempts,
            Some(2)
        );
        assert!(manifest.hook(HookKind::Remove).is_none());
        assert_eq!(manifest.job("backup.run").unwrap().priority, Some(5));
        let camel = json!({"jobs": [{"name": "a", "maxAttempts": 4}]});
        let manifest = Manifest::parse("manifest", camel).unwrap();
        assert_eq!(manifest.job("a").unwrap().max_attempts, Some(4));
    }

    #[test]
    fn bad_manifests_name_the_field() {
        let cases = [
            (json!({"jobs": {}}), "manifest.jobs:"),
            (json!({"jobs": [{"priority": 1}]}), "manifest.jobs[0].name:"),
            (
                json!({"jobs": [{"name": "a"}, {"name": "a"}]}),
                "manifest.jobs[1].name:",
            ),
            (
                json!({"jobs": [{"name": "a", "max_attempts": 0}]}),
                "manifest.jobs[0].max_attempts:",
            ),
            (
                json!({"hooks": {"install": "missing"}}),
                "manifest.hooks.install:",
            ),
            (
                json!({"jobs": [{"name": "a"}], "hooks": {"instal": "a"}}),
                "manifest.hooks.instal:",
            ),
            (json!(["not", "an", "object"]), "manifest:"),
        ];
        for (raw, field) in cases {
            let error = Manifest::parse("manifest", raw).unwrap_err();
            assert!(error.to_string().starts_with(field), "{field}: {error}");
        }
    }
}
