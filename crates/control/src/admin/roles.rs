//! Who may call which admin endpoint: five roles, each endpoint needing one
//! capability, and the table of every route. The table is the one place a
//! route's permission is written: the router is checked against it, the
//! OpenAPI document is checked against it, and a test walks every route with
//! every role and compares with the table in docs/admin-api.md.

use axum::http::Method;

/// An admin identity's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Owner,
    /// Everything but admin tokens.
    Admin,
    /// Keys (and, later, limits and routing overrides); no org or project
    /// writes, no credentials.
    Operator,
    /// Usage and crediting prepaid balances; reads.
    Billing,
    /// Reads only.
    Viewer,
}

impl Role {
    /// Every role, from most to least powerful.
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Operator,
        Role::Billing,
        Role::Viewer,
    ];

    /// The role a config or database names.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Billing => "billing",
            Role::Viewer => "viewer",
        }
    }

    /// Whether this role has `need`.
    pub fn can(self, need: Need) -> bool {
        use Role::*;
        match need {
            Need::Read | Need::Usage => true,
            Need::Tenants => matches!(self, Owner | Admin),
            Need::Keys => matches!(self, Owner | Admin | Operator),
            Need::Audit => matches!(self, Owner | Admin | Viewer),
            Need::Credentials => matches!(self, Owner | Admin),
            Need::AdminTokens => matches!(self, Owner),
            Need::Balances => matches!(self, Owner | Admin | Billing),
            Need::Pricing => matches!(self, Owner | Admin | Billing),
            Need::Routing => matches!(self, Owner | Admin),
        }
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Reading orgs, projects and keys.
    Read,
    /// Creating, changing and disabling orgs and projects.
    Tenants,
    /// Creating, changing, rotating and revoking keys.
    Keys,
    /// Reading usage.
    Usage,
    /// Reading the audit log.
    Audit,
    /// Setting, listing and deleting provider credentials (never reading one).
    Credentials,
    /// Issuing, listing and revoking admin tokens.
    AdminTokens,
    /// Crediting prepaid balances.
    Balances,
    /// Making price versions and plans, and putting orgs on plans.
    Pricing,
    /// Declaring pipelines.
    Routing,
}

/// One admin route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Its method.
    pub method: &'static str,
    /// Its path, as axum and the OpenAPI document write it.
    pub path: &'static str,
    /// What it needs.
    pub need: Need,
    /// Only identities of the whole deployment may call it (not one org's).
    pub deployment_only: bool,
}

const fn route(method: &'static str, path: &'static str, need: Need) -> Route {
    Route {
        method,
        path,
        need,
        deployment_only: false,
    }
}

const fn deployment(method: &'static str, path: &'static str, need: Need) -> Route {
    Route {
        method,
        path,
        need,
        deployment_only: true,
    }
}

/// Every admin route.
pub const ROUTES: &[Route] = &[
    route("GET", "/admin/v1/whoami", Need::Read),
    deployment("POST", "/admin/v1/orgs", Need::Tenants),
    route("GET", "/admin/v1/orgs", Need::Read),
    route("GET", "/admin/v1/orgs/{id}", Need::Read),
    deployment("PATCH", "/admin/v1/orgs/{id}", Need::Tenants),
    deployment("DELETE", "/admin/v1/orgs/{id}", Need::Tenants),
    deployment("POST", "/admin/v1/orgs/{id}/credits", Need::Balances),
    route("POST", "/admin/v1/orgs/{id}/topups", Need::Balances),
    route("GET", "/admin/v1/orgs/{id}/balance", Need::Read),
    route("GET", "/admin/v1/orgs/{id}/invoices/{period}", Need::Usage),
    route("GET", "/admin/v1/orgs/{id}/pricing", Need::Read),
    deployment("PUT", "/admin/v1/orgs/{id}/pricing", Need::Pricing),
    deployment("GET", "/admin/v1/prices", Need::Read),
    deployment("POST", "/admin/v1/prices", Need::Pricing),
    deployment("GET", "/admin/v1/prices/{version}", Need::Read),
    deployment("GET", "/admin/v1/pipelines", Need::Read),
    deployment("GET", "/admin/v1/pipelines/{name}", Need::Read),
    deployment("PUT", "/admin/v1/pipelines/{name}", Need::Routing),
    deployment("DELETE", "/admin/v1/pipelines/{name}", Need::Routing),
    deployment("GET", "/admin/v1/plans", Need::Read),
    deployment("POST", "/admin/v1/plans", Need::Pricing),
    deployment("GET", "/admin/v1/plans/{name}", Need::Read),
    deployment("PATCH", "/admin/v1/plans/{name}", Need::Pricing),
    deployment("DELETE", "/admin/v1/plans/{name}", Need::Pricing),
    route("POST", "/admin/v1/projects", Need::Tenants),
    route("GET", "/admin/v1/projects", Need::Read),
    route("GET", "/admin/v1/projects/{id}", Need::Read),
    route("PATCH", "/admin/v1/projects/{id}", Need::Tenants),
    route("DELETE", "/admin/v1/projects/{id}", Need::Tenants),
    route("POST", "/admin/v1/keys", Need::Keys),
    route("GET", "/admin/v1/keys", Need::Read),
    route("GET", "/admin/v1/keys/{id}", Need::Read),
    route("PATCH", "/admin/v1/keys/{id}", Need::Keys),
    route("DELETE", "/admin/v1/keys/{id}", Need::Keys),
    route("POST", "/admin/v1/keys/{id}/rotate", Need::Keys),
    deployment("GET", "/admin/v1/audit", Need::Audit),
    route("GET", "/admin/v1/usage", Need::Usage),
    route("GET", "/admin/v1/overview", Need::Usage),
    route("GET", "/admin/v1/requests", Need::Usage),
    deployment("GET", "/admin/v1/targets", Need::Read),
    deployment("PUT", "/admin/v1/targets", Need::Routing),
    deployment("GET", "/admin/v1/routing", Need::Read),
    deployment("POST", "/admin/v1/route/explain", Need::Read),
    deployment("GET", "/admin/v1/batches", Need::Read),
    route("POST", "/admin/v1/credentials", Need::Credentials),
    route("GET", "/admin/v1/credentials", Need::Credentials),
    route("GET", "/admin/v1/credentials/{id}", Need::Credentials),
    route("PATCH", "/admin/v1/credentials/{id}", Need::Credentials),
    route("DELETE", "/admin/v1/credentials/{id}", Need::Credentials),
    route("POST", "/admin/v1/admin-tokens", Need::AdminTokens),
    route("GET", "/admin/v1/admin-tokens", Need::AdminTokens),
    route("DELETE", "/admin/v1/admin-tokens/{id}", Need::AdminTokens),
];

/// The route for `method` on the request path `path`, if it is an admin
/// route (`{id}` stands for any one segment).
pub fn find(method: &Method, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.method == method.as_str() && fits(r.path, path))
}

fn fits(template: &str, path: &str) -> bool {
    let (mut t, mut p) = (template.split('/'), path.split('/'));
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) if ts.starts_with('{') => {
                if ps.is_empty() {
                    return false;
                }
            }
            (Some(ts), Some(ps)) if ts == ps => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_narrow_in_order() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        // Each need, by role: the more powerful role can do at least as much.
        for need in [Need::Read, Need::Tenants, Need::Keys, Need::Usage] {
            let can: Vec<bool> = Role::ALL.iter().map(|r| r.can(need)).collect();
            assert!(
                can.windows(2).take(3).all(|w| w[0] >= w[1]),
                "{need:?}: {can:?}"
            );
        }
        assert!(!Role::Operator.can(Need::Tenants) && Role::Operator.can(Need::Keys));
        assert!(!Role::Billing.can(Need::Keys) && Role::Billing.can(Need::Usage));
        assert!(!Role::Viewer.can(Need::Keys) && Role::Viewer.can(Need::Audit));
        assert!(!Role::Operator.can(Need::Credentials) && Role::Admin.can(Need::Credentials));
        assert!(Role::Owner.can(Need::AdminTokens) && !Role::Admin.can(Need::AdminTokens));
    }

    #[test]
    fn a_request_path_finds_its_route() {
        let f = |m: Method, p: &str| find(&m, p).map(|r| r.path);
        assert_eq!(
            f(Method::GET, "/admin/v1/keys/abc"),
            Some("/admin/v1/keys/{id}")
        );
        assert_eq!(
            f(Method::POST, "/admin/v1/keys/abc/rotate"),
            Some("/admin/v1/keys/{id}/rotate")
        );
        assert_eq!(f(Method::POST, "/admin/v1/keys/abc"), None);
        assert_eq!(f(Method::GET, "/admin/v1/keys/"), None);
        assert_eq!(f(Method::GET, "/admin/v1/keys/a/b"), None);
        assert_eq!(f(Method::GET, "/admin/v1/orgs"), Some("/admin/v1/orgs"));
    }

    #[test]
    fn every_route_is_listed_once() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert!(
                !ROUTES[..i]
                    .iter()
                    .any(|o| o.method == r.method && o.path == r.path),
                "{r:?}"
            );
        }
    }
}
