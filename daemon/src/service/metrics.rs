//! The control thread's part of `/metrics` and `/readyz`: the kernel's
//! counters and table sizes and the reload outcomes, which only the control
//! thread may read.

use crate::admin::{ControlSnapshot, KernelSnapshot};
use crate::filter::{EntryOrigin, ListKind};

use super::controller::{Controller, origin_name};

/// What the control thread reports to the admin listener.
pub(crate) fn snapshot(c: &Controller) -> ControlSnapshot {
    let filter = c.filter.as_ref().map(|filter| {
        let counters = filter
            .counters()
            .map_err(|e| {
                tracing::warn!(error = %super::chain(&e), "reading the kernel counters failed");
            })
            .ok();
        let mut lists = Vec::new();
        let mut active_bans = 0;
        for kind in [ListKind::Deny, ListKind::Allow, ListKind::Bypass] {
            let entries = filter.list(kind);
            for origin in [
                EntryOrigin::Config,
                EntryOrigin::Operator,
                EntryOrigin::Auto,
            ] {
                let n = entries.iter().filter(|e| e.origin == origin).count();
                if kind == ListKind::Deny && origin == EntryOrigin::Auto {
                    active_bans = n;
                }
                lists.push((kind.name(), origin_name(origin), n));
            }
        }
        KernelSnapshot {
            counters,
            lists,
            country_prefixes: c
                .loaded_countries
                .as_ref()
                .map_or(c.config_countries.prefixes.len(), Vec::len),
            active_bans,
            interfaces_attached: c.interfaces.len(),
        }
    });
    ControlSnapshot {
        filter,
        reloads_ok: c.reloads.ok,
        reloads_failed: c.reloads.failed,
        last_reload_success: c.reloads.last_success.unwrap_or(0),
        bans_issued: c.bans_issued,
    }
}

/// Starts the admin listener of `config` (none with `admin_listen = "off"`);
/// it asks the control thread through `inbox`. A bind failure is a start error.
pub(crate) async fn start_admin(
    config: &crate::config::Config,
    gateway: Option<&std::sync::Arc<crate::gateway::running::RunningGateway>>,
    inbox: &std::sync::mpsc::Sender<super::controller::Message>,
) -> Result<Option<crate::admin::AdminListener>, super::ServiceError> {
    let Some(addr) = config.daemon.admin_listen else {
        tracing::info!("admin listener off (daemon.admin_listen = \"off\")");
        return Ok(None);
    };
    let inbox = std::sync::Mutex::new(inbox.clone());
    let control: crate::admin::AskControl = std::sync::Arc::new(move |reply| {
        inbox
            .lock()
            .is_ok_and(|tx| tx.send(super::controller::Message::Metrics(reply)).is_ok())
    });
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let sources = crate::admin::AdminSources {
        gateway: gateway.cloned(),
        control,
        started,
    };
    Ok(Some(
        crate::admin::AdminListener::start(addr, sources).await?,
    ))
}
