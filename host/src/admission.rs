//! How many clients may be connected: in all and per tenant, one count for every endpoint (`/ws`
//! sessions and socket.io sockets, over WebSocket or long-polling alike).
//!
//! Owns the counters and the `pgws_connections{tenant}` gauge. A client holds a [`Ticket`] for as long
//! as it is connected; dropping the ticket gives its place back, whichever way the connection ends.
//! It does not decide who a client is (`auth`) or what it receives (`hub`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::envelope::TenantId;
use crate::metrics as m;

/// Most clients admitted.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub total: usize,
    pub per_tenant: usize,
}

impl From<&crate::config::LimitSettings> for ConnectionLimits {
    fn from(s: &crate::config::LimitSettings) -> Self {
        ConnectionLimits {
            total: s.max_connections,
            per_tenant: s.max_connections_per_tenant,
        }
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            total: usize::MAX,
            per_tenant: usize::MAX,
        }
    }
}

/// Why a client was not admitted.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum LimitReached {
    #[error("server is at its limit of {0} connections")]
    Total(usize),
    #[error("tenant is at its limit of {0} connections")]
    Tenant(usize),
}

impl LimitReached {
    /// The label of `pgws_connections_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            LimitReached::Total(_) => "server_full",
            LimitReached::Tenant(_) => "tenant_full",
        }
    }
}

/// The connection counts.
#[derive(Default)]
pub struct Admission {
    limits: ConnectionLimits,
    /// Connected clients in all, and per tenant with at least one (tenants leave the map when
    /// their last client goes, so it is bounded by the clients themselves).
    counts: Mutex<(usize, HashMap<TenantId, usize>)>,
}

/// A connected client's place. Dropping it frees the place.
pub struct Ticket {
    admission: Arc<Admission>,
    tenant: TenantId,
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Self {
        Admission {
            limits,
            counts: Mutex::default(),
        }
    }

    /// Takes a place for a client of `tenant`, unless a limit is reached.
    pub fn admit(self: &Arc<Self>, tenant: &TenantId) -> Result<Ticket, LimitReached> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_tenant) = &mut *counts;
        if *total >= self.limits.total {
            return Err(LimitReached::Total(self.limits.total));
        }
        let of_tenant = per_tenant.entry(tenant.clone()).or_default();
        if *of_tenant >= self.limits.per_tenant {
            if *of_tenant == 0 {
                per_tenant.remove(tenant);
            }
            return Err(LimitReached::Tenant(self.limits.per_tenant));
        }
        *of_tenant += 1;
        *total += 1;
        drop(counts);
        metrics::gauge!(m::CONNECTIONS, "tenant" => tenant.to_string()).increment(1.0);
        Ok(Ticket {
            admission: self.clone(),
            tenant: tenant.clone(),
        })
    }

    /// Clients connected in all.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (total, per_tenant) = &mut *counts;
        *total -= 1;
        if let Some(n) = per_tenant.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
        drop(counts);
        metrics::gauge!(m::CONNECTIONS, "tenant" => self.tenant.to_string()).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cap_clients_in_all_and_per_tenant() {
        let admission = Arc::new(Admission::new(ConnectionLimits {
            total: 3,
            per_tenant: 2,
        }));
        let a = TenantId::parse("a").expect("tenant");
        let b = TenantId::parse("b").expect("tenant");
        let a1 = admission.admit(&a).expect("place");
        let _a2 = admission.admit(&a).expect("place");
        assert!(matches!(admission.admit(&a), Err(LimitReached::Tenant(2))));
        let _b1 = admission.admit(&b).expect("place");
        assert!(matches!(admission.admit(&b), Err(LimitReached::Total(3))));
        drop(a1);
        assert_eq!(admission.total(), 2);
        assert!(admission.admit(&b).is_ok());
    }
}
