//! libpq's TLS and the process's exit.
//!
//! libpq sets up TLS with the system's OpenSSL, which by default registers
//! an exit handler that frees its global state. A pool thread that opens a
//! connection while the process exits (r2d2 refilling after its idle
//! connections were reaped, or after the database dropped them) then uses
//! freed locks and the process dies of SIGSEGV instead of exiting with its
//! status: seen in the test binary once every few runs, and in the demo.
//! Asking OpenSSL, before its first use, not to register that handler
//! leaves its state to the kernel, which frees it with the process anyway.
//!
//! libkrb5 does the same with its locks, and libpq loads it on every TCP
//! connection to probe for Kerberos (GSSAPI) encryption, which libpq tries
//! first by default. A connection opened as the process exits then prints
//! `k5_mutex_lock: Received error 22 (Invalid argument)` (or, in a libkrb5
//! built with assertions, aborts): seen at the end of `bench ingest`.
//! krb5 has no switch like OpenSSL's, so the probe is skipped unless the
//! operator asks for it ([`skip_gss_unless_asked`]).

/// `OPENSSL_INIT_NO_ATEXIT` of OpenSSL 1.1.1 and 3.
const OPENSSL_INIT_NO_ATEXIT: u64 = 0x0008_0000;

/// Call first thing in `main`, before any connection is opened. Looks
/// OpenSSL up among the libraries already loaded (libpq's), so nothing more
/// is linked; without it (a libpq built without OpenSSL) there is nothing
/// to do.
pub fn keep_tls_state_through_exit() {
    type Init = unsafe extern "C" fn(u64, *const libc::c_void) -> libc::c_int;
    // SAFETY: the name is a NUL-terminated literal; dlsym only looks it up.
    let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"OPENSSL_init_crypto".as_ptr()) };
    if symbol.is_null() {
        return;
    }
    // SAFETY: OPENSSL_init_crypto(uint64_t opts, const OPENSSL_INIT_SETTINGS *)
    // has this signature in OpenSSL 1.1.1 and 3; a null settings pointer is
    // allowed. It is safe to call from any thread, any number of times.
    let init: Init = unsafe { std::mem::transmute::<*mut libc::c_void, Init>(symbol) };
    if unsafe { init(OPENSSL_INIT_NO_ATEXIT, std::ptr::null()) } != 1 {
        tracing::debug!("OpenSSL refused OPENSSL_INIT_NO_ATEXIT");
    }
}

/// Turns off libpq's Kerberos encryption probe unless the operator chose a
/// mode: `PGGSSENCMODE` in the environment (or `.env`), or `gssencmode=` in
/// `DATABASE_URL` (which libpq reads over the environment). Call in `main`
/// after reading `.env` and before any thread starts: it sets an
/// environment variable.
pub fn skip_gss_unless_asked() {
    if std::env::var_os("PGGSSENCMODE").is_none() {
        std::env::set_var("PGGSSENCMODE", "disable");
    }
}

/// The same for a URL, where changing the environment is not safe (a test
/// process's threads): adds `gssencmode=disable` unless it names a mode.
pub fn without_gss_probe(url: &str) -> String {
    if url.contains("gssencmode=") || std::env::var_os("PGGSSENCMODE").is_some() {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}gssencmode=disable")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_url_gets_the_mode_once() {
        if std::env::var_os("PGGSSENCMODE").is_some() {
            return;
        }
        assert_eq!(super::without_gss_probe("postgres://h/d"), "postgres://h/d?gssencmode=disable");
        assert_eq!(super::without_gss_probe("postgres://h/d?x=1"), "postgres://h/d?x=1&gssencmode=disable");
        assert_eq!(super::without_gss_probe("postgres://h/d?gssencmode=prefer"), "postgres://h/d?gssencmode=prefer");
    }
}
