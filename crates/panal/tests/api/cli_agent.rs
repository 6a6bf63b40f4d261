//! `panal agent` refuses what it cannot act on with a readable message and a non-zero exit:
//! starting without having joined, a plain-HTTP URL, a malformed token, a token without a URL,
//! and an unreachable control plane.

use std::process::Command;

fn agent(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_panal"))
        .arg("agent")
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const TOKEN: &str = "0123456789ab.00112233445566778899aabbccddeeff.\
                     abababababababababababababababababababababababababababababababab";

#[test]
fn agent_refuses_bad_starts_clearly() {
    let cases: [(&[&str], &str); 5] = [
        (&[], "has not joined a control plane yet"),
        (
            &["--join", "http://127.0.0.1:7181", "--token", TOKEN],
            "must start with https://",
        ),
        (
            &["--join", "https://127.0.0.1:7181", "--token", "abc"],
            "malformed join token",
        ),
        (&["--token", TOKEN], "--join"),
        (
            &["--join", "https://127.0.0.1:1", "--token", TOKEN],
            "cannot reach the control plane",
        ),
    ];
    for (args, want) in cases {
        let (ok, stderr) = agent(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
