//! The daemon's side of the control socket.
//!
//! The socket is created inside its own directory, which is made (or fixed) to
//! mode 0750 and group `control_group` (0700 and root's group without one)
//! *before* the socket is bound: nobody else can reach the socket even for the
//! instant after `bind` (no bind-then-chmod). Each connection's peer
//! credentials (SO_PEERCRED) are checked again: root, the daemon's own user, or
//! a member of the control group. Requests are forwarded to the daemon's
//! control thread with the peer's credentials, which are recorded with every
//! change; `events` is answered here from the [`EventLog`].

use std::{
    collections::VecDeque,
    io,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, oneshot},
};
use tokio_util::sync::CancellationToken;

use super::protocol::{
    ErrorKind, ErrorReply, EventView, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Reply, Request,
    RequestEnvelope, Response,
};

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot prepare the control socket directory {}", path.display())]
    Directory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another rampartd is already serving {}", path.display())]
    InUse { path: PathBuf },
    #[error("cannot bind the control socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control_group {name:?}: no such group")]
    UnknownGroup { name: String },
}

/// Who is on the other end of a control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

/// One request for the control thread, with the channel its answer goes back on.
pub struct Command {
    pub request: Request,
    pub peer: Peer,
    pub reply: oneshot::Sender<Response>,
}

/// Hands a [`Command`] to whoever carries requests out (the daemon's control
/// thread); `false` when it is gone.
pub type Dispatch = Arc<dyn Fn(Command) -> bool + Send + Sync>;

/// Recent events for `rampart events`, and the live stream for `--follow`.
pub struct EventLog {
    recent: Mutex<VecDeque<EventView>>,
    live: broadcast::Sender<EventView>,
    capacity: usize,
}

impl EventLog {
    pub fn new(capacity: usize) -> Arc<Self> {
        let (live, _) = broadcast::channel(1024);
        Arc::new(Self {
            recent: Mutex::new(VecDeque::with_capacity(capacity)),
            live,
            capacity,
        })
    }

    /// Records an event (and sends it to every follower).
    pub fn push(
        &self,
        event: impl Into<String>,
        message: impl Into<String>,
        fields: Vec<(String, String)>,
    ) {
        let view = EventView {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            event: event.into(),
            message: message.into(),
            fields,
        };
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == self.capacity {
                recent.pop_front();
            }
            recent.push_back(view.clone());
        }
        // No follower is fine.
        let _ = self.live.send(view);
    }

    /// The last `n` events, oldest first.
    pub fn last(&self, n: usize) -> Vec<EventView> {
        self.recent.lock().map_or_else(
            |_| Vec::new(),
            |recent| recent.iter().rev().take(n).rev().cloned().collect(),
        )
    }

    fn subscribe(&self) -> broadcast::Receiver<EventView> {
        self.live.subscribe()
    }
}

/// Where the socket lives and who may use it.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    pub path: PathBuf,
    /// The group (besides root) allowed to use the socket.
    pub group: Option<String>,
}

/// A bound control socket.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    group: Option<u32>,
    dispatch: Dispatch,
    events: Arc<EventLog>,
}

/// The gid of a group name.
pub fn group_id(name: &str) -> Result<u32, ControlError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(ControlError::UnknownGroup {
            name: name.to_owned(),
        }),
    }
}

impl ControlServer {
    /// Prepares the directory, then binds. A live socket of another daemon is
    /// left alone ([`ControlError::InUse`]); a stale one is replaced.
    pub async fn bind(
        settings: &SocketSettings,
        dispatch: Dispatch,
        events: Arc<EventLog>,
    ) -> Result<Self, ControlError> {
        let group = settings.group.as_deref().map(group_id).transpose()?;
        let path = settings.path.clone();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        prepare_directory(&dir, path.file_name(), group).map_err(|source| {
            ControlError::Directory {
                path: dir.clone(),
                source,
            }
        })?;
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            // Only a socket (one a stopped rampartd left) is replaced: a file of
            // another kind at that path is someone's, and a typo must not delete it.
            use std::os::unix::fs::FileTypeExt as _;
            if !meta.file_type().is_socket() {
                return Err(ControlError::Bind {
                    path,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a socket; rampartd replaces only a socket it left",
                    ),
                });
            }
            if UnixStream::connect(&path).await.is_ok() {
                return Err(ControlError::InUse { path });
            }
            std::fs::remove_file(&path).map_err(|source| ControlError::Bind {
                path: path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&path).map_err(|source| ControlError::Bind {
            path: path.clone(),
            source,
        })?;
        // The socket's own mode follows the umask; connecting needs write
        // permission on it, so members of the control group get it here. This
        // opens no window: the directory (0750, the control group) already keeps
        // everyone else from reaching the socket, from before it was bound.
        let (mode, owner) = match group {
            Some(gid) => (0o660, Some(nix::unistd::Gid::from_raw(gid))),
            None => (0o600, None),
        };
        nix::unistd::chown(&path, None, owner)
            .map_err(io::Error::from)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)))
            .map_err(|source| ControlError::Bind {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            listener,
            path,
            group,
            dispatch,
            events,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown`; removes the socket file then.
    pub async fn serve(self, shutdown: CancellationToken) {
        let this = Arc::new(ServerState {
            group: self.group,
            dispatch: self.dispatch,
            events: self.events,
            own_uid: nix::unistd::geteuid().as_raw(),
        });
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let this = Arc::clone(&this);
                        let shutdown = shutdown.clone();
                        connections.spawn(async move { this.connection(stream, &shutdown).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        // No new connection; the requests being carried out get their answers
        // (each connection stops reading at shutdown, and an answer is sent for
        // at most ANSWER_DRAIN after it), so that a change that was made is not
        // reported to its client as a failure.
        drop(self.listener);
        while connections.join_next().await.is_some() {}
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How long, after shutdown began, an answer to a request carried out may take
/// to be sent (a client that does not read it is left).
const ANSWER_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates `dir` with the right owner and mode, or fixes an existing one,
/// before anything is bound in it. The directory must be the socket's own: one
/// that holds other files (`/run`, `/tmp`, a shared directory) is refused rather
/// than made private, which would lock every other user of it out.
fn prepare_directory(
    dir: &Path,
    socket: Option<&std::ffi::OsStr>,
    group: Option<u32>,
) -> io::Result<()> {
    let mode = if group.is_some() { 0o750 } else { 0o700 };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)?;
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a directory",
        ));
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if Some(name.as_os_str()) != socket {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "holds other files ({}): rampartd sets the mode and owner of the control socket's directory, so the socket needs a directory of its own (such as /run/rampart/control.sock)",
                    name.to_string_lossy()
                ),
            ));
        }
    }
    let uid = nix::unistd::geteuid();
    let gid = group.map_or_else(nix::unistd::getegid, nix::unistd::Gid::from_raw);
    use std::os::unix::fs::MetadataExt;
    // Only when different: a directory systemd made right (RuntimeDirectory=)
    // needs no CAP_CHOWN.
    if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
        nix::unistd::chown(dir, Some(uid), Some(gid)).map_err(io::Error::from)?;
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

struct ServerState {
    group: Option<u32>,
    dispatch: Dispatch,
    events: Arc<EventLog>,
    own_uid: u32,
}

impl ServerState {
    fn allowed(&self, peer: &Peer) -> bool {
        if peer.uid == 0 || peer.uid == self.own_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        peer.gid == group
            || peer
                .pid
                .is_some_and(|pid| in_supplementary_groups(pid, group))
    }

    /// One client. At `shutdown` it stops reading requests and following
    /// events; a request already handed to the control thread waits for its
    /// answer (the control thread finishes the change it is making before it
    /// stops, or drops the requests it did not start, answered "shutting
    /// down"), which is then sent for at most [`ANSWER_DRAIN`].
    async fn connection(&self, stream: UnixStream, shutdown: &CancellationToken) {
        let peer = match stream.peer_cred() {
            Ok(c) => Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "control connection without peer credentials");
                return;
            }
        };
        let (read, mut write) = stream.into_split();
        if !self.allowed(&peer) {
            tracing::warn!(
                rampart_event = "control_denied",
                peer_uid = peer.uid,
                peer_pid = peer.pid.unwrap_or(0),
                "control socket: permission denied"
            );
            let _ = send(
                &mut write,
                &Response::Error(ErrorReply::new(
                    ErrorKind::PermissionDenied,
                    "permission denied: the control socket is for root and the control group",
                )),
            )
            .await;
            return;
        }
        let mut lines = BufReader::new(read);
        let mut line = Vec::new();
        loop {
            line.clear();
            let mut limited = (&mut lines).take(MAX_REQUEST_BYTES as u64 + 1);
            let read = tokio::select! {
                () = shutdown.cancelled() => return,
                read = limited.read_until(b'\n', &mut line) => read,
            };
            match read {
                Ok(0) => return,
                Ok(_) if line.len() > MAX_REQUEST_BYTES => {
                    let _ = send(
                        &mut write,
                        &Response::Error(ErrorReply::new(
                            ErrorKind::InvalidInput,
                            format!("request longer than {MAX_REQUEST_BYTES} bytes"),
                        )),
                    )
                    .await;
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
            let envelope: RequestEnvelope = match serde_json::from_slice(&line) {
                Ok(e) => e,
                Err(e) => {
                    let version = serde_json::from_slice::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("version").and_then(serde_json::Value::as_u64));
                    let reply = match version {
                        Some(v) if v != u64::from(PROTOCOL_VERSION) => version_error(v),
                        _ => ErrorReply::new(
                            ErrorKind::InvalidInput,
                            format!("malformed request: {e}"),
                        ),
                    };
                    if send(&mut write, &Response::Error(reply)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if envelope.version != PROTOCOL_VERSION {
                let reply = version_error(u64::from(envelope.version));
                if send(&mut write, &Response::Error(reply)).await.is_err() {
                    return;
                }
                continue;
            }
            if let Request::Events { follow, last } = envelope.request {
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    () = self.events(&mut write, follow, last) => {}
                }
                return;
            }
            let (tx, rx) = oneshot::channel();
            let delivered = (self.dispatch)(Command {
                request: envelope.request,
                peer,
                reply: tx,
            });
            let response = match (delivered, rx.await) {
                (true, Ok(response)) => response,
                _ => Response::Error(ErrorReply::new(
                    ErrorKind::Internal,
                    "rampartd is shutting down",
                )),
            };
            let drained = async {
                shutdown.cancelled().await;
                tokio::time::sleep(ANSWER_DRAIN).await;
            };
            let sent = tokio::select! {
                sent = send(&mut write, &response) => sent.is_ok(),
                () = drained => false,
            };
            if !sent {
                return;
            }
        }
    }

    async fn events(
        &self,
        write: &mut tokio::net::unix::OwnedWriteHalf,
        follow: bool,
        last: usize,
    ) {
        // Subscribe first: nothing between the backlog and the stream is lost
        // (at worst an event is sent twice).
        let mut live = self.events.subscribe();
        let backlog = self.events.last(last);
        let newest = backlog.last().map(|e| e.time_ms);
        for event in backlog {
            if send(write, &Response::Ok(Reply::Event(event)))
                .await
                .is_err()
            {
                return;
            }
        }
        if !follow {
            let _ = send(write, &Response::Ok(Reply::Done)).await;
            return;
        }
        loop {
            match live.recv().await {
                Ok(event) => {
                    if newest.is_some_and(|t| event.time_ms < t) {
                        continue;
                    }
                    if send(write, &Response::Ok(Reply::Event(event)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = EventView {
                        time_ms: SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64),
                        event: "events_lost".into(),
                        message: format!("{n} events were not delivered (reader too slow)"),
                        fields: Vec::new(),
                    };
                    if send(write, &Response::Ok(Reply::Event(note)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

fn version_error(theirs: u64) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::Version,
        format!(
            "protocol version {theirs} is not supported by this rampartd (it speaks {PROTOCOL_VERSION}); use the rampart CLI of the same release"
        ),
    )
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

/// Whether process `pid` has `gid` among its supplementary groups
/// (/proc/PID/status `Groups:`), for members of the control group whose
/// primary group is another.
fn in_supplementary_groups(pid: i32, gid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| {
            groups
                .split_whitespace()
                .any(|g| g.parse::<u32>() == Ok(gid))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_log_keeps_the_most_recent() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.push("list_changed", format!("change {i}"), vec![]);
        }
        let last: Vec<String> = log.last(10).into_iter().map(|e| e.message).collect();
        assert_eq!(last, ["change 2", "change 3", "change 4"]);
        assert_eq!(log.last(1)[0].message, "change 4");
    }

    #[test]
    fn own_process_groups_are_read() {
        let pid = std::process::id() as i32;
        let gid = nix::unistd::getegid().as_raw();
        // Our own primary group is usually also listed; at least the call must
        // not claim a group nobody has.
        assert!(!in_supplementary_groups(pid, 4_000_000_000));
        let _ = in_supplementary_groups(pid, gid);
    }
}
