//! Token reads on the calling thread, without sqlx's hand-off.
//!
//! sqlx runs each SQLite connection on a worker thread of its own: a query
//! is sent to that thread and its rows are sent back. Measured on a busy
//! 2-core machine (`bash scripts/bench.sh`, `--callgrind`): a primary-key
//! read through sqlx is about 30k user-space instructions and 33 µs of CPU
//! across threads (kernel wake-ups and context switches included) for a
//! 32-55 µs read, while the whole direct read below, JSON decoding
//! included, is 15k instructions and 3.5 µs. A valid
//! token is read on every gated tool call, so `get` reads it here instead:
//! on read-only connections of the same file that this module drives
//! through SQLite's C API directly, on the thread that calls `get`.
//!
//! Nothing is cached: every read is its own read transaction and sees every
//! commit of every process made before it started, exactly as a read through
//! sqlx does. When this path cannot answer (the file is busy, a connection
//! cannot be opened, any SQLite error), the read goes through sqlx instead,
//! which waits out a busy file and reports errors as every other operation
//! does. The connections never wait: their busy timeout is zero, so a read
//! here never blocks the thread on a lock.

use std::ffi::{CString, c_int};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use libsqlite3_sys as ffi;

const SELECT_TOKEN: &str =
    "SELECT revision, record FROM mcp_authkit_tokens WHERE provider = ?1 AND subject = ?2";

/// What a direct read found: the revision and record bytes of the row, or
/// no row. `None` from [`Reader::token`] means "ask sqlx".
pub(crate) type Row = Option<(i64, Vec<u8>)>;

/// A few read-only connections, each with its statement prepared, used by
/// one thread at a time.
pub(crate) struct Reader {
    path: CString,
    idle: Mutex<Vec<Connection>>,
    /// Connections that exist, idle or in use.
    open: Mutex<usize>,
    max: usize,
    closed: AtomicBool,
}

impl Reader {
    /// A reader of the database file at `path` with at most `max`
    /// connections, opened when first needed. `None` if the path cannot be
    /// handed to SQLite (then every read goes through sqlx).
    pub(crate) fn new(path: &Path, max: usize) -> Option<Reader> {
        let path = CString::new(path.to_str()?).ok()?;
        Some(Reader {
            path,
            idle: Mutex::new(Vec::new()),
            open: Mutex::new(0),
            max: max.max(1),
            closed: AtomicBool::new(false),
        })
    }

    /// The row of (provider, subject), or `None` when this path cannot tell.
    pub(crate) fn token(&self, provider: &str, subject: &str) -> Option<Row> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut connection = self.checkout()?;
        match connection.select(provider, subject) {
            Some(row) => {
                self.checkin(connection);
                Some(row)
            }
            None => {
                // An error leaves the connection in no known state: close it.
                drop(connection);
                *lock(&self.open) -= 1;
                None
            }
        }
    }

    /// Closes every idle connection and makes later reads go through sqlx
    /// (which fails once the store is closed). Connections in use close
    /// when their read ends.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *lock(&self.idle));
        *lock(&self.open) -= idle.len();
    }

    fn checkout(&self) -> Option<Connection> {
        if let Some(connection) = lock(&self.idle).pop() {
            return Some(connection);
        }
        {
            let mut open = lock(&self.open);
            if *open >= self.max {
                // All busy on other threads: sqlx's pool serves this read.
                return None;
            }
            *open += 1;
        }
        let connection = Connection::open(&self.path);
        if connection.is_none() {
            *lock(&self.open) -= 1;
        }
        connection
    }

    fn checkin(&self, connection: Connection) {
        if self.closed.load(Ordering::Acquire) {
            *lock(&self.open) -= 1;
            return;
        }
        lock(&self.idle).push(connection);
    }
}

/// Nothing inside these locks can panic halfway through a change.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One read-only SQLite connection and its prepared token statement.
struct Connection {
    db: NonNull<ffi::sqlite3>,
    select: NonNull<ffi::sqlite3_stmt>,
}

// SAFETY: the connection is opened with SQLITE_OPEN_NOMUTEX (SQLite's
// multi-thread mode): it may move between threads as long as only one uses
// it at a time, which owning it (`&mut self` for every use) guarantees.
unsafe impl Send for Connection {}

impl Connection {
    fn open(path: &CString) -> Option<Connection> {
        let flags = ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_NOMUTEX;
        let mut db = std::ptr::null_mut();
        // SAFETY: `path` is a valid C string and `db` a valid out pointer;
        // on failure SQLite may still return a handle, closed below.
        let rc = unsafe { ffi::sqlite3_open_v2(path.as_ptr(), &mut db, flags, std::ptr::null()) };
        let db = NonNull::new(db)?;
        let close = |db: NonNull<ffi::sqlite3>| {
            // SAFETY: `db` came from sqlite3_open_v2 and has no statements.
            unsafe { ffi::sqlite3_close(db.as_ptr()) };
        };
        if rc != ffi::SQLITE_OK {
            close(db);
            return None;
        }
        // Never wait for a lock on the calling thread: a busy file is read
        // through sqlx instead.
        // SAFETY: `db` is an open connection.
        unsafe { ffi::sqlite3_busy_timeout(db.as_ptr(), 0) };
        let mut select = std::ptr::null_mut();
        // SAFETY: the SQL pointer and length describe a valid UTF-8 buffer;
        // `select` is a valid out pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db.as_ptr(),
                SELECT_TOKEN.as_ptr().cast(),
                SELECT_TOKEN.len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT as _,
                &mut select,
                std::ptr::null_mut(),
            )
        };
        match NonNull::new(select) {
            Some(select) if rc == ffi::SQLITE_OK => Some(Connection { db, select }),
            _ => {
                close(db);
                None
            }
        }
    }

    /// Runs the token statement; `None` on any SQLite error.
    fn select(&mut self, provider: &str, subject: &str) -> Option<Row> {
        let stmt = self.select.as_ptr();
        // Resets the statement when this function returns by any path: that
        // ends the read transaction the step began, so no snapshot outlives
        // the read, and drops the bindings' borrowed pointers.
        struct Reset(*mut ffi::sqlite3_stmt);
        impl Drop for Reset {
            fn drop(&mut self) {
                // SAFETY: the statement is valid for the connection's life.
                unsafe {
                    ffi::sqlite3_reset(self.0);
                    ffi::sqlite3_clear_bindings(self.0);
                }
            }
        }
        let _reset = Reset(stmt);
        bind_text(stmt, 1, provider)?;
        bind_text(stmt, 2, subject)?;
        // SAFETY: a prepared statement with both parameters bound.
        match unsafe { ffi::sqlite3_step(stmt) } {
            ffi::SQLITE_ROW => {}
            ffi::SQLITE_DONE => return Some(None),
            _ => return None,
        }
        // SAFETY: the statement has a row; column 0 is the revision and
        // column 1 the record. The blob pointer is valid, for the length
        // SQLite reports, until the next step or reset, and it is copied
        // before either.
        unsafe {
            if ffi::sqlite3_column_type(stmt, 0) != ffi::SQLITE_INTEGER {
                return None;
            }
            let revision = ffi::sqlite3_column_int64(stmt, 0);
            let blob = ffi::sqlite3_column_blob(stmt, 1).cast::<u8>();
            let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, 1)).ok()?;
            let bytes = if blob.is_null() || len == 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(blob, len).to_vec()
            };
            Some(Some((revision, bytes)))
        }
    }
}

/// Binds `text` to parameter `index` without copying: the statement is
/// reset (dropping the binding) before `text` goes out of scope.
fn bind_text(stmt: *mut ffi::sqlite3_stmt, index: c_int, text: &str) -> Option<()> {
    let len = c_int::try_from(text.len()).ok()?;
    // SAFETY: `text` outlives the binding (see `Connection::select`); SQLite
    // reads `len` bytes of UTF-8 from it.
    let rc = unsafe {
        ffi::sqlite3_bind_text(stmt, index, text.as_ptr().cast(), len, ffi::SQLITE_STATIC())
    };
    (rc == ffi::SQLITE_OK).then_some(())
}

impl Drop for Connection {
    fn drop(&mut self) {
        // SAFETY: both handles are valid and used by no one else; the
        // statement is finalized before its connection closes.
        unsafe {
            ffi::sqlite3_finalize(self.select.as_ptr());
            ffi::sqlite3_close(self.db.as_ptr());
        }
    }
}
