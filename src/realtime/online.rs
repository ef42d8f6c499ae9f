//! Who is online, per tenant, as this instance's hub last showed it: every
//! instance's sockets, through the bus. Kept for work outside the hub to
//! read without a round trip to the actor: the webhook processor assigns a
//! new conversation to an agent who is here now (`channels` setting
//! `auto_assign`). Away and offline agents are not in it. Someone who
//! comes online, or a change that may make room, wakes the queue's worker
//! (`inbox::hand_out`) for their tenant.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use tokio::sync::Notify;

use crate::ids::{TenantId, UserId};

#[derive(Default)]
pub struct Online {
    by_tenant: RwLock<HashMap<i64, HashSet<i64>>>,
    /// Tenants where someone came online since the worker last looked.
    arrivals: Mutex<HashSet<i64>>,
    arrived: Notify,
}

impl Online {
    /// The hub's word on a user, when what it shows of them changes.
    pub(super) fn set(&self, tenant: i64, user: i64, online: bool) {
        let Ok(mut by_tenant) = self.by_tenant.write() else { return };
        if online {
            if by_tenant.entry(tenant).or_default().insert(user) {
                self.look_at(TenantId(tenant));
            }
        } else if let Some(users) = by_tenant.get_mut(&tenant) {
            users.remove(&user);
            if users.is_empty() {
                by_tenant.remove(&tenant);
            }
        }
    }

    /// The tenant's members online now, in no order.
    pub fn of(&self, tenant: TenantId) -> Vec<UserId> {
        let Ok(by_tenant) = self.by_tenant.read() else { return Vec::new() };
        by_tenant.get(&tenant.0).map(|users| users.iter().map(|u| UserId(*u)).collect()).unwrap_or_default()
    }

    /// The tenants with someone online now.
    pub fn tenants(&self) -> Vec<TenantId> {
        let Ok(by_tenant) = self.by_tenant.read() else { return Vec::new() };
        by_tenant.keys().map(|t| TenantId(*t)).collect()
    }

    /// Completes once someone has come online since the arrivals were last
    /// taken (at once if someone has).
    pub async fn arrived(&self) {
        self.arrived.notified().await
    }

    /// Counts `tenant` among the arrivals and wakes the worker, whose next
    /// turn there may give more: someone came online; or again, its turn
    /// was another instance's, which may not have known of the newcomer;
    /// or someone's room or rule changed (a conversation resolved or handed
    /// on, a limit raised, a member listed: [`Online::room_changed`]).
    pub fn look_at(&self, tenant: TenantId) {
        if let Ok(mut arrivals) = self.arrivals.lock() {
            arrivals.insert(tenant.0);
        }
        self.arrived.notify_one();
    }

    /// What a change may have freed (room under a limit, a rule, a listed
    /// member) goes out at once rather than at the next 30 s look
    /// (`inbox::hand_out`), when someone of `tenant` is online to take it.
    pub fn room_changed(&self, tenant: TenantId) {
        let someone = self.by_tenant.read().is_ok_and(|by_tenant| by_tenant.contains_key(&tenant.0));
        if someone {
            self.look_at(tenant);
        }
    }

    /// The tenants where someone came online since last asked.
    pub fn take_arrivals(&self) -> Vec<TenantId> {
        let Ok(mut arrivals) = self.arrivals.lock() else { return Vec::new() };
        arrivals.drain().map(TenantId).collect()
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
        assert_eq!(o.tenants(), vec![TenantId(2)]);
    }

    #[test]
    fn coming_online_is_an_arrival_once() {
        let o = Online::default();
        o.set(1, 10, true);
        o.set(1, 10, true);
        o.set(2, 20, true);
        let mut arrived = o.take_arrivals();
        arrived.sort();
        assert_eq!(arrived, vec![TenantId(1), TenantId(2)]);
        assert!(o.take_arrivals().is_empty(), "taken");
        o.set(1, 10, true);
        assert!(o.take_arrivals().is_empty(), "already online: no arrival");
        o.set(1, 10, false);
        o.set(1, 10, true);
        assert_eq!(o.take_arrivals(), vec![TenantId(1)]);
    }
}
