//! An S3 bucket private to one test on the stack's S3 server, emptied and
//! deleted when the test ends.

use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

use crate::blocking::on_own_thread;
use crate::names::unique;
use crate::stack::S3Stack;

/// A bucket created for one test (a valid S3 name: lowercase, 3–63
/// characters) and deleted, with its objects, when it ends.
pub struct TestBucket {
    s3: S3Stack,
    /// Bucket name.
    pub name: String,
}

fn client(s3: &S3Stack) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s3.region.clone()))
        .endpoint_url(&s3.endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            &s3.access_key_id,
            &s3.secret_access_key,
            None,
            None,
            "weir-testkit",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

impl TestBucket {
    /// Creates an empty bucket on the stack's S3 server (`WEIR_S3_ENDPOINT`).
    pub async fn create() -> TestBucket {
        Self::create_on(crate::stack::s3()).await
    }

    pub(crate) async fn create_on(s3: S3Stack) -> TestBucket {
        let name = unique("wt");
        let c = client(&s3);
        let start = Instant::now();
        while let Err(e) = c.create_bucket().bucket(&name).send().await {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "cannot create bucket {name} on S3 at {} (WEIR_S3_ENDPOINT): {e:?}. Start the \
                 local stack with `deploy/local/up`.",
                s3.endpoint
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        TestBucket { s3, name }
    }

    /// A client on the bucket's server, for putting objects and assertions.
    pub fn client(&self) -> aws_sdk_s3::Client {
        client(&self.s3)
    }

    /// Puts an object.
    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.client()
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(body.into().into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("put s3://{}/{key}: {e:?}", self.name));
    }

    /// Environment pointing a `weir` process's origin at this bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WEIR_S3_ENDPOINT".into(), self.s3.endpoint.clone()),
            ("WEIR_S3_BUCKET".into(), self.name.clone()),
            ("WEIR_S3_REGION".into(), self.s3.region.clone()),
            (
                "WEIR_S3_ACCESS_KEY_ID".into(),
                self.s3.access_key_id.clone(),
            ),
            (
                "WEIR_S3_SECRET_ACCESS_KEY".into(),
                self.s3.secret_access_key.clone(),
            ),
        ]
    }
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        let (s3, name) = (self.s3.clone(), self.name.clone());
        on_own_thread(move || async move {
            let c = client(&s3);
            let mut token = None;
            loop {
                let Ok(page) = c
                    .list_objects_v2()
                    .bucket(&name)
                    .set_continuation_token(token)
                    .send()
                    .await
                else {
                    break;
                };
                for o in page.contents() {
                    if let Some(key) = o.key() {
                        let _ = c.delete_object().bucket(&name).key(key).send().await;
                    }
                }
                token = page.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            let _ = c.delete_bucket().bucket(&name).send().await;
        });
    }
}
