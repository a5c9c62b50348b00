//! Who may do what. A request acts as a [`Principal`]: the operator's admin credential,
//! or a tenant API key scoped to one tenant and a set of [`Role`]s. Every handler asks
//! the principal before it acts; the answers map to `401`/`403`/`404` in the API.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a tenant API key may do. Each role names the resource and the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Publish events of the key's tenant (`POST /v1/events`).
    #[serde(rename = "events:publish")]
    EventsPublish,
    /// Create, read, change, delete, replay and redrive the tenant's subscriptions, and
    /// read their signing secrets.
    #[serde(rename = "subscriptions:manage")]
    SubscriptionsManage,
    /// Read the delivery attempts of the tenant's subscriptions.
    #[serde(rename = "attempts:read")]
    AttemptsRead,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 3] = [
        Role::EventsPublish,
        Role::SubscriptionsManage,
        Role::AttemptsRead,
    ];

    /// The role's name in the API, e.g. `events:publish`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::EventsPublish => "events:publish",
            Role::SubscriptionsManage => "subscriptions:manage",
            Role::AttemptsRead => "attempts:read",
        }
    }

    /// The role named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a request acts as. Holds no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The operator's admin credential (or an API running without authentication):
    /// every tenant, every action, and the management of API keys.
    Admin,
    /// A tenant API key.
    Tenant {
        /// The key's public id (`key_…`).
        key_id: String,
        /// The one tenant the key acts for.
        tenant: String,
        /// What it may do.
        roles: BTreeSet<Role>,
    },
}

/// Why a principal may not do what it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The key lacks the role the action needs (`403`).
    #[error("this API key lacks the `{0}` role")]
    MissingRole(Role),
    /// Only the admin credential may do this (`403`).
    #[error("only the admin credential may do this")]
    AdminOnly,
    /// The request names another tenant than the key's (`403`): used where the tenant
    /// comes from the request itself, so refusing it reveals nothing.
    #[error("this API key acts only for tenant `{key_tenant}`")]
    OtherTenant {
        /// The key's own tenant.
        key_tenant: String,
    },
    /// The resource belongs to another tenant: answered exactly as a missing one
    /// (`404`), so that ids of other tenants cannot be probed.
    #[error("not found")]
    Hidden,
}

impl Principal {
    /// The tenant a tenant key is scoped to; `None` for the admin.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Tenant { tenant, .. } => Some(tenant),
        }
    }

    /// Whether this is the admin credential.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// Passes when the principal holds `role` (the admin holds every role).
    pub fn require(&self, role: Role) -> Result<(), Denied> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { roles, .. } if roles.contains(&role) => Ok(()),
            Principal::Tenant { .. } => Err(Denied::MissingRole(role)),
        }
    }

    /// Passes for the admin only.
    pub fn require_admin(&self) -> Result<(), Denied> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Tenant { .. } => Err(Denied::AdminOnly),
        }
    }

    /// Passes when the principal may act for `tenant`, a tenant the request itself
    /// names (an event's or a new subscription's).
    pub fn act_for(&self, tenant: &str) -> Result<(), Denied> {
        match self.tenant() {
            Some(own) if own != tenant => Err(Denied::OtherTenant {
                key_tenant: own.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether a resource of `tenant` is visible to the principal at all.
    pub fn sees(&self, tenant: &str) -> bool {
        self.tenant().is_none_or(|own| own == tenant)
    }

    /// Passes when a resource of `tenant` is visible; else [`Denied::Hidden`].
    pub fn reveal(&self, tenant: &str) -> Result<(), Denied> {
        if self.sees(tenant) {
            Ok(())
        } else {
            Err(Denied::Hidden)
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("admin"),
            Principal::Tenant { key_id, .. } => f.write_str(key_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, roles: &[Role]) -> Principal {
        Principal::Tenant {
            key_id: "key_1".into(),
            tenant: tenant.into(),
            roles: roles.iter().copied().collect(),
        }
    }

    #[test]
    fn roles_have_stable_names() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
            assert_eq!(
                serde_json::to_value(role).unwrap(),
                serde_json::json!(role.as_str())
            );
        }
        assert_eq!(Role::parse("events:write"), None);
        assert_eq!(Role::parse(""), None);
    }

    #[test]
    fn the_admin_may_do_everything() {
        let admin = Principal::Admin;
        for role in Role::ALL {
            assert_eq!(admin.require(role), Ok(()));
        }
        assert_eq!(admin.require_admin(), Ok(()));
        assert_eq!(admin.act_for("anyone"), Ok(()));
        assert_eq!(admin.reveal("anyone"), Ok(()));
        assert_eq!(admin.tenant(), None);
    }

    #[test]
    fn a_tenant_key_holds_only_its_roles() {
        let publisher = key("acme", &[Role::EventsPublish]);
        assert_eq!(publisher.require(Role::EventsPublish), Ok(()));
        assert_eq!(
            publisher.require(Role::SubscriptionsManage),
            Err(Denied::MissingRole(Role::SubscriptionsManage))
        );
        assert_eq!(
            publisher.require(Role::AttemptsRead),
            Err(Denied::MissingRole(Role::AttemptsRead))
        );
        assert_eq!(publisher.require_admin(), Err(Denied::AdminOnly));
    }

    #[test]
    fn a_tenant_key_acts_for_and_sees_its_tenant_only() {
        let acme = key("acme", &Role::ALL);
        assert_eq!(acme.act_for("acme"), Ok(()));
        assert_eq!(
            acme.act_for("globex"),
            Err(Denied::OtherTenant {
                key_tenant: "acme".into()
            })
        );
        assert!(acme.sees("acme"));
        assert!(!acme.sees("globex"));
        assert!(!acme.sees("acme2"), "tenants compare whole, not by prefix");
        assert_eq!(acme.reveal("globex"), Err(Denied::Hidden));
        assert_eq!(acme.to_string(), "key_1");
    }
}
