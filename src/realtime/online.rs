//! Who is online, per tenant, as this instance's hub last showed it: every
//! instance's sockets, through the bus. Kept for work outside the hub to
//! read without a round trip to the actor: the webhook processor assigns a
//! new conversation to an agent who is here now (`channels` setting
//! `auto_assign`). Away and offline agents are not in it.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use crate::ids::{TenantId, UserId};

#[derive(Default)]
pub struct Online(RwLock<HashMap<i64, HashSet<i64>>>);

impl Online {
    /// The hub's word on a user, when what it shows of them changes.
    pub(super) fn set(&self, tenant: i64, user: i64, online: bool) {
        let Ok(mut by_tenant) = self.0.write() else { return };
        if online {
            by_tenant.entry(tenant).or_default().insert(user);
        } else if let Some(users) = by_tenant.get_mut(&tenant) {
            users.remove(&user);
            if users.is_empty() {
                by_tenant.remove(&tenant);
            }
        }
    }

    /// The tenant's members online now, in no order.
    pub fn of(&self, tenant: TenantId) -> Vec<UserId> {
        let Ok(by_tenant) = self.0.read() else { return Vec::new() };
        by_tenant.get(&tenant.0).map(|users| users.iter().map(|u| UserId(*u)).collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_and_gone() {
        let o = Online::default();
        o.set(1, 10, true);
        o.set(1, 11, true);
        o.set(2, 10, true);
        o.set(1, 10, false);
        assert_eq!(o.of(TenantId(1)), vec![UserId(11)]);
        o.set(1, 11, false);
        o.set(1, 12, false);
        assert!(o.of(TenantId(1)).is_empty());
        assert_eq!(o.of(TenantId(2)), vec![UserId(10)]);
    }
}
