//! Every guest fixture under `components/fixtures/` is listed in the harness and used
//! by at least one test; no fixture rots unused.

use wasmhive_e2e::{FIXTURES, repo_root};

#[test]
fn fixture_list_matches_the_folder() {
    let mut found: Vec<String> = std::fs::read_dir(repo_root().join("components/fixtures"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    found.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "update FIXTURES in tests/support/lib.rs");
}

#[test]
fn every_fixture_is_used_by_a_test() {
    let tests: String = std::fs::read_dir(repo_root().join("tests"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs") && !p.ends_with("fixtures.rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for f in FIXTURES {
        assert!(
            tests.contains(&format!("{{component:{f}}}")),
            "fixture {f} is not used by any test"
        );
    }
}
