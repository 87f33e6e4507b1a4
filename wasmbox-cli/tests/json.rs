//! `wasmbox-cli run --json`: typed guests driven with JSON lines through the real binary.

#![allow(clippy::unwrap_used)] // Tests: a failed unwrap is a failed test.

mod common;

use anyhow::{Context, Result, ensure};
use common::{guest, run_guest};

/// The stderr lines that report an error.
fn errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

#[test]
fn accept_bank_ledger_as_json_across_two_processes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("ledger.snap");
    let snap_arg = snap.to_str().context("temp path is not UTF-8")?;
    let typed = guest("typed")?;
    let first = format!(
        r#"{{"Open":{{"account":"ana","cents":500}}}}
{{"Open":{{"account":"bob","cents":0}}}}
{{"Transfer":{{"from":"ana","to":"bob","cents":120}}}}
!!snapshot {snap_arg}
{{"Transfer":{{"from":"bob","to":"ana","cents":1000}}}}
"#
    );
    let run = run_guest(&typed, &["--json"], &first)?.success()?;
    assert_eq!(
        run.lines(),
        [
            r#"{"Done":{"sequence":1}}"#,
            r#"{"Done":{"sequence":2}}"#,
            r#"{"Done":{"sequence":3}}"#,
            r#"{"Refused":{"InsufficientFunds":{"account":"bob","cents":120}}}"#,
        ]
    );
    ensure!(errors(&run.stderr).is_empty(), "{}", run.stderr);
    let second = run_guest(
        &typed,
        &["--json", "--restore", snap_arg],
        "{\"Balance\":{\"account\":\"bob\"}}\n\"Statement\"\n",
    )?
    .success()?;
    assert_eq!(
        second.lines(),
        [
            r#"{"Balance":{"name":"bob","cents":120}}"#,
            r#"{"Statement":[{"name":"ana","cents":380},{"name":"bob","cents":120}]}"#,
        ]
    );
    Ok(())
}

#[test]
fn reject_bad_json_and_wrong_types_with_one_line_each() -> Result<()> {
    let stdin = r#"{"Open":{"account":"ana","cents":5}}
{"Open": {"account": "ana", "cents"
{"Open":{"account":5,"cents":1}}
"Nonsense"
{"Balance":{"account":"ana"}}
"#;
    let run = run_guest(&guest("typed")?, &["--json"], stdin)?.success()?;
    assert_eq!(
        run.lines(),
        [
            r#"{"Done":{"sequence":1}}"#,
            r#"{"Balance":{"name":"ana","cents":5}}"#
        ]
    );
    let errors = errors(&run.stderr);
    ensure!(errors.len() == 3, "{}", run.stderr);
    ensure!(
        errors[0].contains("not valid JSON") && errors[0].contains("column 35"),
        "{}",
        errors[0]
    );
    ensure!(
        errors[1].contains("invalid type: integer `5`, expected a string")
            && errors[1].contains("column"),
        "{}",
        errors[1]
    );
    ensure!(
        errors[2].contains("unknown variant `Nonsense`"),
        "{}",
        errors[2]
    );
    Ok(())
}

#[test]
fn accept_random_guest_as_json_with_its_seed() -> Result<()> {
    let random = guest("random")?;
    let once = run_guest(&random, &["--json", "--seed", "7"], "4\n4\n")?.success()?;
    let again = run_guest(&random, &["--json", "--seed", "7"], "4\n4\n")?.success()?;
    assert_eq!(once.lines(), again.lines(), "same seed, same bytes");
    for line in once.lines() {
        let bytes: Vec<u8> = serde_json::from_str(line)?;
        assert_eq!(bytes.len(), 4);
    }
    ensure!(once.lines()[0] != once.lines()[1]);
    Ok(())
}

#[test]
fn reject_json_for_a_guest_built_without_it() -> Result<()> {
    let run = run_guest(&guest("counter")?, &["--json"], "\"up\"\n")?;
    ensure!(run.code == Some(1), "{run:?}");
    ensure!(run.stdout.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    ensure!(
        lines.len() == 1 && lines[0].contains("`json` feature"),
        "{lines:?}"
    );
    Ok(())
}
