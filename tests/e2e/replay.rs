//! `weir gen replay FILE`: a file of `key<TAB>value` lines reaches the access
//! topic byte for byte, through the producer the agent and the edge use,
//! including lines no well-behaved producer would write.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use weir_testkit::{read_topic, stack, unique, TestTopics};

use crate::weir_output;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_replayed_byte_for_byte() {
    let st = stack();
    let topics = TestTopics::create(&st, 3).await;
    let dir = std::env::temp_dir().join(unique("replay"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("records.tsv");
    let mut env = topics.env();
    env.push(("WEIR_KAFKA_BROKERS".into(), st.kafka.clone()));

    // 500 generated events written as lines, then hostile lines: a value
    // with NUL and control bytes, a line with no tab (no key), an empty key,
    // invalid UTF-8, a tab inside the value, CRLF, and empty lines (skipped).
    let path = file.to_str().expect("UTF-8 path");
    let out = weir_output(
        &[
            "gen",
            "access",
            "--count",
            "500",
            "--nodes",
            "5",
            "--write-to",
            path,
        ],
        env.clone(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bytes = std::fs::read(&file).expect("written records");
    let hostile: &[&[u8]] = &[
        b"node-x\tnul \0 and \x01\x1b control",
        b"no tab at all",
        b"\tempty key",
        b"node-y\t\xff\xfe not UTF-8",
        b"node-z\tone\ttab too many",
        b"node-crlf\tvalue\r",
    ];
    for h in hostile {
        bytes.extend_from_slice(h);
        bytes.extend_from_slice(b"\n\n");
    }
    std::fs::write(&file, &bytes).expect("hostile lines");

    let out = weir_output(&["gen", "replay", path], env.clone());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let totals: Value = serde_json::from_str(stdout.trim()).expect("totals as JSON");
    assert_eq!(totals["records"], 506, "{totals}");
    assert_eq!(totals["acknowledged"], 506, "{totals}");
    assert_eq!(totals["failed"], 0, "{totals}");

    // Every line is one record, key and value exactly as in the file.
    let mut want: BTreeMap<(Vec<u8>, Vec<u8>), usize> = BTreeMap::new();
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let (k, v) = match line.iter().position(|&b| b == b'\t') {
            Some(t) => (line[..t].to_vec(), line[t + 1..].to_vec()),
            None => (Vec::new(), line.to_vec()),
        };
        *want.entry((k, v)).or_default() += 1;
    }
    let mut got: BTreeMap<(Vec<u8>, Vec<u8>), usize> = BTreeMap::new();
    for r in read_topic(&st.kafka, &topics.access, Duration::from_secs(3)) {
        *got.entry((r.key, r.payload)).or_default() += 1;
    }
    assert_eq!(got.values().sum::<usize>(), 506, "one record per line");
    assert_eq!(got, want, "records differ from the file's lines");

    // A file that does not exist: a clear error, nothing sent.
    let missing = dir.join("missing.tsv");
    let out = weir_output(
        &["gen", "replay", missing.to_str().expect("UTF-8 path")],
        env,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.tsv"), "names the file: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}
