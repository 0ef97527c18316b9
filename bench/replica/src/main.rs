//! `replica DB URL`: opens (or creates) an embedded replica of URL at DB, runs `sync()` once and
//! prints how long the sync took, in seconds. Opening is not timed.

use std::time::Instant;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(url)) = (args.next(), args.next()) else {
        return Err("usage: replica DB URL".into());
    };
    let token = std::env::var("TURSO_AUTH_TOKEN").unwrap_or_default();
    let db = libsql::Builder::new_remote_replica(path, url, token)
        .build()
        .await?;
    let started = Instant::now();
    db.sync().await?;
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
