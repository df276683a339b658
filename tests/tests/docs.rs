//! The docs' tables against the code's: each table lives in one place in code, and a reader
//! of the docs must find the same rows there. (The runtime's environment table is checked in
//! `runtime/src/cli/mod.rs`, beside the clap declarations it is compared with.)

use std::collections::{BTreeMap, BTreeSet};

use openwork_payload::ExitCode;
use openwork_runtime::http::response::ApiError;
use serde_json::Value;

fn doc(name: &str) -> String {
    let path = openwork_tests::workspace_root().join("docs").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The rows of the first table after the heading `## {section}` (until the next heading),
/// each as its cells, trimmed; the header and the separator row left out.
fn table_rows(text: &str, section: &str) -> Vec<Vec<String>> {
    let heading = format!("## {section}");
    let start = text
        .lines()
        .position(|line| line.trim() == heading)
        .unwrap_or_else(|| panic!("no `{heading}` section"));
    text.lines()
        .skip(start + 1)
        .take_while(|line| !line.starts_with("## "))
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2)
        .map(cells)
        .collect()
}

/// The cells of one Markdown table row.
fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split(" | ")
        .map(|cell| cell.trim().to_string())
        .collect()
}

/// The table in `text` whose header row is `header` (e.g. `| status | `error` | meaning |`).
fn table_with_header(text: &str, header: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|line| line.trim() == header)
        .unwrap_or_else(|| panic!("no table with the header {header}"));
    lines[start + 2..]
        .iter()
        .take_while(|line| line.starts_with('|'))
        .map(|line| cells(line))
        .collect()
}

/// RUNTIME.md's exit-code table is `ExitCode::ALL`: every code in both, and each row's
/// meaning starts with the code's name.
#[test]
fn runtime_exit_code_table_matches_the_code() {
    let rows = table_rows(&doc("RUNTIME.md"), "Exit codes");
    let documented: BTreeMap<u8, String> = rows
        .iter()
        .map(|row| (row[0].parse().expect("a numeric code"), row[1].clone()))
        .collect();
    assert_eq!(
        documented.len(),
        rows.len(),
        "a code documented twice: {rows:?}"
    );
    let in_code: BTreeSet<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
    let in_docs: BTreeSet<u8> = documented.keys().copied().collect();
    assert_eq!(
        in_docs, in_code,
        "docs/RUNTIME.md's exit codes (left) and ExitCode::ALL (right) differ"
    );
    for code in ExitCode::ALL {
        let meaning = &documented[&code.code()];
        assert!(
            meaning.starts_with(code.name()),
            "exit {} is {:?} ({}) in code; docs/RUNTIME.md says: {meaning}",
            code.code(),
            code,
            code.name()
        );
    }
    // ALL is complete: every variant is in it once (the enum is numbered 0..=N).
    let codes: Vec<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(codes, (0..codes.len() as u8).collect::<Vec<_>>());
}

/// PACKAGER.md lists the codes whose meaning the packager adds to: each must exist in the
/// shared table.
#[test]
fn packager_exit_codes_exist_in_the_shared_table() {
    let rows = table_rows(&doc("PACKAGER.md"), "Exit codes");
    assert!(!rows.is_empty(), "PACKAGER.md has an exit-code table");
    let in_code: BTreeSet<u8> = ExitCode::ALL.iter().map(|c| c.code()).collect();
    for row in rows {
        let code: u8 = row[0].parse().expect("a numeric code");
        assert!(
            in_code.contains(&code),
            "PACKAGER.md documents exit {code}, which ExitCode does not have"
        );
    }
}

/// RUNTIME.md's error table is `ApiError::ALL`: the same codes with the same statuses.
#[test]
fn runtime_http_error_table_matches_the_code() {
    let rows = table_with_header(&doc("RUNTIME.md"), "| status | `error` | meaning |");
    let documented: BTreeMap<String, u16> = rows
        .iter()
        .map(|row| {
            (
                row[1].trim_matches('`').to_string(),
                row[0].parse().expect("a status"),
            )
        })
        .collect();
    assert_eq!(documented.len(), rows.len(), "a code documented twice");
    let in_code: BTreeMap<String, u16> = ApiError::ALL
        .iter()
        .map(|e| (e.code().to_string(), e.status().as_u16()))
        .collect();
    assert_eq!(
        documented, in_code,
        "docs/RUNTIME.md's error table (left) and ApiError::ALL (right) differ"
    );
}

/// docs/openapi.json lists exactly `ApiError::ALL`'s codes, and every response that names a
/// code (as `` `code` `` in its description) has that code's status.
#[test]
fn openapi_error_codes_and_statuses_match_the_code() {
    let document: Value = serde_json::from_str(&doc("openapi.json")).unwrap();
    let listed: Vec<&str> =
        document["components"]["schemas"]["ErrorBody"]["properties"]["error"]["enum"]
            .as_array()
            .expect("ErrorBody.error is an enum")
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
    let in_code: Vec<&str> = ApiError::ALL.iter().map(|e| e.code()).collect();
    assert_eq!(
        listed, in_code,
        "the document's error codes and ApiError::ALL differ"
    );

    let status_of: BTreeMap<&str, u16> = ApiError::ALL
        .iter()
        .map(|e| (e.code(), e.status().as_u16()))
        .collect();
    let mut seen = BTreeSet::new();
    let mut wrong = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (status, response) in operation["responses"].as_object().unwrap() {
                let description = response["description"].as_str().unwrap_or("");
                for code in description.split('`').skip(1).step_by(2) {
                    let Some(&expected) = status_of.get(code) else {
                        continue;
                    };
                    seen.insert(code);
                    if status != &expected.to_string() {
                        wrong.push(format!(
                            "{method} {path}: `{code}` under {status}, but ApiError gives {expected}"
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every code appears somewhere: on a route, or (the two that no route owns) in the
    // document's description.
    let description = document["info"]["description"].as_str().unwrap();
    let unmentioned: Vec<&str> = in_code
        .iter()
        .copied()
        .filter(|code| !seen.contains(code) && !description.contains(&format!("`{code}`")))
        .collect();
    assert!(
        unmentioned.is_empty(),
        "codes the document never explains: {unmentioned:?}"
    );
}
