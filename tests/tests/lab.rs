//! The lab behind `cargo xtask demo` runs start to finish: the README's first command.

#[test]
#[ignore = "needs root: run with `cargo xtask test`"]
fn the_lab_runs_and_cleans_up() {
    xlb_tests::netns::require_root();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xlb-lab"))
        .output()
        .expect("run xlb-lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xlb-lab failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("namespaces, programs and pins removed"),
        "{stdout}"
    );
    // Every HTTP connection and UDP query in every round was answered.
    assert!(!stdout.contains("NO ANSWER"), "{stdout}");
    assert!(
        !std::path::Path::new("/sys/fs/bpf/xlb-lab").exists(),
        "pins left behind"
    );
}
