//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the
//! files of `migrations/` at compile time and does not notice a new one.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
