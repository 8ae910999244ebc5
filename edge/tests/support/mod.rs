//! What the edge's test binaries share.
#![allow(dead_code)] // each test binary uses its own part

use weir_edge::S3Config;

/// Sends `req` and waits for the answer's head; a request that gets none
/// (refused, reset, timed out) fails the test.
pub async fn answer(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.expect("an answer")
}

/// The local stack's S3 server (or `endpoint`), with its credentials.
pub fn s3_config(endpoint: Option<String>) -> S3Config {
    let var = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    S3Config {
        endpoint: endpoint.unwrap_or_else(|| var("WEIR_S3_ENDPOINT", "http://127.0.0.1:19000")),
        bucket: var("WEIR_S3_BUCKET", "weir"),
        region: var("WEIR_S3_REGION", "us-east-1"),
        access_key_id: weir_testkit::s3_credentials().0,
        secret_access_key: weir_testkit::s3_credentials().1,
        ..S3Config::default()
    }
}
