//! A connection that only LISTENs, and sleeps until PostgreSQL speaks.
//!
//! diesel reads notifications without blocking and gives no access to the
//! connection's socket, so a listener built on it has to poll: every few
//! milliseconds, for ever, on every instance (an idle `serve` spent ~1.7 %
//! of a core on it, and each notification waited up to a poll interval).
//! This one is libpq itself (`pq-sys`, which diesel links already), so the
//! connection string means exactly what it means to the pool (TLS,
//! keepalives, service files), and it waits in `poll(2)` on the socket:
//! no wake-up while nothing happens, none of the interval's delay when
//! something does.
//!
//! The unsafe code is confined here: one owned `PGconn`, used from one
//! thread at a time (`&mut self`), freed once.

use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use pq_sys::{
    ConnStatusType, ExecStatusType, PGconn, PQclear, PQconnectdb, PQconsumeInput, PQerrorMessage, PQexec, PQfinish,
    PQfreemem, PQnotifies, PQresultStatus, PQsetNoticeProcessor, PQsocket, PQstatus,
};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Lost(String),
    #[error("command failed: {0}")]
    Command(String),
}

/// A notification: its channel and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub channel: String,
    pub payload: String,
}

/// What the server says outside a command's answer (a notice, or the
/// `FATAL` of a server shutting the connection down) goes to the log, not
/// raw to standard error as libpq's default does: the loss itself is
/// reported by the next wait, which reconnects.
unsafe extern "C" fn log_notice(_arg: *mut c_void, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: libpq passes a NUL-terminated message valid for this call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    tracing::info!(notice = %text.trim_end(), "PostgreSQL, to the bus listener");
}

pub struct ListenConnection {
    conn: NonNull<PGconn>,
}

// libpq connections may move between threads; they must not be used from
// two at once, which `&mut self` on every use rules out.
unsafe impl Send for ListenConnection {}

impl ListenConnection {
    /// Connects with a libpq connection string or URL.
    pub fn connect(url: &str) -> Result<ListenConnection, ListenError> {
        let url = CString::new(url).map_err(|_| ListenError::Connect("the URL holds a NUL byte".into()))?;
        // SAFETY: a valid C string; libpq returns a connection object (to be
        // finished whatever its status) or null when out of memory.
        let conn = NonNull::new(unsafe { PQconnectdb(url.as_ptr()) })
            .ok_or_else(|| ListenError::Connect("libpq could not allocate a connection".into()))?;
        let listener = ListenConnection { conn };
        // SAFETY: `conn` is a live connection object.
        if unsafe { PQstatus(listener.conn.as_ptr()) } != ConnStatusType::CONNECTION_OK {
            return Err(ListenError::Connect(listener.last_error()));
        }
        // SAFETY: a live connection; the processor keeps no state (null arg).
        unsafe { PQsetNoticeProcessor(listener.conn.as_ptr(), Some(log_notice), std::ptr::null_mut()) };
        Ok(listener)
    }

    /// Runs commands that return no rows (`LISTEN a; LISTEN b`).
    pub fn execute(&mut self, sql: &str) -> Result<(), ListenError> {
        let sql = CString::new(sql).map_err(|_| ListenError::Command("the command holds a NUL byte".into()))?;
        // SAFETY: a live connection and a valid C string; the result, when
        // not null, is cleared below and not used after.
        unsafe {
            let result = PQexec(self.conn.as_ptr(), sql.as_ptr());
            if result.is_null() {
                return Err(ListenError::Lost(self.last_error()));
            }
            let ok = PQresultStatus(result) == ExecStatusType::PGRES_COMMAND_OK;
            PQclear(result);
            if !ok {
                return Err(ListenError::Command(self.last_error()));
            }
        }
        Ok(())
    }

    /// The notifications that have arrived, waiting up to `most` for the
    /// first when none has (empty then). An error means the connection is
    /// gone; make a new one.
    pub fn wait(&mut self, most: Duration) -> Result<Vec<Notification>, ListenError> {
        let ready = self.take()?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        // SAFETY: a live connection.
        let fd = unsafe { PQsocket(self.conn.as_ptr()) };
        if fd < 0 {
            return Err(ListenError::Lost("the connection has no socket".into()));
        }
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let timeout = most.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, valid for the call. A signal (EINTR) just ends
        // the wait early; a hang-up shows in `take`, as libpq reads. Any
        // other failure would fail again at once: the caller reconnects
        // (with its backoff) rather than spin here.
        if unsafe { libc::poll(&mut poll, 1, timeout) } < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(ListenError::Lost(format!("poll: {err}")));
            }
        }
        self.take()
    }

    /// Reads what the server sent, then every notification libpq holds.
    fn take(&mut self) -> Result<Vec<Notification>, ListenError> {
        // SAFETY: a live connection; each notification is copied out, then
        // freed with PQfreemem as libpq asks, and not used after.
        unsafe {
            if PQconsumeInput(self.conn.as_ptr()) == 0 {
                return Err(ListenError::Lost(self.last_error()));
            }
            let mut out = Vec::new();
            loop {
                let note = PQnotifies(self.conn.as_ptr());
                if note.is_null() {
                    return Ok(out);
                }
                let text = |p: *const std::os::raw::c_char| {
                    if p.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(p).to_string_lossy().into_owned()
                    }
                };
                out.push(Notification { channel: text((*note).relname), payload: text((*note).extra) });
                PQfreemem(note.cast());
            }
        }
    }

    fn last_error(&self) -> String {
        // SAFETY: a live connection; the message belongs to it and is
        // copied before anything else touches it.
        let message = unsafe { PQerrorMessage(self.conn.as_ptr()) };
        if message.is_null() {
            return "unknown error".into();
        }
        // SAFETY: libpq's messages are NUL-terminated.
        unsafe { CStr::from_ptr(message) }.to_string_lossy().trim().to_string()
    }
}

impl Drop for ListenConnection {
    fn drop(&mut self) {
        // SAFETY: the connection object is freed exactly once, here.
        unsafe { PQfinish(self.conn.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_address_is_an_error_not_a_crash() {
        let e = ListenConnection::connect("postgres://nobody@127.0.0.1:1/none?connect_timeout=2").err();
        assert!(matches!(e, Some(ListenError::Connect(_))), "{e:?}");
        let e = ListenConnection::connect("postgres://a\0b").err();
        assert!(matches!(e, Some(ListenError::Connect(_))), "{e:?}");
    }
}
