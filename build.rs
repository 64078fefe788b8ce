//! Build script: the commit being built, for `tandem_build_info{commit}` (`unknown` outside a
//! git checkout, e.g. a source tarball; `GIT_COMMIT` set in the build's environment wins). The
//! name it is handed to the compiler under is not `TANDEM_*`: cargo also sets it in the
//! environment of tests it runs, and tandem refuses `TANDEM_*` variables it does not know.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("GIT_COMMIT").ok().or_else(|| {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_hexdigit()))
    });
    println!(
        "cargo:rustc-env=BUILD_GIT_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
