//! Who a request is, once authenticated, and the bounded set of reasons it may be refused.

use std::sync::Arc;

use http::HeaderValue;

use crate::config::ProviderId;

/// An authenticated caller. Built once per API key record or verified token (and shared via
/// `Arc`), with the identity headers for the upstream already encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The consumer (API key owner or JWT consumer claim).
    pub consumer: String,
    /// Rate-limit tier, if the credential names one.
    pub tier: Option<String>,
    /// The provider that authenticated it.
    pub provider: ProviderId,
    /// The same, as `jwt:NAME` or `api_key:NAME` (for `X-Auth-Method` and the access log).
    pub method: String,
    /// Roles (JWT roles claim).
    pub roles: Vec<String>,
    /// Scopes (JWT `scope`, API key scopes).
    pub scopes: Vec<String>,
    /// The API key id, when authenticated by an API key (safe to log).
    pub key_id: Option<String>,
    /// `X-Consumer-Id`, `X-Consumer-Tier`, `X-Auth-Method`, `X-Auth-Roles`, `X-Auth-Scopes`,
    /// ready to send (values that cannot be header values are left out).
    /// Each as (index in [`super::IDENTITY_HEADERS`], value).
    pub headers: Vec<(usize, HeaderValue)>,
}

impl Identity {
    /// Builds an identity and encodes its upstream headers.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        consumer: String,
        tier: Option<String>,
        provider: ProviderId,
        method: String,
        roles: Vec<String>,
        scopes: Vec<String>,
        key_id: Option<String>,
    ) -> Arc<Self> {
        let mut headers = Vec::with_capacity(5);
        let mut add = |name: usize, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.push((name, v));
            }
        };
        // Indexes into IDENTITY_HEADERS.
        add(0, &consumer);
        if let Some(t) = &tier {
            add(1, t);
        }
        add(2, &method);
        if !roles.is_empty() {
            add(3, &roles.join(","));
        }
        if !scopes.is_empty() {
            add(4, &scopes.join(" "));
        }
        Arc::new(Identity {
            consumer,
            tier,
            provider,
            method,
            roles,
            scopes,
            key_id,
            headers,
        })
    }
}

/// Why authentication or authorisation failed. The set is closed: it is used as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No credential for any of the route's providers.
    Missing,
    /// The credential cannot be parsed, is too large or lacks a required claim.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` or `iat` is in the future.
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    WrongIssuer,
    /// `aud` is missing or names none of the configured audiences.
    WrongAudience,
    /// No key for the token's `kid`, or an unknown API key.
    UnknownKey,
    /// The token's `alg` is not allowed (or does not fit the key).
    AlgorithmNotAllowed,
    /// The API key was revoked (disabled).
    RevokedKey,
    /// The API key has expired.
    ExpiredKey,
    /// Authenticated, but a required scope is missing (403).
    InsufficientScope,
    /// Authenticated, but none of the required roles is held (403).
    MissingRole,
    /// The introspection endpoint says the token is not active (revoked, expired, unknown).
    Inactive,
    /// The token could not be checked (introspection endpoint down, slow or refusing) and the
    /// provider answers 503 for that (`on_error = "unavailable"`).
    Unavailable,
    /// The same, with `on_error = "deny"` (401).
    Unverified,
}

impl Reason {
    /// How much a refusal for this reason says about the credential, for choosing among the
    /// refusals of a route's several providers: a provider that took the token as its own
    /// (its algorithm and key fit) and then refused it on signature, time, issuer or audience
    /// knows more than one for which the token was not meant ("algorithm not allowed").
    pub fn specificity(self) -> u8 {
        match self {
            Reason::Missing => 0,
            Reason::AlgorithmNotAllowed => 1,
            Reason::Malformed | Reason::UnknownKey => 2,
            Reason::BadSignature
            | Reason::Expired
            | Reason::NotYetValid
            | Reason::WrongIssuer
            | Reason::WrongAudience
            | Reason::RevokedKey
            | Reason::ExpiredKey
            | Reason::InsufficientScope
            | Reason::MissingRole
            | Reason::Inactive => 3,
            // Says nothing about the credential, but must not be hidden behind a weaker
            // provider's "not for me" (an operator has to see the endpoint is down).
            Reason::Unavailable | Reason::Unverified => 2,
        }
    }

    /// Every reason, in label order.
    pub const ALL: [Reason; 16] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::UnknownKey,
        Reason::AlgorithmNotAllowed,
        Reason::RevokedKey,
        Reason::ExpiredKey,
        Reason::InsufficientScope,
        Reason::MissingRole,
        Reason::Inactive,
        Reason::Unavailable,
        Reason::Unverified,
    ];

    /// The reason as sent in bodies and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::UnknownKey => "unknown_key",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::RevokedKey => "revoked_key",
            Reason::ExpiredKey => "expired_key",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::MissingRole => "missing_role",
            Reason::Inactive => "inactive_token",
            Reason::Unavailable => "unavailable",
            Reason::Unverified => "unverified",
        }
    }

    /// Position in [`Reason::ALL`].
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// Whether this is an authorisation (403) rather than authentication (401) failure.
    pub fn is_forbidden(self) -> bool {
        matches!(self, Reason::InsufficientScope | Reason::MissingRole)
    }
}

/// A refusal: the reason and a human-readable description (never containing the credential).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The bounded reason.
    pub reason: Reason,
    /// What exactly was wrong.
    pub description: String,
    /// The provider that refused (`None` when no credential was presented).
    pub provider: Option<ProviderId>,
}

impl Denial {
    /// A denial for `reason` with `description`.
    pub fn new(reason: Reason, description: impl Into<String>) -> Self {
        Denial {
            reason,
            description: description.into(),
            provider: None,
        }
    }
}
