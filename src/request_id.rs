//! Request ids: propagated from the client's `X-Request-Id` when it is sane, else generated.
//!
//! Generation must not cost a syscall per request (`uuid::new_v4` calls `getrandom` every time),
//! so each thread seeds a xorshift128+ generator once and formats 128 bits as 32 hex digits.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<(u64, u64)> = Cell::new(seed());
}

fn seed() -> (u64, u64) {
    let b = uuid::Uuid::new_v4().as_u128();
    ((b >> 64) as u64 | 1, b as u64 | 1)
}

fn next() -> u64 {
    STATE.with(|s| {
        let (mut a, b) = s.get();
        a ^= a << 23;
        a ^= a >> 17;
        a ^= b ^ (b >> 26);
        s.set((b, a));
        a.wrapping_add(b)
    })
}

/// A new random id: 32 lowercase hex digits (written directly: `format!` was a visible part of
/// a request's cost, and keys' concurrency leases draw one more).
pub fn generate() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(32);
    for word in [next(), next()] {
        out.extend((0..16).rev().map(|i| HEX[(word >> (i * 4)) as usize & 15]));
    }
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// The client's id if it is 1..=128 visible ASCII characters, else a new one.
pub fn from_header(given: Option<&[u8]>) -> String {
    match given {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(u8::is_ascii_graphic) => {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        // Both words in order, most significant digit first, zeros kept.
        STATE.with(|s| s.set((1, 1)));
        let (x, y) = (next(), next());
        STATE.with(|s| s.set((1, 1)));
        assert_eq!(generate(), format!("{x:016x}{y:016x}"));
        assert_eq!(from_header(Some(b"abc-1")), "abc-1");
        assert_eq!(from_header(Some(b"bad id\r\n")).len(), 32);
        assert_eq!(from_header(Some(&[b'x'; 200])).len(), 32);
        assert_eq!(from_header(None).len(), 32);
    }
}
