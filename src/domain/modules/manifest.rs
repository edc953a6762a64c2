//! A module's manifest: free-form JSON whose `jobs` and `hooks` keys the
//! control plane reads and checks; every other key is kept as it is.

use std::collections::HashMap;

use serde_json::Value;

use crate::{domain::validate, error::AppError};

/// Largest manifest, as JSON.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;
/// Most job types a manifest may declare. Every create reads the
/// declarations of its job's module (from a cache) and registration checks
/// each against every other module's, so they are bounded like any input.
pub const MAX_JOB_TYPES: usize = 1000;

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
    /// `"concurrency": {"key": "<payload field>", "max": N}`: its jobs take
    /// their concurrency key from that payload field.
    pub concurrency: Option<ConcurrencyDeclaration>,
    /// `"rate_limit": "<bucket>"`: its jobs take a token from that bucket.
    pub rate_limit: Option<String>,
}

/// A job type's concurrency declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyDeclaration {
    /// The payload field the key is read from.
    pub key: String,
    /// At most this many jobs of one key run at once.
    pub max: i32,
}

/// Reads `item.rate_limit` (or `rateLimit`), if present: a bucket's name
/// (whether it exists is checked when jobs are created). Not beside a
/// concurrency declaration: a job takes one or the other.
fn rate_limit_of(at: &str, item: &Value) -> Result<Option<String>, AppError> {
    let field = format!("{at}.rate_limit");
    match item.get("rate_limit").or_else(|| item.get("rateLimit")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => {
            if item.get("concurrency").is_some_and(|c| !c.is_null()) {
                return Err(AppError::invalid(
                    field,
                    "a job type declares a concurrency key or a rate limit, not both",
                ));
            }
            validate::job_name(&field, name).map(Some)
        }
        Some(_) => Err(AppError::invalid(field, "must name a rate limit")),
    }
}

/// Reads `item.concurrency`, if present; errors name `at.concurrency…`.
fn concurrency_of(at: &str, item: &Value) -> Result<Option<ConcurrencyDeclaration>, AppError> {
    let field = format!("{at}.concurrency");
    match item.get("concurrency") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(declared)) => {
            let key = declared
                .get("key")
                .and_then(Value::as_str)
                .filter(|key| !key.trim().is_empty() && key.len() <= 128)
                .ok_or_else(|| {
                    AppError::invalid(
                        format!("{field}.key"),
                        "must name a payload field (1 to 128 bytes)",
                    )
                })?;
            let range = validate::CONCURRENCY_MAX_RANGE;
            let max = declared
                .get("max")
                .and_then(Value::as_i64)
                .and_then(|max| i32::try_from(max).ok())
                .filter(|max| range.contains(max))
                .ok_or_else(|| {
                    AppError::invalid(
                        format!("{field}.max"),
                        format!(
                            "must be a whole number within {}..{}",
                            range.start(),
                            range.end()
                        ),
                    )
                })?;
            Ok(Some(ConcurrencyDeclaration {
                key: key.to_owned(),
                max,
            }))
        }
        Some(_) => Err(AppError::invalid(
            field,
            "must be an object: {\"key\": \"<payload field>\", \"max\": N}",
        )),
    }
}

/// What the control plane reads of a manifest: the job types it declares
/// (looked up by name in constant time, so a batch against a large manifest
/// stays linear) and which of them carry out its hooks. The manifest cache
/// shares it between creates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobTypes {
    declared: Vec<JobDeclaration>,
    index: HashMap<String, usize>,
    install: Option<String>,
    update: Option<String>,
    remove: Option<String>,
}

impl JobTypes {
    /// Whether it declares no job type (then the module takes any).
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    /// How many job types it declares.
    pub fn len(&self) -> usize {
        self.declared.len()
    }

    /// The declared job types' names, in the manifest's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.declared.iter().map(|j| j.name.as_str())
    }

    /// The declaration of job type `name`.
    pub fn job(&self, name: &str) -> Option<&JobDeclaration> {
        self.index.get(name).map(|&at| &self.declared[at])
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

    /// The hook job type `name` carries out, if it is one: such jobs are
    /// created by the module's lifecycle alone.
    pub fn hook_of(&self, name: &str) -> Option<HookKind> {
        [HookKind::Install, HookKind::Update, HookKind::Remove]
            .into_iter()
            .find(|kind| self.hook(*kind).is_some_and(|j| j.name == name))
    }

    /// Whether `other` declares the same hooks.
    pub fn same_hooks(&self, other: &JobTypes) -> bool {
        (&self.install, &self.update, &self.remove)
            == (&other.install, &other.update, &other.remove)
    }
}

/// A checked manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The manifest as given.
    pub raw: Value,
    /// What it declares.
    pub types: JobTypes,
}

impl Manifest {
    /// Checks a manifest sent by a client; errors name the field under
    /// `field` (`manifest`, `module.manifest`). It declares at most
    /// [`MAX_JOB_TYPES`] job types.
    pub fn parse(field: &str, raw: Value) -> Result<Self, AppError> {
        if !raw.is_object() {
            return Err(AppError::invalid(field, "must be a JSON object"));
        }
        validate::json_document(field, &raw, MAX_MANIFEST_BYTES)?;
        if let Some(Value::Array(items)) = raw.get("jobs")
            && items.len() > MAX_JOB_TYPES
        {
            return Err(AppError::invalid(
                format!("{field}.jobs"),
                format!(
                    "declares {} job types; at most {MAX_JOB_TYPES} are accepted",
                    items.len()
                ),
            ));
        }
        let types = JobTypes::read(field, &raw)?;
        Ok(Self { raw, types })
    }

    /// Reads a stored manifest, which was checked when it was stored (or
    /// written by the platform's existing backend: then anything the checks
    /// would refuse is ignored rather than blocking the module, and a stored
    /// manifest is not held to [`MAX_JOB_TYPES`]).
    pub fn from_stored(raw: Value) -> Self {
        let types = JobTypes::read("manifest", &raw).unwrap_or_default();
        Self { raw, types }
    }

    /// The job type that carries out `kind`, if the manifest declares one.
    pub fn hook(&self, kind: HookKind) -> Option<&JobDeclaration> {
        self.types.hook(kind)
    }

    /// Whether `other` declares the same hooks (changing them changes what
    /// code a transition runs, which needs `modules:execute`).
    pub fn same_hooks(&self, other: &Manifest) -> bool {
        self.types.same_hooks(&other.types)
    }

    /// The declaration of job type `name`.
    pub fn job(&self, name: &str) -> Option<&JobDeclaration> {
        self.types.job(name)
    }
}

impl JobTypes {
    /// Reads `jobs` and `hooks` of `raw`, in time linear in the
    /// declarations.
    fn read(field: &str, raw: &Value) -> Result<Self, AppError> {
        let mut types = Self::default();
        match raw.get("jobs") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                types.declared.reserve(items.len());
                types.index.reserve(items.len());
                for (index, item) in items.iter().enumerate() {
                    let at = format!("{field}.jobs[{index}]");
                    let name = item
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| AppError::invalid(format!("{at}.name"), "is required"))?;
                    let name = validate::job_name(&format!("{at}.name"), name)?;
                    if types.index.contains_key(&name) {
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
                    let declaration = JobDeclaration {
                        priority: integer("priority", validate::PRIORITY_RANGE)?,
                        max_attempts: integer("max_attempts", 1..=validate::MAX_ATTEMPTS_LIMIT)?,
                        concurrency: concurrency_of(&at, item)?,
                        rate_limit: rate_limit_of(&at, item)?,
                        name,
                    };
                    types
                        .index
                        .insert(declaration.name.clone(), types.declared.len());
                    types.declared.push(declaration);
                }
            }
            Some(_) => {
                return Err(AppError::invalid(
                    format!("{field}.jobs"),
                    "must be a list of job declarations",
                ));
            }
        }
        match raw.get("hooks") {
            None | Some(Value::Null) => {}
            Some(Value::Object(hooks)) => {
                for (key, value) in hooks {
                    let at = format!("{field}.hooks.{key}");
                    let kind = HookKind::from_key(key).ok_or_else(|| {
                        AppError::invalid(&at, "is not a hook: expected install, update or remove")
                    })?;
                    let job = value
                        .as_str()
                        .ok_or_else(|| AppError::invalid(&at, "must name a job type"))?;
                    if types.job(job).is_none() {
                        return Err(AppError::invalid(
                            &at,
                            format!("names '{job}', which {field}.jobs does not declare"),
                        ));
                    }
                    let slot = match kind {
                        HookKind::Install => &mut types.install,
                        HookKind::Update => &mut types.update,
                        HookKind::Remove => &mut types.remove,
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
        Ok(types)
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

    #[test]
    fn declarations_are_bounded_for_clients_not_for_stored_manifests() {
        let jobs = |n: usize| -> Vec<Value> {
            (0..n).map(|i| json!({"name": format!("m.t{i}")})).collect()
        };
        let error =
            Manifest::parse("manifest", json!({"jobs": jobs(MAX_JOB_TYPES + 1)})).unwrap_err();
        assert!(error.to_string().starts_with("manifest.jobs:"), "{error}");
        let manifest = Manifest::parse("manifest", json!({"jobs": jobs(MAX_JOB_TYPES)})).unwrap();
        assert_eq!(manifest.types.len(), MAX_JOB_TYPES);
        // One written by another backend, over the bound, is still read
        // whole (refusing it would widen the module to any job type).
        let stored = Manifest::from_stored(json!({"jobs": jobs(14_000)}));
        assert_eq!(stored.types.len(), 14_000);
        assert!(stored.job("m.t13999").is_some());
        assert!(stored.job("m.t14000").is_none());
        let twice = json!({"jobs": [{"name": "a"}, {"name": "b"}, {"name": "a"}]});
        let error = Manifest::parse("manifest", twice).unwrap_err();
        assert!(
            error.to_string().starts_with("manifest.jobs[2].name:"),
            "{error}"
        );
    }

    #[test]
    fn hook_job_types_are_known_by_name() {
        let manifest = Manifest::parse(
            "manifest",
            json!({
                "jobs": [{"name": "b.install"}, {"name": "b.run"}, {"name": "b.drop"}],
                "hooks": {"install": "b.install", "remove": "b.drop"},
            }),
        )
        .unwrap();
        assert_eq!(manifest.types.hook_of("b.install"), Some(HookKind::Install));
        assert_eq!(manifest.types.hook_of("b.drop"), Some(HookKind::Remove));
        assert_eq!(manifest.types.hook_of("b.run"), None);
        assert_eq!(
            manifest.types.names().collect::<Vec<_>>(),
            ["b.install", "b.run", "b.drop"]
        );
    }
}
