//! The command line: `-t` validation, error messages naming the key, zero-config start.

use std::process::Command;

use crate::common::*;

fn run(args: &[&str], env: &[(&str, &str)], toml: Option<&str>) -> (i32, String) {
    let dir = temp_dir("cli");
    let mut cmd = Command::new(bin());
    cmd.env_clear().current_dir(&dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(t) = toml {
        std::fs::write(dir.join("g.toml"), t).unwrap();
        cmd.arg("-c").arg(dir.join("g.toml"));
    }
    let out = cmd.output().unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn test_flag_accepts_valid_config_and_never_prints_secrets() {
    let (code, out) = run(
        &["-t"],
        &[("OPENAI_API_KEY", "sk-very-secret")],
        Some("[server]\nport = 9999\n"),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configuration OK"));
    assert!(!out.contains("sk-very-secret"));
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/gateway.toml");
    let (code, out) = run(&["-t", "-c", shipped], &[], None);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn invalid_configuration_names_the_key() {
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str);
    let cases: &[Case] = &[
        (&[], Some("[server]\nportt = 1\n"), "portt"),
        (
            &[],
            Some("[client]\nconnect_timeout = \"ten\"\n"),
            "connect_timeout",
        ),
        (&[("SERVER_PORT", "99999")], None, "SERVER_PORT"),
        (&[("GROQ_API_URL", "groq.com")], None, "GROQ_API_URL"),
        (
            &[("SERVER_MAX_REQUEST_BODY_SIZE", "lots")],
            None,
            "SERVER_MAX_REQUEST_BODY_SIZE",
        ),
    ];
    for (env, toml, key) in cases {
        let (code, out) = run(&["-t"], env, *toml);
        assert_eq!(code, 2, "{key}: {out}");
        assert!(out.contains(key), "{key} not named in: {out}");
    }
    let (code, out) = run(&["-t", "-c", "/nonexistent/gateway.toml"], &[], None);
    assert_eq!(code, 2);
    assert!(out.contains("/nonexistent/gateway.toml"));
}

#[test]
fn starts_with_zero_configuration() {
    // Only the port differs from a bare start (8080 may be taken on a developer machine).
    let gw = GatewayProcess::start(&[], None);
    let log = gw.log_text();
    assert!(log.contains("listening on 127.0.0.1:"), "{log}");
    assert!(log.contains("configured providers: []"), "{log}");
}

#[test]
fn help_lists_the_flags() {
    let (code, out) = run(&["--help"], &[], None);
    assert_eq!(code, 0);
    for flag in ["-c", "-t", "-d", "-u"] {
        assert!(out.contains(flag), "{flag}");
    }
}

#[test]
fn hash_key_reads_a_given_key_from_stdin_never_argv() {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(["hash-key", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"test\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    // sha256("test")
    assert!(
        text.contains("sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        "{text}"
    );
    assert!(!text.contains("key:"), "a given key is not echoed: {text}");
    // A key on the command line is refused (it would sit in `ps` and shell history).
    let (code, out) = run(&["hash-key", "igw-secret-on-argv"], &[], None);
    assert_eq!(code, 2, "{out}");
    // Without --stdin, a new key is made.
    let (code, out) = run(&["hash-key"], &[], None);
    assert_eq!(code, 0);
    assert!(out.contains("key:  igw-"), "{out}");
}

#[test]
fn health_verbose_auth_without_auth_is_refused() {
    let (code, out) = run(&["-t"], &[("SERVER_HEALTH_VERBOSE", "auth")], None);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("SERVER_HEALTH_VERBOSE"), "{out}");
    let (code, out) = run(&["-t"], &[("SERVER_HEALTH_VERBOSE", "loud")], None);
    assert_eq!(code, 2, "{out}");
}
