//! `weir topics scale`: an increase works, a decrease is refused, a dry run
//! changes nothing, and a keyed topic gets its warning.

use std::process::Output;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use weir_testkit::{stack, TestTopics};

use crate::weir_output;

fn run(args: &[&str]) -> Output {
    weir_output(args, [("WEIR_KAFKA_BROKERS", stack().kafka)])
}

fn partitions(topic: &str) -> usize {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack().kafka)
        .create()
        .expect("client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    md.topics().first().map_or(0, |t| t.partitions().len())
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_adds_refuses_decrease_and_dry_runs() {
    let st = stack();
    let topics = TestTopics::create(&st, 2).await;
    let keyed = topics.health.as_str();
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &st.kafka)
        .create()
        .expect("producer");
    for (part, key) in [(0, "node-a"), (1, "node-b")] {
        p.send(
            FutureRecord::to(keyed)
                .partition(part)
                .key(key)
                .payload("{}"),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
    }

    // Dry run: says what it would do, changes nothing, warns about keys.
    let o = run(&["topics", "scale", keyed, "--partitions", "4", "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("2 -> 4 partitions (dry run"),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("carries keyed records"), "{}", text(&o));
    assert_eq!(partitions(keyed), 2);

    // Increase.
    let o = run(&["topics", "scale", keyed, "--partitions", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("2 -> 4 partitions"), "{}", text(&o));
    assert_eq!(partitions(keyed), 4);

    // Same count: nothing to do.
    let o = run(&["topics", "scale", keyed, "--partitions", "4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("nothing to do"), "{}", text(&o));

    // Decrease: refused, clearly, and nothing changes.
    let o = run(&["topics", "scale", keyed, "--partitions", "3"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("cannot decrease"), "{}", text(&o));
    assert_eq!(partitions(keyed), 4);

    // An empty topic: no key can move, but we cannot tell, so we say so.
    let o = run(&["topics", "scale", &topics.access, "--partitions", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("could not tell"), "{}", text(&o));
    assert_eq!(partitions(&topics.access), 3);

    // A topic that does not exist.
    let o = run(&[
        "topics",
        "scale",
        "weir-no-such-topic-x",
        "--partitions",
        "3",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}
