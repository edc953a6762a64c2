//! Who a console request comes from, and what they may do: the caller's
//! permissions checked against the rule of the RPC a page or an action
//! stands for (the table generated from the proto).

use crate::{
    auth::{
        caller::Caller,
        policy::{self, AccessRule},
    },
    domain::Actor,
};

/// The signed-in person of a request.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The caller and the client, as every domain function takes them.
    pub actor: Actor,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
}

impl Viewer {
    /// The caller.
    pub fn caller(&self) -> &Caller {
        &self.actor.caller
    }

    /// Whether the caller may call `rpc` (the RPC's declared rule).
    pub fn may(&self, rpc: &str) -> bool {
        match policy::rule_for(rpc) {
            Some(AccessRule::Permission(required)) => self.caller().holds(required),
            Some(AccessRule::Authenticated | AccessRule::Public) => true,
            None => false,
        }
    }
}
