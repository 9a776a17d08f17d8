//! Link settings for the gateway binary (issue 22's size target: 15 MB stripped).
//!
//! Relative relocations packed as DT_RELR (`-z pack-relative-relocs`): a position-independent
//! executable keeps a 24-byte `.rela.dyn` entry for every pointer in its read-only data (vtables,
//! string tables), 0.66 MB of this binary; RELR stores the same in a bitmap of a few KB, with
//! ASLR unchanged. GNU ld >= 2.38 and lld >= 15 support it and only use it when the glibc linked
//! against has `GLIBC_ABI_DT_RELR` (>= 2.36, as on Debian 12 and the Docker image); older GNU
//! linkers warn and ignore the option.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
