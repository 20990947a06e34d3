//! The CLI's side of the control socket: a small blocking client.
//!
//! One request per connection is all the CLI needs, so this is plain
//! `std::os::unix::net::UnixStream` with a read timeout, no async runtime.
//! Errors are typed so that the CLI picks its exit code from the type
//! ([`ClientError::exit_code`]), never from a message.

use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::protocol::{ErrorReply, Reply, Request, RequestEnvelope, Response, exit};

/// How long [`Client::call`] waits for the daemon's answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest response line read; far above any real listing, so that a peer
/// that is not rampartd cannot make the CLI buffer without end.
const MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// Why talking to rampartd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket at the path, or nobody listening on it.
    #[error(
        "rampartd is not running ({} {})",
        if source.kind() == io::ErrorKind::ConnectionRefused {
            "nothing listens on"
        } else {
            "no control socket at"
        },
        path.display()
    )]
    DaemonDown {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket or its directory may not be used by this user.
    #[error(
        "permission denied on {}; run as root or as a member of the control group",
        path.display()
    )]
    PermissionDenied {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer in time.
    #[error("rampartd did not answer within {}", humantime::format_duration(*after))]
    Timeout { after: Duration },
    /// Reading or writing the socket failed.
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The peer sent something that is not a response line of this protocol.
    #[error("unexpected answer from rampartd: {problem}")]
    Protocol { problem: String },
    /// The daemon refused or failed the request.
    #[error("{}", .0.message)]
    Daemon(ErrorReply),
}

impl ClientError {
    /// The CLI's exit code for this error (`protocol::exit`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::DaemonDown { .. } => exit::DAEMON_DOWN,
            Self::PermissionDenied { .. } => exit::PERMISSION_DENIED,
            Self::Timeout { .. } | Self::Io { .. } | Self::Protocol { .. } => exit::FAILED,
            Self::Daemon(reply) => reply.kind.exit_code(),
        }
    }

    /// Every problem the daemon listed, one per line (empty for local errors).
    pub fn details(&self) -> &[String] {
        match self {
            Self::Daemon(reply) => &reply.details,
            _ => &[],
        }
    }
}

/// A connection to rampartd's control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    timeout: Option<Duration>,
}

impl Client {
    /// Connects to the control socket at `path`, with [`DEFAULT_TIMEOUT`] for
    /// answers.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path).map_err(|source| connect_error(&path, source))?;
        let mut client = Self {
            path,
            reader: BufReader::new(stream),
            timeout: None,
        };
        client.set_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(client)
    }

    /// How long to wait for each answer line; `None` waits for ever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(timeout)
            .map_err(|source| self.io_error(source))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sends one request and reads its one response.
    pub fn call(&mut self, request: Request) -> Result<Reply, ClientError> {
        self.send(request)?;
        match self.read_response()? {
            Some(response) => into_result(response),
            None => Err(ClientError::Protocol {
                problem: "the connection closed before an answer".into(),
            }),
        }
    }

    /// Sends one request and returns the replies that follow, one per line,
    /// until the daemon closes the connection (`events`). The read timeout
    /// applies to each line; call `set_timeout(None)` first for a stream that
    /// may stay quiet for long (`events --follow`).
    pub fn stream(mut self, request: Request) -> Result<ReplyStream, ClientError> {
        self.send(request)?;
        Ok(ReplyStream {
            client: self,
            done: false,
        })
    }

    fn send(&mut self, request: Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(&RequestEnvelope::new(request)).map_err(|e| {
            ClientError::Protocol {
                problem: format!("cannot encode the request: {e}"),
            }
        })?;
        line.push(b'\n');
        let stream = self.reader.get_mut();
        match stream.write_all(&line).and_then(|()| stream.flush()) {
            Ok(()) => Ok(()),
            // A daemon that refuses the peer may answer and hang up before
            // reading the request; its answer is then the better error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => match self.read_response() {
                Ok(Some(Response::Error(reply))) => Err(ClientError::Daemon(reply)),
                _ => Err(self.io_error(e)),
            },
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// One response line; `None` at end of stream.
    fn read_response(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(MAX_RESPONSE_BYTES)
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout {
                    after: self.timeout.unwrap_or_default(),
                });
            }
            Err(e) => return Err(self.io_error(e)),
        }
        if line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol {
                problem: if line.len() as u64 >= MAX_RESPONSE_BYTES {
                    "an answer line longer than 256 MiB".into()
                } else {
                    "the connection closed in the middle of an answer".into()
                },
            });
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| ClientError::Protocol {
                problem: format!("{e}: {}", preview(&line)),
            })
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The replies of a streaming request ([`Client::stream`]): each line as it
/// comes, an error reply as the last item, `None` once the daemon hangs up.
#[derive(Debug)]
pub struct ReplyStream {
    client: Client,
    done: bool,
}

impl Iterator for ReplyStream {
    type Item = Result<Reply, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match self.client.read_response() {
            Ok(Some(response)) => into_result(response),
            Ok(None) => {
                self.done = true;
                return None;
            }
            Err(e) => Err(e),
        };
        self.done = item.is_err();
        Some(item)
    }
}

fn into_result(response: Response) -> Result<Reply, ClientError> {
    match response {
        Response::Ok(reply) => Ok(reply),
        Response::Error(reply) => Err(ClientError::Daemon(reply)),
    }
}

/// Sorts a failed `connect` by what the operator can do about it.
fn connect_error(path: &Path, source: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::NotFound
        | io::ErrorKind::ConnectionRefused
        | io::ErrorKind::NotADirectory => ClientError::DaemonDown { path, source },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path, source },
        // EPERM (an LSM refusing the connect) has no ErrorKind of its own.
        _ if source.raw_os_error() == Some(libc::EPERM) => {
            ClientError::PermissionDenied { path, source }
        }
        _ => ClientError::Io { path, source },
    }
}

/// The start of a bad line, for the error message.
fn preview(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        os::unix::net::UnixListener,
        thread,
    };

    use super::*;
    use crate::control::protocol::{ChangeReply, ErrorKind, EventView, ListName};

    fn socket_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("rampart-client-{}-{tag}.sock", std::process::id()))
    }

    /// A daemon that reads one request and writes `answer` (raw lines).
    fn serve_once(path: &Path, answer: &'static str) -> thread::JoinHandle<String> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
            line
        })
    }

    #[test]
    fn a_missing_socket_means_the_daemon_is_down() {
        let path = socket_path("missing");
        let _ = std::fs::remove_file(&path);
        let err = Client::connect(&path).unwrap_err();
        assert!(matches!(err, ClientError::DaemonDown { .. }), "{err:?}");
        assert_eq!(err.exit_code(), exit::DAEMON_DOWN);
        assert!(err.to_string().contains("rampartd is not running"), "{err}");
    }

    #[test]
    fn call_sends_one_versioned_line_and_reads_one_reply() {
        let path = socket_path("call");
        let server = serve_once(
            &path,
            "{\"ok\":{\"type\":\"changed\",\"changed\":1,\"unchanged\":0}}\n",
        );
        let mut client = Client::connect(&path).unwrap();
        let reply = client
            .call(Request::ListDel {
                list: ListName::Deny,
                entries: vec!["192.0.2.1".into()],
            })
            .unwrap();
        assert_eq!(
            reply,
            // A reply without `updated` (an older daemon's) reads as 0 updated.
            Reply::Changed(ChangeReply {
                changed: 1,
                updated: 0,
                unchanged: 0
            })
        );
        let line = server.join().unwrap();
        assert!(line.ends_with('\n'));
        let sent: RequestEnvelope = serde_json::from_str(&line).unwrap();
        assert_eq!(sent.version, crate::control::protocol::PROTOCOL_VERSION);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn daemon_errors_keep_their_kind_and_details() {
        let path = socket_path("error");
        let server = serve_once(
            &path,
            "{\"error\":{\"kind\":\"config\",\"message\":\"bad file\",\"details\":[\"a:1:1: x\"]}}\n",
        );
        let mut client = Client::connect(&path).unwrap();
        let err = client.call(Request::Reload).unwrap_err();
        assert_eq!(err.exit_code(), exit::BAD_CONFIG);
        assert_eq!(err.details(), ["a:1:1: x"]);
        assert_eq!(err.to_string(), "bad file");
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn garbage_and_silence_are_protocol_errors() {
        let path = socket_path("garbage");
        let server = serve_once(&path, "HTTP/1.1 400 Bad Request\n");
        let err = Client::connect(&path)
            .unwrap()
            .call(Request::Status)
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
        assert_eq!(err.exit_code(), exit::FAILED);
        server.join().unwrap();

        let server = serve_once(&path, "");
        let err = Client::connect(&path)
            .unwrap()
            .call(Request::Status)
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_stream_ends_at_eof_or_after_an_error() {
        let path = socket_path("stream");
        let event = EventView {
            time_ms: 1,
            event: "ban_added".into(),
            message: "m".into(),
            fields: vec![],
        };
        let line = serde_json::to_string(&Response::Ok(Reply::Event(event.clone()))).unwrap();
        let answer: &'static str = format!("{line}\n{line}\n").leak();
        let server = serve_once(&path, answer);
        let replies: Vec<_> = Client::connect(&path)
            .unwrap()
            .stream(Request::Events {
                follow: true,
                last: 0,
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            replies,
            vec![Reply::Event(event.clone()), Reply::Event(event)]
        );
        server.join().unwrap();

        let server = serve_once(
            &path,
            "{\"error\":{\"kind\":\"unavailable\",\"message\":\"no filter\"}}\n{\"ok\":{\"type\":\"done\"}}\n",
        );
        let items: Vec<_> = Client::connect(&path)
            .unwrap()
            .stream(Request::Events {
                follow: true,
                last: 0,
            })
            .unwrap()
            .collect();
        assert_eq!(items.len(), 1);
        assert!(matches!(
            &items[0],
            Err(ClientError::Daemon(ErrorReply {
                kind: ErrorKind::Unavailable,
                ..
            }))
        ));
        server.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
