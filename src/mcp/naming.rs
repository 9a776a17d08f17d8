//! The names under which MCP tools are offered to the model.
//!
//! A tool `add` becomes `mcp_add`. OpenAI function names allow `[A-Za-z0-9_-]{1,64}`, so other
//! characters become `_` and long names are cut. When two servers offer the same name, servers
//! earlier in the configuration keep the plain name and later ones get
//! `mcp_<server>__<tool>` (then `_2`, `_3`, ... if even that is taken). The result depends only
//! on the configuration order and the servers' tool lists, never on connection timing.

use std::collections::HashSet;

use filters::tool_loop::GATEWAY_TOOL_PREFIX;

const MAX_NAME: usize = 64;

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn cut(mut s: String) -> String {
    // ASCII only after sanitize, so any byte index is a char boundary.
    s.truncate(MAX_NAME);
    s
}

/// Assigns exposed names. `servers`: in configuration order, each with its name and tool names.
/// Returns, per server, the exposed name of each tool (same order).
pub fn assign(servers: &[(&str, Vec<&str>)]) -> Vec<Vec<String>> {
    let mut taken: HashSet<String> = HashSet::new();
    let mut out = Vec::with_capacity(servers.len());
    for (server, tools) in servers {
        let mut names = Vec::with_capacity(tools.len());
        for tool in tools {
            let plain = cut(format!("{GATEWAY_TOOL_PREFIX}{}", sanitize(tool)));
            let name = if taken.contains(&plain) {
                let qualified = format!(
                    "{GATEWAY_TOOL_PREFIX}{}__{}",
                    sanitize(server),
                    sanitize(tool)
                );
                let mut candidate = cut(qualified.clone());
                let mut n = 2;
                while taken.contains(&candidate) {
                    let suffix = format!("_{n}");
                    let mut base = qualified.clone();
                    base.truncate(MAX_NAME - suffix.len());
                    candidate = base + &suffix;
                    n += 1;
                }
                candidate
            } else {
                plain
            };
            taken.insert(name.clone());
            names.push(name);
        }
        out.push(names);
    }
    out
}

/// Whether `tool` passes an include list (empty = all) and an exclude list. Entries may be
/// written with or without the `mcp_` prefix.
pub fn selected(tool: &str, include: &[String], exclude: &[String]) -> bool {
    let matches = |list: &[String]| {
        list.iter().any(|e| {
            e == tool
                || e.strip_prefix(GATEWAY_TOOL_PREFIX)
                    .is_some_and(|rest| rest == tool)
        })
    };
    (include.is_empty() || matches(include)) && !matches(exclude)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earlier_server_keeps_the_plain_name() {
        let names = assign(&[
            ("math", vec!["add", "echo"]),
            ("text", vec!["echo", "upper"]),
            ("more", vec!["echo"]),
        ]);
        assert_eq!(names[0], ["mcp_add", "mcp_echo"]);
        assert_eq!(names[1], ["mcp_text__echo", "mcp_upper"]);
        assert_eq!(names[2], ["mcp_more__echo"]);
    }

    #[test]
    fn invalid_characters_and_length() {
        let long = "x".repeat(100);
        let names = assign(&[("s", vec!["get.weather/now", &long])]);
        assert_eq!(names[0][0], "mcp_get_weather_now");
        assert_eq!(names[0][1].len(), 64);
    }

    #[test]
    fn clashes_after_sanitizing_get_suffixes() {
        let names = assign(&[("s", vec!["a.b", "a/b", "a_b"]), ("s.", vec!["a_b"])]);
        assert_eq!(names[0], ["mcp_a_b", "mcp_s__a_b", "mcp_s__a_b_2"]);
        assert_eq!(names[1], ["mcp_s___a_b"]);
    }

    #[test]
    fn include_and_exclude() {
        let inc = vec!["add".to_string(), "mcp_echo".to_string()];
        assert!(selected("add", &inc, &[]));
        assert!(selected("echo", &inc, &[]));
        assert!(!selected("sleep", &inc, &[]));
        assert!(!selected("add", &inc, &["mcp_add".to_string()]));
        assert!(selected("anything", &[], &[]));
    }
}
