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

/// A new random id: 32 lowercase hex digits.
pub fn generate() -> String {
    format!("{:016x}{:016x}", next(), next())
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
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(from_header(Some(b"abc-1")), "abc-1");
        assert_eq!(from_header(Some(b"bad id\r\n")).len(), 32);
        assert_eq!(from_header(Some(&[b'x'; 200])).len(), 32);
        assert_eq!(from_header(None).len(), 32);
    }
}
