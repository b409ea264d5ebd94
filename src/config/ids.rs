//! Typed ids: validation resolves every name a configuration refers to (a route's upstream,
//! its authentication providers, a tier) into an index into the list that declares it, so the
//! request path indexes instead of comparing or formatting strings. A [`Ref`] keeps the name
//! beside the id for rendering and logs.

use std::fmt;

use serde::{Serialize, Serializer};

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            /// The id of the item at `index` in its declaring list.
            pub fn new(index: usize) -> Self {
                $name(index as u32)
            }

            /// The position in the declaring list.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

typed_id!(
    /// A route: its position in [`Config::routes`](super::Config::routes).
    RouteId
);
typed_id!(
    /// An upstream: its position in [`Config::upstreams`](super::Config::upstreams).
    UpstreamId
);
typed_id!(
    /// An authentication provider: its position in
    /// [`AuthSettings::providers`](super::AuthSettings::providers).
    ProviderId
);
typed_id!(
    /// A rate-limit tier: its position in
    /// [`RateLimitSettings::tiers`](super::RateLimitSettings::tiers).
    TierId
);

/// A resolved reference: the id the request path uses and the name it was written as.
/// Serialises as the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref<I> {
    /// The resolved id.
    pub id: I,
    /// The name as written in the file (`jwt:main` for providers).
    pub name: String,
}

impl<I> Ref<I> {
    /// A reference to `id`, written as `name`.
    pub fn new(id: I, name: impl Into<String>) -> Self {
        Ref {
            id,
            name: name.into(),
        }
    }
}

impl<I> Serialize for Ref<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_and_refs_render_as_names() {
        let r = Ref::new(UpstreamId::new(3), "users");
        assert_eq!(r.id.index(), 3);
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"users\"");
    }
}
