//! Who is calling, and what they may reach.
//!
//! End users reach only their own user, preferences, devices and eligibility. Service
//! callers (the gateway, the senders, back offices) reach every user, but only through the
//! [`Scope`]s their credential carries: least privilege, so that a caller the network vouches
//! for, or a leaked key of one sender, cannot list, change or erase users. How a caller
//! proves who it is (service keys, access tokens, a trusted network) is the HTTP adapter's
//! business; the rules live here.

use std::fmt;
use std::sync::Arc;

use crate::consent::{Actor, ActorKind};
use crate::device::HeldToken;
use crate::user::{PasswordHash, UserId};

/// One thing a service caller may do. Every protected route requires exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read one user: the representation, its preferences and its devices.
    UsersRead,
    /// List users page by page.
    UsersList,
    /// Look many users up at once by id.
    UsersLookup,
    /// Change a user's contact details.
    UsersWrite,
    /// Erase a user.
    UsersDelete,
    /// Change a user's preferences.
    PreferencesWrite,
    /// Register, activate and remove a user's devices.
    DevicesWrite,
    /// Deactivate a user's device (a push sender reporting a dead token).
    DevicesDeactivate,
    /// Ask whether users may be notified (one or many).
    EligibilityRead,
    /// Read a user's consent history (past addresses included).
    ConsentRead,
    /// Manage the notification category catalogue.
    Admin,
    /// Read the change events feed (every user's changes, addresses included).
    EventsRead,
}

impl Scope {
    /// Every scope, in the order they are documented.
    pub const ALL: [Self; 12] = [
        Self::UsersRead,
        Self::UsersList,
        Self::UsersLookup,
        Self::UsersWrite,
        Self::UsersDelete,
        Self::PreferencesWrite,
        Self::DevicesWrite,
        Self::DevicesDeactivate,
        Self::EligibilityRead,
        Self::ConsentRead,
        Self::Admin,
        Self::EventsRead,
    ];

    /// The name used in configuration, logs and error messages (`users.read`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::UsersRead => "users.read",
            Self::UsersList => "users.list",
            Self::UsersLookup => "users.lookup",
            Self::UsersWrite => "users.write",
            Self::UsersDelete => "users.delete",
            Self::PreferencesWrite => "preferences.write",
            Self::DevicesWrite => "devices.write",
            Self::DevicesDeactivate => "devices.deactivate",
            Self::EligibilityRead => "eligibility.read",
            Self::ConsentRead => "consent.read",
            Self::Admin => "admin",
            Self::EventsRead => "events.read",
        }
    }

    /// The scope of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.name() == name)
    }

    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Scope`]s.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u16);

impl Scopes {
    /// Every scope (`*`).
    pub const ALL: Self = Self::of(&Scope::ALL);

    /// What the seed system's two credential-less clients need, and all that a caller the
    /// network vouches for gets: read one user (the gateway), deactivate a device (the push
    /// sender), and ask for eligibility.
    pub const INTERNAL_NETWORK: Self = Self::of(&[Scope::UsersRead, Scope::EligibilityRead, Scope::DevicesDeactivate]);

    /// The set of these scopes.
    pub const fn of(scopes: &[Scope]) -> Self {
        let mut bits = 0;
        let mut index = 0;
        while index < scopes.len() {
            bits |= scopes[index].bit();
            index += 1;
        }
        Self(bits)
    }

    /// Reads `*` (every scope) or a comma-separated list of scope names. The error names
    /// the unknown scope and lists the known ones.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw == "*" {
            return Ok(Self::ALL);
        }
        let mut scopes = Self::default();
        for name in raw.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            let scope = Scope::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|scope| scope.name()).collect();
                format!("unknown scope {name:?}; the scopes are * or {}", known.join(", "))
            })?;
            scopes.0 |= scope.bit();
        }
        if scopes.is_empty() {
            return Err("no scope given; use * for every scope".to_owned());
        }
        Ok(scopes)
    }

    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scopes in the set, in documented order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |scope| self.contains(*scope))
    }
}

impl fmt::Display for Scopes {
    /// `*` for every scope, else the names separated by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ALL {
            return f.write_str("*");
        }
        let names: Vec<&str> = self.iter().map(Scope::name).collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// How a service caller was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceProof {
    /// It presented one of the configured keys.
    Key,
    /// It presented nothing and the network vouches for it (`TRUST_INTERNAL_NETWORK`).
    Network,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A service: the gateway, a sender, a back office.
    Service {
        /// A non-secret name: the key's configured name, a name derived from the key's
        /// digest for unnamed keys, or `internal-network`. Logged, and scopes idempotency.
        /// Shared, not copied: a principal is resolved for every request.
        name: Arc<str>,
        /// What it may do.
        scopes: Scopes,
        /// How it was recognised.
        proof: ServiceProof,
    },
    /// An end user with a valid access token.
    User(UserId),
}

impl fmt::Display for Principal {
    /// [`Principal::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service { name, .. } => write!(f, "service:{name}"),
            Self::User(id) => write!(f, "user:{id}"),
        }
    }
}

/// Why the caller may not do this. Each message says what would be needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessDenied {
    /// An end user asked for another user's data.
    #[error("an access token reaches only its own user's data")]
    NotOwner,
    /// A service caller lacks the scope the route needs.
    #[error("this caller lacks the scope {0}")]
    MissingScope(Scope),
    /// Only service callers may do this (lists and bulk routes).
    #[error("only service callers (X-Service-Key) may do this")]
    ServicesOnly,
    /// Only the user itself may do this (changing its password).
    #[error("only the user itself, with its own access token, may do this")]
    OwnerOnly,
}

impl Principal {
    /// Whether the caller may do what `scope` covers on `user`'s data: the user itself may
    /// do anything to its own data, a service needs the scope.
    pub fn authorize_for_user(&self, user: UserId, scope: Scope) -> Result<(), AccessDenied> {
        match self {
            Self::Service { scopes, .. } if scopes.contains(scope) => Ok(()),
            Self::Service { .. } => Err(AccessDenied::MissingScope(scope)),
            Self::User(id) if *id == user => Ok(()),
            Self::User(_) => Err(AccessDenied::NotOwner),
        }
    }

    /// Whether the caller may do what `scope` covers across users (lists, bulk routes):
    /// services with the scope only.
    pub fn authorize_across_users(&self, scope: Scope) -> Result<(), AccessDenied> {
        match self {
            Self::Service { scopes, .. } if scopes.contains(scope) => Ok(()),
            Self::Service { .. } => Err(AccessDenied::MissingScope(scope)),
            Self::User(_) => Err(AccessDenied::ServicesOnly),
        }
    }

    /// Whether the caller is `user` itself (services included would be too broad, e.g.
    /// for changing a password).
    pub fn require_owner(&self, user: UserId) -> Result<(), AccessDenied> {
        match self {
            Self::User(id) if *id == user => Ok(()),
            _ => Err(AccessDenied::OwnerOnly),
        }
    }

    /// A stable, non-secret name of the caller (`service:gateway`, `user:<id>`): logged
    /// with each request (as the principal's `Display`, written only when a line is), and
    /// idempotency keys are scoped by it.
    pub fn name(&self) -> String {
        self.to_string()
    }

    /// What a registration by this caller does with a `push_token` another user holds: only
    /// a service trusted with devices (`devices.write`) may move it; anyone else (anonymous,
    /// an end user) leaves it with its owner.
    pub fn held_token_policy(caller: Option<&Self>) -> HeldToken {
        match caller {
            Some(Self::Service { scopes, .. }) if scopes.contains(Scope::DevicesWrite) => HeldToken::Move,
            _ => HeldToken::Leave,
        }
    }

    /// Who the caller is in a user's consent history: a user, a service that presented a
    /// key, or a caller the network vouches for (`trusted`).
    pub fn actor(&self) -> Actor {
        match self {
            Self::Service { name, proof: ServiceProof::Key, .. } => {
                Actor { kind: ActorKind::Service, name: name.to_string() }
            }
            Self::Service { name, proof: ServiceProof::Network, .. } => {
                Actor { kind: ActorKind::Trusted, name: name.to_string() }
            }
            Self::User(id) => Actor::user(*id),
        }
    }

    /// Whether the caller presented a credential of its own (a key or an access token),
    /// rather than only being vouched for by the network.
    pub fn holds_credential(&self) -> bool {
        !matches!(self, Self::Service { proof: ServiceProof::Network, .. })
    }

    /// Whether the caller proved itself with a key (the per-address limits spare those,
    /// since one gateway acts for many clients; a caller the network vouches for is
    /// counted like anyone else).
    pub fn holds_service_key(&self) -> bool {
        matches!(self, Self::Service { proof: ServiceProof::Key, .. })
    }
}

/// What login needs to know about an account.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The account.
    pub user_id: UserId,
    /// The stored password hash.
    pub password_hash: PasswordHash,
    /// The version access tokens must carry.
    pub token_version: i32,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .field("token_version", &self.token_version)
            .finish_non_exhaustive()
    }
}

/// A successful login: whose, and the token version to issue under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// The account.
    pub user_id: UserId,
    /// The current token version.
    pub token_version: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(scopes: Scopes) -> Principal {
        Principal::Service { name: "gateway".into(), scopes, proof: ServiceProof::Key }
    }

    #[test]
    fn users_reach_only_themselves_and_services_reach_what_their_scopes_cover() {
        let alice = UserId::generate();
        let bob = UserId::generate();
        let everything = service(Scopes::ALL);
        let reader = service(Scopes::of(&[Scope::UsersRead]));
        for scope in Scope::ALL {
            assert!(everything.authorize_for_user(alice, scope).is_ok());
            assert!(everything.authorize_across_users(scope).is_ok());
            assert!(Principal::User(alice).authorize_for_user(alice, scope).is_ok());
            assert_eq!(Principal::User(alice).authorize_for_user(bob, scope), Err(AccessDenied::NotOwner));
            assert_eq!(Principal::User(alice).authorize_across_users(scope), Err(AccessDenied::ServicesOnly));
            let expected = if scope == Scope::UsersRead { Ok(()) } else { Err(AccessDenied::MissingScope(scope)) };
            assert_eq!(reader.authorize_for_user(alice, scope), expected);
        }
        assert!(Principal::User(alice).require_owner(alice).is_ok());
        assert_eq!(everything.require_owner(alice), Err(AccessDenied::OwnerOnly));
        assert_ne!(Principal::User(alice).name(), Principal::User(bob).name());
        assert_eq!(reader.name(), "service:gateway");
    }

    #[test]
    fn a_denial_names_the_missing_scope() {
        let denied = service(Scopes::INTERNAL_NETWORK).authorize_across_users(Scope::UsersList).unwrap_err();
        assert_eq!(denied.to_string(), "this caller lacks the scope users.list");
    }

    #[test]
    fn scopes_parse_from_names_or_a_star_and_print_back() {
        assert_eq!(Scopes::parse("*"), Ok(Scopes::ALL));
        let parsed = Scopes::parse(" users.read, devices.deactivate ").unwrap();
        assert_eq!(parsed, Scopes::of(&[Scope::UsersRead, Scope::DevicesDeactivate]));
        assert_eq!(parsed.to_string(), "users.read,devices.deactivate");
        assert_eq!(Scopes::ALL.to_string(), "*");
        assert_eq!(Scopes::parse(&Scopes::INTERNAL_NETWORK.to_string()), Ok(Scopes::INTERNAL_NETWORK));
        let error = Scopes::parse("users.read,users.admin").unwrap_err();
        assert!(error.contains("users.admin") && error.contains("eligibility.read"), "{error}");
        assert!(Scopes::parse("").is_err());
        assert!(Scopes::parse(" , ").is_err());
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.name()), Some(scope));
        }
    }

    #[test]
    fn only_a_service_trusted_with_devices_may_move_a_held_token_at_registration() {
        assert_eq!(Principal::held_token_policy(Some(&service(Scopes::ALL))), HeldToken::Move);
        assert_eq!(Principal::held_token_policy(Some(&service(Scopes::INTERNAL_NETWORK))), HeldToken::Leave);
        assert_eq!(Principal::held_token_policy(Some(&Principal::User(UserId::generate()))), HeldToken::Leave);
        assert_eq!(Principal::held_token_policy(None), HeldToken::Leave);
    }

    #[test]
    fn only_key_holders_are_spared_the_per_address_limits() {
        assert!(service(Scopes::ALL).holds_service_key());
        let network = Principal::Service {
            name: "internal-network".into(),
            scopes: Scopes::INTERNAL_NETWORK,
            proof: ServiceProof::Network,
        };
        assert!(!network.holds_service_key());
        assert!(!Principal::User(UserId::generate()).holds_service_key());
    }
}
