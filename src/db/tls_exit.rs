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
