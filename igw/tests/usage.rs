//! igw without a gateway: usage errors (2), an unreachable gateway (3), help and version. The
//! commands against a running gateway are tested in the gateway's suite (tests/suite/igw.rs),
//! which runs this crate's binary (built by `cargo test --workspace` for this test).

use std::process::Command;

fn igw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_igw"))
        .args(args)
        .env_remove("IGW_URL")
        .env_remove("IGW_API_KEY")
        .env_remove("IGW_ADMIN_KEY")
        .env_remove("IGW_MODEL")
        .output()
        .expect("igw runs")
}

#[test]
fn bad_usage_is_exit_2() {
    for args in [
        &["frobnicate"][..],
        &["bench", "-c", "0"],
        &["bench", "-d", "soon"],
        &["keys"],
        &["--url", "localhost:1", "status"],
    ] {
        let out = igw(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
    // The admin commands name the missing key.
    let out = igw(&["--url", "http://127.0.0.1:9", "keys", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("IGW_ADMIN_KEY"));
}

#[test]
fn an_unreachable_gateway_is_exit_3() {
    // A port that was free a moment ago: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let url = format!("http://127.0.0.1:{port}");
    for args in [&["status"][..], &["models"], &["chat", "-m", "x", "hi"]] {
        let mut all = vec!["--url", url.as_str()];
        all.extend_from_slice(args);
        let out = igw(&all);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("unreachable"),
            "{args:?}"
        );
    }
}

#[test]
fn help_and_version() {
    let out = igw(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "status", "models", "chat", "keys", "usage", "bench", "config",
    ] {
        assert!(help.contains(cmd), "{cmd} in --help");
    }
    assert!(help.contains("IGW_API_KEY"), "where keys come from");
    let out = igw(&["--version"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("igw "));
}
