//! Default roles and the first admin, as the seed document lists them.
//! Idempotent: what exists is left as it is.

use rand::distr::{Alphanumeric, SampleString};
use uuid::Uuid;

use crate::{
    auth::passwords::PasswordHasher,
    db::{self, DbPool},
    error::AppError,
    store::{self, models::NewRole, models::NewUser, models::UserRoleRow, roles, users},
};

/// Email of the seeded administrator.
pub const ADMIN_EMAIL: &str = "admin@automation-platform.local";
/// Username of the seeded administrator.
pub const ADMIN_USERNAME: &str = "admin";
/// The seed document's development password, used only with the embedded
/// database when no ADMIN_PASSWORD is given.
pub const DEV_ADMIN_PASSWORD: &str = "admin123";
pub use crate::domain::authority::ADMIN_ROLE;

/// The default roles: name, description, permissions.
pub const DEFAULT_ROLES: &[(&str, &str, &[&str])] = &[
    (ADMIN_ROLE, "Full access", &["*:*"]),
    (
        "operator",
        "Module management",
        &[
            "modules:read",
            "modules:write",
            "modules:execute",
            "jobs:read",
            "jobs:write",
            "users:read",
            "schedules:read",
            "schedules:write",
        ],
    ),
    (
        "viewer",
        "Read-only",
        &["modules:read", "jobs:read", "users:read", "schedules:read"],
    ),
];

/// Where the admin password comes from.
#[derive(Debug, Clone)]
pub enum AdminPassword {
    /// Given by the operator (ADMIN_PASSWORD). Never the development
    /// password: that one is published, so an admin created with it on a
    /// real database would be open to anyone.
    Given(String),
    /// The seed document's `admin123` (embedded development database only).
    DevelopmentDefault,
    /// A random one, printed once.
    Generated,
}

/// What seeding did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Roles created now.
    pub roles_created: Vec<String>,
    /// Whether the admin user was created now.
    pub admin_created: bool,
}

/// Creates what is missing of the default roles and admin.
pub async fn run(
    pool: &DbPool,
    hasher: &PasswordHasher,
    admin_password: AdminPassword,
) -> Result<SeedReport, AppError> {
    let admin_exists = db::with_connection(pool, "seed.find_admin", async |conn| {
        Ok(users::find_by_login(conn, ADMIN_EMAIL).await?.is_some())
    })
    .await?;
    let password = if admin_exists {
        None
    } else {
        Some(admin_password_to_set(admin_password, hasher)?)
    };
    let password_hash = match &password {
        Some(p) => Some(hasher.hash(p).await?),
        None => None,
    };

    db::transaction(pool, "seed", async |conn| {
        let now = store::now();
        let mut report = SeedReport::default();
        for (name, description, permissions) in DEFAULT_ROLES {
            let created = roles::insert_if_missing(
                conn,
                &NewRole {
                    id: Uuid::now_v7(),
                    name,
                    description,
                    permissions: serde_json::json!(permissions),
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
            if created {
                report.roles_created.push((*name).to_owned());
            }
        }
        let admin = match &password_hash {
            Some(hash) => {
                users::insert_if_missing(
                    conn,
                    &NewUser {
                        id: Uuid::now_v7(),
                        email: ADMIN_EMAIL,
                        username: ADMIN_USERNAME,
                        password_hash: hash,
                        first_name: Some("Platform"),
                        last_name: Some("Administrator"),
                        is_active: true,
                        created_at: now,
                        updated_at: now,
                    },
                )
                .await?
            }
            None => None,
        };
        if let Some(admin) = admin {
            let role = roles::find(conn, ADMIN_ROLE)
                .await?
                .ok_or_else(|| AppError::internal("admin role missing after seeding"))?;
            roles::assign(
                conn,
                &UserRoleRow {
                    id: Uuid::now_v7(),
                    user_id: admin.id,
                    role_id: role.id,
                    assigned_at: now,
                    assigned_by: None,
                },
            )
            .await?;
            report.admin_created = true;
        }
        Ok(report)
    })
    .await
}

/// The password to create the admin with, from where the operator said it
/// comes.
fn admin_password_to_set(
    admin_password: AdminPassword,
    hasher: &PasswordHasher,
) -> Result<String, AppError> {
    Ok(match admin_password {
        AdminPassword::Given(p) => {
            if p == DEV_ADMIN_PASSWORD {
                return Err(AppError::invalid(
                    "ADMIN_PASSWORD",
                    "must not be the seed document's published development password; \
                     choose another for the admin of this database",
                ));
            }
            hasher.validate("ADMIN_PASSWORD", &p)?;
            p
        }
        AdminPassword::DevelopmentDefault => {
            tracing::warn!(
                "seeding admin {ADMIN_EMAIL} with the well-known development password \
                 '{DEV_ADMIN_PASSWORD}': set ADMIN_PASSWORD for anything but local development"
            );
            DEV_ADMIN_PASSWORD.to_owned()
        }
        AdminPassword::Generated => {
            let p = Alphanumeric.sample_string(&mut rand::rng(), 24);
            println!("Generated password of {ADMIN_EMAIL} (shown once): {p}");
            p
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_password_is_refused_when_given() {
        let hasher = PasswordHasher::new(4);
        let message =
            admin_password_to_set(AdminPassword::Given(DEV_ADMIN_PASSWORD.into()), &hasher)
                .expect_err("refused")
                .to_string();
        assert!(message.starts_with("ADMIN_PASSWORD: "), "{message}");
        assert!(!message.contains(DEV_ADMIN_PASSWORD), "{message}");
    }

    #[test]
    fn chosen_and_development_passwords_pass() {
        let hasher = PasswordHasher::new(4);
        let chosen = admin_password_to_set(AdminPassword::Given("a-chosen-one".into()), &hasher);
        assert_eq!(chosen.expect("accepted"), "a-chosen-one");
        let development = admin_password_to_set(AdminPassword::DevelopmentDefault, &hasher);
        assert_eq!(development.expect("accepted"), DEV_ADMIN_PASSWORD);
    }
}
