//! A PostgreSQL database private to one test, dropped (with force) when the
//! test ends.

use crate::blocking::on_own_thread;
use crate::names::unique;
use crate::stack::Stack;

/// A PostgreSQL database created for one test and dropped when it ends.
pub struct TestDb {
    admin_url: String,
    /// Database name.
    pub name: String,
    /// URL of the test database.
    pub url: String,
}

fn with_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) if url[..i].contains('@') || url[..i].matches('/').count() > 2 => {
            format!("{}/{db}", &url[..i])
        }
        _ => format!("{url}/{db}"),
    }
}

impl TestDb {
    /// Creates an empty database on the stack's server.
    pub async fn create(stack: &Stack) -> TestDb {
        Self::create_on(&stack.require_postgres().database).await
    }

    /// Creates an empty database on the server behind `admin_url`.
    pub async fn create_on(admin_url: &str) -> TestDb {
        let name = unique("weir_t").replace('-', "_");
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} (WEIR_DATABASE_URL): {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        TestDb {
            admin_url: admin_url.to_string(),
            url: with_db(admin_url, &name),
            name,
        }
    }

    /// A pool on the test database.
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        on_own_thread(move || async move {
            if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        });
    }
}
