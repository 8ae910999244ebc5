//! A Redis key prefix private to one test; its keys are deleted when the
//! test ends.

use crate::blocking::on_own_thread;
use crate::names::unique;
use crate::stack::Stack;

/// A Redis key prefix for one test; its keys are deleted when it ends.
pub struct TestRedis {
    /// Redis URL.
    pub url: String,
    /// Prefix of every key the test's processes write.
    pub prefix: String,
}

impl TestRedis {
    /// A fresh prefix on the stack's Redis.
    pub fn new(stack: &Stack) -> TestRedis {
        stack.require_redis();
        TestRedis {
            url: stack.redis.clone(),
            prefix: unique("wt"),
        }
    }

    /// A connection for assertions.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {} (WEIR_REDIS_URL): {e}", self.url))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        on_own_thread(move || async move {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return;
            };
            let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                return;
            };
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(keys).query_async(&mut c).await;
            }
        });
    }
}
