//! Runs every example of the workspace and checks its output against the
//! `//! expect: <regex>` lines at the top of its source: each must match a line of the
//! example's stdout, in order. An example without expectations must still exit 0.
use crate::test_all::Tally;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(180);

pub(crate) fn run_all(t: &mut Tally) {
    let dir = crate::root().join("examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".rs"))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        return;
    }
    let built = crate::cargo()
        .args(["build", "--package", "mproc-workspace", "--examples"])
        .status()
        .is_ok_and(|s| s.success());
    t.step("build examples", built);
    if !built {
        return;
    }
    let target = target_dir();
    for name in names {
        let src = std::fs::read_to_string(dir.join(format!("{name}.rs"))).unwrap_or_default();
        // An example that needs a launcher (`mpirun`) is run by its own step.
        if let Some(by) = src
            .lines()
            .find_map(|l| l.trim_start().strip_prefix("//! run-by:"))
        {
            println!("example {name:<24} run by {}", by.trim());
            continue;
        }
        let expects: Vec<&str> = src
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("//! expect:"))
            .map(str::trim)
            .collect();
        let bin = target.join("debug/examples").join(&name);
        let started = Instant::now();
        let result = run_with_timeout(Command::new(&bin).current_dir(crate::root()), TIMEOUT);
        let ok = match result {
            Err(e) => {
                eprintln!("example {name}: {e}");
                false
            }
            Ok((code, stdout)) => {
                let mut ok = code == Some(0);
                if !ok {
                    eprintln!("example {name}: exit status {code:?}");
                }
                if let Err(missing) = check(&stdout, &expects) {
                    eprintln!(
                        "example {name}: no line matches `{missing}` (in order). Output:\n{stdout}"
                    );
                    ok = false;
                }
                ok
            }
        };
        println!(
            "example {name:<24} {} ({:.1} s, {} expectations)",
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64(),
            expects.len()
        );
        t.step(&format!("example {name}"), ok);
    }
}

fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                crate::root().join(p)
            }
        })
        .unwrap_or_else(|| crate::root().join("target"))
}

/// Each pattern must match some line, each after the line the previous one matched.
fn check(stdout: &str, expects: &[&str]) -> Result<(), String> {
    let mut lines = stdout.lines();
    for pat in expects {
        if !lines.by_ref().any(|l| matches(pat, l)) {
            return Err((*pat).to_owned());
        }
    }
    Ok(())
}

fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<(Option<i32>, String), String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { out }, &mut s);
        s
    });
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok((st.code(), reader.join().unwrap_or_default()));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {} s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small regex matcher (unanchored search unless `^`/`$`): literals, `.`, `*`, `+`,
/// `?`, escapes (`\d \w \s \. \[ …`), character classes `[a-z0-9]` / `[^…]`.
/// Enough for output expectations; keeps xtask free of a regex dependency.
pub(crate) fn matches(pat: &str, text: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (p, anchored) = match p.first() {
        Some('^') => (&p[1..], true),
        _ => (&p[..], false),
    };
    if anchored {
        return match_here(p, &t);
    }
    (0..=t.len()).any(|i| match_here(p, &t[i..]))
}

/// One element of a pattern: how many chars it spans in the pattern, and whether it
/// matches a char.
fn atom(p: &[char]) -> (usize, Box<dyn Fn(char) -> bool>) {
    match p[0] {
        '.' => (1, Box::new(|_| true)),
        '\\' if p.len() > 1 => {
            let e = p[1];
            let f: Box<dyn Fn(char) -> bool> = match e {
                'd' => Box::new(|c: char| c.is_ascii_digit()),
                'w' => Box::new(|c: char| c.is_alphanumeric() || c == '_'),
                's' => Box::new(char::is_whitespace),
                _ => Box::new(move |c| c == e),
            };
            (2, f)
        }
        '[' => {
            let mut i = 1;
            let negate = p.get(1) == Some(&'^');
            if negate {
                i += 1;
            }
            let mut set: Vec<(char, char)> = Vec::new();
            let mut first = true;
            while i < p.len() && (p[i] != ']' || first) {
                first = false;
                let mut lo = p[i];
                if lo == '\\' && i + 1 < p.len() {
                    i += 1;
                    lo = p[i];
                }
                if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                    set.push((lo, p[i + 2]));
                    i += 3;
                } else {
                    set.push((lo, lo));
                    i += 1;
                }
            }
            (
                i + 1,
                Box::new(move |c| set.iter().any(|&(a, b)| a <= c && c <= b) != negate),
            )
        }
        c => (1, Box::new(move |x| x == c)),
    }
}

fn match_here(p: &[char], t: &[char]) -> bool {
    if p.is_empty() {
        return true;
    }
    if p == ['$'] {
        return t.is_empty();
    }
    let (n, m) = atom(p);
    let rest = &p[n.min(p.len())..];
    match rest.first() {
        Some('*') | Some('+') | Some('?') => {
            let op = rest[0];
            let rest = &rest[1..];
            let mut k = 0;
            while k < t.len() && m(t[k]) && !(op == '?' && k == 1) {
                k += 1;
            }
            let min = usize::from(op == '+');
            (min..=k).rev().any(|i| match_here(rest, &t[i..]))
        }
        _ => !t.is_empty() && m(t[0]) && match_here(rest, &t[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_subset() {
        assert!(matches(r"^\[0, 1, 4, 9, 16, 25\]$", "[0, 1, 4, 9, 16, 25]"));
        assert!(!matches(r"^\[0, 1\]$", "[0, 1, 4]"));
        assert!(matches(r"took \d+ms", "it took 12ms"));
        assert!(matches(r"^pid=\d+ parent=\d+$", "pid=12 parent=1"));
        assert!(matches(r"[A-C]+", "xxBAC"));
        assert!(!matches(r"^[^x]+$", "abxc"));
        assert!(matches(r"^3\.1415927$", "3.1415927"));
        assert!(!matches(r"^3\.1415927$", "3x1415927"));
        assert!(matches("Done", "all Done now"));
        assert!(matches(r"^a.*z$", "abcz"));
        assert!(matches(r"^colou?r$", "color"));
    }

    #[test]
    fn expectations_in_order() {
        let out = "start\nA\nB\nDone\n";
        assert!(check(out, &["^A$", "^Done$"]).is_ok());
        assert!(check(out, &["^Done$", "^A$"]).is_err());
    }
}
